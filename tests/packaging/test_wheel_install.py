"""The built wheels install the way a user installs them, and work against the real Redis.

A fresh ``python -m venv`` gets, with its own pip,
``pip install "tta-agent-coordination[redis,prometheus,opentelemetry]==VERSION" --find-links
WHEELS``: our four distributions come from the built wheels, every dependency from the package
index. Then the demo runs against the real Redis, and, with the ``[testing]`` extra added, the
conformance suite's one-liner (``pytest --pyargs tta_agent_coordination.testing
--tta-backend=redis://...``) passes in that venv. The version is pinned because a
``.devN`` release is a pre-release, which pip picks only when asked for by version (or --pre).

pip in a ``python -m venv`` is the honest version of "the way a user would"; it costs about
20 s here (``uv venv`` + ``uv pip install`` would take about 1 s).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from packaging_helpers import DISTRIBUTIONS, missing, project, wheel_dir

VERSION = project("core")["version"]
REDIS_URL = os.environ.get("TTA_REDIS_URL", "redis://127.0.0.1:6379/0")
EXTRAS = "redis,prometheus,opentelemetry"
#: Variables of the test run that must not leak into the user's venv.
SCRUBBED = (
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "HYPOTHESIS_PROFILE",
    "COVERAGE_PROCESS_START",
)


@dataclass(frozen=True)
class UserVenv:
    """A fresh virtualenv with the distributions installed from the built wheels."""

    path: Path
    workdir: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command from the venv's bin/, in an empty directory."""
        return _run([str(self.path / "bin" / args[0]), *args[1:]], self.workdir, self.env, timeout)


def _run(
    argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _redis_url(namespace: str) -> str:
    """The shared server's URL with a namespace of this run's own."""
    return f"{REDIS_URL.split('?', 1)[0]}?namespace={namespace}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def redis_server() -> str:
    """The real Redis the installed driver talks to (skip, or fail under CI, without one)."""
    parts = urlsplit(REDIS_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        missing(f"no Redis at {host}:{port} ({exc}); start one or set TTA_REDIS_URL")
    return REDIS_URL


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory: pytest.TempPathFactory) -> UserVenv:
    """``python -m venv``, then pip install with the extras, from the built wheels."""
    wheels = wheel_dir()  # skip without them, fail under CI
    base = tmp_path_factory.mktemp("user")
    workdir = base / "work"
    workdir.mkdir()
    venv = base / "venv"
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    created = _run([sys.executable, "-m", "venv", str(venv)], workdir, env, 120)
    assert created.returncode == 0, created.stderr
    user = UserVenv(venv, workdir, env)
    requirement = f"tta-agent-coordination[{EXTRAS}]=={VERSION}"
    installed = user.run("pip", "install", requirement, "--find-links", str(wheels))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return user


def test_the_distributions_come_from_the_wheels_into_the_venv(user_venv: UserVenv) -> None:
    probe = """
import importlib, importlib.metadata as m, json, pathlib
out = {}
for name, package in json.loads(input()).items():
    module = importlib.import_module(package)
    folder = pathlib.Path(module.__file__).parent
    out[name] = [m.version(name), str(folder), (folder / "py.typed").is_file()]
import prometheus_client, opentelemetry.trace, redis  # what the extras pulled in
print(json.dumps(out))
"""
    names = {project(directory)["name"]: package for directory, package in DISTRIBUTIONS.items()}
    done = subprocess.run(
        [str(user_venv.path / "bin" / "python"), "-c", probe],
        input=json.dumps(names),
        cwd=user_venv.workdir,
        env=user_venv.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert set(found) == set(names)
    site = str(user_venv.path.resolve())
    for name, (version, folder, typed) in found.items():
        assert version == VERSION, name
        assert str(Path(folder).resolve()).startswith(site), (name, folder)  # not the checkout
        assert typed, f"{name} has no py.typed"


def test_the_command_line_is_installed(user_venv: UserVenv) -> None:
    done = user_venv.run("tta-coord", "--help", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "queues" in done.stdout


def test_the_demo_runs_against_the_real_redis(user_venv: UserVenv, redis_server: str) -> None:
    url = _redis_url("tta-wheel-demo")
    done = user_venv.run("python", "-m", "tta_agent_coordination.demo", "--url", url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] is True
    assert summary["backend"] == url
    requests = summary["requests"]
    assert requests["answered"] + requests["failed"] == requests["sent"] == 24
    assert summary["messages"]["dead_lettered"] == requests["failed"]
    assert summary["registry_events"]["registered"] == 4


def test_the_conformance_one_liner_passes_against_the_real_redis(
    user_venv: UserVenv, redis_server: str
) -> None:
    requirement = f"tta-agent-coordination[testing]=={VERSION}"
    installed = user_venv.run("pip", "install", requirement)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    url = _redis_url("tta-wheel-conformance")
    # The one-liner, as the conformance page gives it (run in an empty directory).
    done = user_venv.run(
        "pytest", "--pyargs", "tta_agent_coordination.testing", f"--tta-backend={url}"
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr
    assert f"tta-agent-coordination backend: {url}" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert " passed" in last, last
    assert "failed" not in last, last
    assert "error" not in last, last
