"""`python -m shield_orchestrator serve | init-db | inspect-queue` (see cli.py)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
