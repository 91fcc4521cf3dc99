"""The benchmark command runs end to end on a tiny N and prints its table (issue 9).

A benchmark is never a unit test: nothing here looks at a figure. It checks that
``python -m benchmarks --quick`` starts its own redis-server, runs every measurement, prints
the placement, the table and the targets, and writes the raw figures as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks._measure import Summary
from benchmarks._report import markdown_table, publish, targets

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = [
    "floor.seq",
    "floor.pipe",
    "floor.lua",
    "floor.lua_batch",
    "ours.single",
    "ours.batch",
    "ours.serve",
    "ours.bare",
    "latency.floor",
    "latency.ours",
    "breaker",
    "registry",
    "memory",
    "memory_driver",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not installed: the benchmark test must run in CI")
        pytest.skip("redis-server is not installed")
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "benchmarks", "--quick", "--reps", "1", "--no-chart"]
    done = subprocess.run(
        [*command, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, out


def test_prints_placement_table_and_targets(run: tuple[str, Path]) -> None:
    stdout, _ = run
    assert "placement: redis-server on" in stdout
    rows = [line.split()[0] for line in stdout.splitlines() if line and not line[0].isspace()]
    for name in MEASUREMENTS:
        assert name in rows, f"{name} missing from the table:\n{stdout}"
    targets = stdout.split("targets (issue 9):", 1)[1].strip().splitlines()
    verdicts = [line.split()[0] for line in targets if line.startswith("  ")]
    assert len(verdicts) >= 12, stdout
    assert set(verdicts) <= {"PASS", "MISS", "n/a", "ref"}, verdicts


def test_writes_raw_figures(run: tuple[str, Path]) -> None:
    _, out = run
    raw = json.loads((out / "results.json").read_text())
    assert set(raw["results"]) == set(MEASUREMENTS)
    single = raw["results"]["ours.single"]
    assert single["round_trips"]["values"]
    assert single["enqueue"]["low"] <= single["enqueue"]["median"] <= single["enqueue"]["high"]
    assert raw["meta"]["redis_server"]
    assert "| ours.single | enqueue |" in (out / "results.md").read_text()


def test_publish_replaces_the_latest_run_block(run: tuple[str, Path], tmp_path: Path) -> None:
    _, out = run
    raw = json.loads((out / "results.json").read_text())
    results = {
        name: {key: Summary(**figures) for key, figures in metrics.items()}
        for name, metrics in raw["results"].items()
    }
    page = tmp_path / "performance.md"
    page.write_text("# P\n\nbefore\n<!-- latest-run -->\nold\n<!-- /latest-run -->\nafter\n")
    folder = tmp_path / "performance"
    publish(page, markdown_table(raw["meta"], results, targets(results)), raw["meta"], folder)
    text = page.read_text()
    assert "old" not in text
    assert text.startswith("# P\n\nbefore\n<!-- latest-run -->\nRun on ")
    assert text.endswith("<!-- /latest-run -->\nafter\n")
    assert "| ours.single | enqueue |" in text
    assert "(performance/results.png)" in text
    assert raw["meta"]["placement"] in text


def figure(value: float) -> Summary:
    """A synthetic measurement: ``value`` in every run."""
    return Summary(value, value, value, [value])


def test_the_lua_batch_floor_is_a_reference_beside_the_batch_targets() -> None:
    results = {
        "ours.batch": {"enqueue": figure(30.0), "reserve_ack": figure(20.0)},
        "floor.pipe": {"enqueue": figure(40.0), "drain": figure(40.0)},
        "floor.lua_batch": {"enqueue": figure(60.0), "reserve_ack": figure(80.0)},
    }
    rows = {t.name: t for t in targets(results)}
    assert rows["enqueue_many x100 vs pipelined floor"].verdict == "MISS"
    reference = rows["reserve(100)+ack_many vs Lua batch floor"]
    assert (reference.measured, reference.verdict) == ("0.25x (20.0 / 80.0)", "ref")
    assert rows["enqueue_many x100 vs Lua batch floor"].measured.startswith("0.50x")
    del results["floor.lua_batch"]
    rows = {t.name: t for t in targets(results)}
    assert rows["enqueue_many x100 vs Lua batch floor"].verdict == "n/a"


def test_our_scripts_with_a_bare_client_are_a_reference_beside_the_batch_targets() -> None:
    results = {
        "ours.batch": {"enqueue": figure(30.0), "reserve_ack": figure(20.0)},
        "ours.bare": {"enqueue": figure(36.0), "reserve_ack": figure(44.0)},
        "floor.pipe": {"enqueue": figure(40.0), "drain": figure(40.0)},
    }
    rows = {t.name: t for t in targets(results)}
    reference = rows["our scripts, bare client: reserve+ack x100 vs pipelined floor"]
    assert (reference.measured, reference.verdict) == ("1.10x (44.0 / 40.0)", "ref")
    enqueue = rows["our scripts, bare client: enqueue x100 vs pipelined floor"]
    assert (enqueue.measured, enqueue.verdict) == ("0.90x (36.0 / 40.0)", "ref")
    del results["ours.bare"]
    rows = {t.name: t for t in targets(results)}
    assert rows["our scripts, bare client: enqueue x100 vs pipelined floor"].verdict == "n/a"
