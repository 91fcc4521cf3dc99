"""What the packaging tests share: the distributions, their metadata, the built files."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEEL_DIR_ENV = "TTA_WHEEL_DIR"
#: Every published distribution: its directory and the import package it ships.
DISTRIBUTIONS = {
    "core": "tta_agent_coordination",
    "backends/redis": "tta_agent_coordination_redis",
    "contrib/prometheus": "tta_agent_coordination_prometheus",
    "contrib/opentelemetry": "tta_agent_coordination_opentelemetry",
}


def project(directory: str) -> dict[str, Any]:
    """The ``[project]`` table of a distribution's pyproject.toml."""
    with (ROOT / directory / "pyproject.toml").open("rb") as file:
        data: dict[str, Any] = tomllib.load(file)["project"]
    return data


def missing(reason: str) -> None:
    """Fail under ``CI=true`` (CI must never turn green by skipping), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)


def wheel_dir() -> Path:
    """The directory of every distribution's built sdist and wheel (``TTA_WHEEL_DIR``).

    ``nox -s tests`` builds them once (``.nox/_wheels``, exactly as ``nox -s build`` makes a
    release) and sets the variable. Without it (plain pytest) the caller skips with the reason,
    or fails under ``CI=true``.
    """
    value = os.environ.get(WHEEL_DIR_ENV, "")
    if not value:
        missing(f"{WHEEL_DIR_ENV} is not set: `nox -s tests` builds the distributions and sets it")
    path = Path(value)
    if not any(path.glob("*.whl")):
        missing(f"{WHEEL_DIR_ENV}={path} holds no wheel")
    return path
