"""The peers (``--peers``): arq, saq, taskiq-redis, dramatiq, rq, kombu and BullMQ.

Each Python peer runs in its own virtualenv under ``benchmarks/.peers/<name>`` (their redis-py
pins conflict), built on first use from the pinned ``benchmarks/peers/<name>/requirements.txt``
and rebuilt when that file changes; BullMQ runs on the machine's ``node`` from
``benchmarks/peers/bullmq`` after ``npm ci`` (its committed lockfile). Each runs as a
subprocess on the client's cores, against the same private server, with the same payload
and the same N; it warms up, flushes between repetitions and prints its figures as JSON.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._measure import Summary, summarise
from ._server import Placement, RedisServer

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
VENVS = HERE / ".peers"
PYTHON_PEERS = ["arq", "saq", "taskiq", "dramatiq", "rq", "kombu"]
ALL = [*PYTHON_PEERS, "bullmq"]
#: rq forks a work horse per job (tens of jobs per second): it gets a smaller N.
MAX_N = {"rq": 1000}


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603  # our own argv


def _venv(name: str, log: Callable[[str], None]) -> Path:
    """The peer's virtualenv python, built (or rebuilt) from its pinned requirements."""
    requirements = PEERS / name / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    venv = VENVS / name
    marker = venv / "requirements.sha256"
    python = venv / "bin" / "python"
    if marker.exists() and marker.read_text() == digest and python.exists():
        return python
    log(f"    building {venv} from {requirements}")
    shutil.rmtree(venv, ignore_errors=True)
    for command in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
    ):
        done = _run(command)
        if done.returncode:
            msg = f"setting up the {name} peer failed: {' '.join(command)}\n{done.stderr}"
            raise RuntimeError(msg)
    marker.write_text(digest)
    return python


def _node(log: Callable[[str], None]) -> list[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        msg = "BullMQ needs node and npm on the PATH"
        raise RuntimeError(msg)
    folder = PEERS / "bullmq"
    lock = folder / "package-lock.json"
    marker = folder / "node_modules" / ".tta-lock.sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not marker.exists() or marker.read_text() != digest:
        log("    npm ci (BullMQ)")
        done = _run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder)
        if done.returncode:
            msg = f"npm ci failed in {folder}:\n{done.stderr}"
            raise RuntimeError(msg)
        marker.write_text(digest)
    return [node, str(folder / "run.mjs")]


def run_peer(
    name: str,
    *,
    server: RedisServer,
    placement: Placement,
    n: int,
    reps: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Run one peer; returns its parsed JSON (``runs`` and ``versions``) plus ``n``."""
    size = min(n, MAX_N.get(name, n))
    if name == "bullmq":
        command = [*_node(log), "--latency", str(min(size, 1000))]
    else:
        command = [str(_venv(name, log)), str(PEERS / name / "run.py")]
    command = [*placement.taskset, *command, "--url", server.url, "--n", str(size)]
    done = _run([*command, "--reps", str(reps)])
    if done.returncode:
        msg = f"the {name} peer failed:\n{done.stdout}\n{done.stderr}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["n"] = size
    return result


def run_all(
    *,
    server: RedisServer,
    placement: Placement,
    n: int,
    reps: int,
    only: set[str],
    log: Callable[[str], None],
) -> tuple[dict[str, dict[str, Summary]], dict[str, Any]]:
    """Every peer (or those in ``only``): their summaries, and their versions and sizes."""
    results: dict[str, dict[str, Summary]] = {}
    about: dict[str, Any] = {}
    for name in ALL:
        if only and name not in only:
            continue
        log(f"  peer {name}")
        try:
            raw = run_peer(name, server=server, placement=placement, n=n, reps=reps, log=log)
        except RuntimeError as exc:
            log(f"    FAILED: {exc}")
            about[name] = {"error": str(exc)}
            continue
        runs: list[dict[str, float]] = raw["runs"]
        results[f"peer.{name}"] = {key: summarise(r[key] for r in runs) for key in runs[0]}
        about[name] = {"versions": raw["versions"], "n": raw["n"]}
    return results, about
