"""Shared by the scenarios' testinfra tests (molecule/*/tests/): puts
molecule/shared on sys.path so a test file can `import helpers`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "shared"))
