"""`python -m shield_orchestrator serve | migrate | dlq | inspect-queue` (see cli.py)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
