#!/usr/bin/env python3
"""Print the service's pinned requirements, one per line.

They are orchestrator_workers_pip_requirements of the role's defaults/main.yml
(generated from meta/argument_specs.yml): the list the role renders into
requirements.txt on the host. This script is the one reader of that list for
the Makefile (.venv-service, make constraints), scripts/build-wheelhouse.sh
and bench/run.sh.

Needs PyYAML: Debian's python3-yaml, which scripts/bootstrap-host.sh installs
so that the controller's /usr/bin/python3 can run this before any virtualenv
exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULTS = Path(__file__).resolve().parent.parent / "roles/orchestrator_workers/defaults/main.yml"
VARIABLE = "orchestrator_workers_pip_requirements"


def main() -> int:
    try:
        import yaml
    except ImportError:
        print(
            f"{sys.executable} lacks PyYAML: apt-get install python3-yaml (scripts/bootstrap-host.sh)", file=sys.stderr
        )
        return 2
    requirements = yaml.safe_load(DEFAULTS.read_text()).get(VARIABLE)
    if not requirements or not all(isinstance(item, str) and item.strip() for item in requirements):
        print(f"{DEFAULTS}: {VARIABLE} must be a non-empty list of requirement strings", file=sys.stderr)
        return 1
    print("\n".join(requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
