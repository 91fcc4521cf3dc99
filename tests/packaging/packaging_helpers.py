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
