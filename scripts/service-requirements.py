#!/usr/bin/env python3
"""Print the service's pinned requirements (orchestrator_workers_pip_requirements
of the role's defaults/main.yml), one per line: the same list the role renders
into requirements.txt on the host. Uses only the standard library (the
controller's python3 has no PyYAML before the venvs exist)."""

import re
import sys
from pathlib import Path

DEFAULTS = Path(__file__).resolve().parent.parent / "roles/orchestrator_workers/defaults/main.yml"


def main() -> int:
    lines = DEFAULTS.read_text().splitlines()
    start = lines.index("orchestrator_workers_pip_requirements:") + 1
    for line in lines[start:]:
        if line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"  - (\S+)", line)
        if not match:
            break
        print(match.group(1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
