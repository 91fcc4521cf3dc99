"""The built distributions, for the packaging tests.

``nox -s tests`` builds every distribution's sdist and wheel once (``.nox/_wheels``, exactly as
``nox -s build`` makes a release) and names that directory in ``TTA_WHEEL_DIR``. Run without it
(plain pytest), the tests that need the files skip with the reason, except under ``CI=true``,
where they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from packaging_helpers import WHEEL_DIR_ENV, missing


@pytest.fixture(scope="session")
def wheel_dir() -> Path:
    """The directory holding the built sdists and wheels of every distribution."""
    value = os.environ.get(WHEEL_DIR_ENV, "")
    if not value:
        missing(f"{WHEEL_DIR_ENV} is not set: `nox -s tests` builds the distributions and sets it")
    path = Path(value)
    if not any(path.glob("*.whl")):
        missing(f"{WHEEL_DIR_ENV}={path} holds no wheel")
    return path
