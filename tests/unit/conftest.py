"""The unit layer: the service's pure parts, in process, without any server.

The package is rendered from the role's templates and defaults (as the role
deploys it) into a temporary directory put first on sys.path, so the tests
import exactly what runs on a host.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.support.service import render

RENDERED = render(Path(tempfile.mkdtemp(prefix="shield-unit-")))
sys.path.insert(0, str(RENDERED))
