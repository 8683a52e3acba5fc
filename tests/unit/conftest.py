"""The unit layer: the service's pure parts, in process, without any server.

The package is imported straight from the role's template tree
(roles/orchestrator_workers/templates, on pytest's pythonpath): its deployed.py
is deployed.py.j2 rendered with the role's defaults, kept in step by
scripts/render_service.py --check-deployed, so the tests import what a host runs
with the defaults. test_code_shape.py checks that rendering keeps every file.
"""

from __future__ import annotations

from pathlib import Path

import shield_orchestrator

PACKAGE = Path(shield_orchestrator.__file__).resolve().parent
TEMPLATES = PACKAGE.parent
