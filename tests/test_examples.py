"""The examples and the README's Python blocks run, and print what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
EXPECTED = {
    "quickstart.py": "a world around a lighthouse",
    "worker_pool.py": "done: [0, 1, 2, 4, 6, 7]",
    "original_api.py": "acked: True",
}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_every_example_is_checked() -> None:
    assert {path.name for path in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path, tmp_path: Path) -> None:
    done = run_python(path.read_text(), tmp_path)
    assert done.returncode == 0, done.stderr
    assert EXPECTED[path.name] in done.stdout


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_blocks_run(tmp_path: Path) -> None:
    blocks = readme_blocks("python")
    assert blocks, "the README's quick start has Python code"
    for block in blocks:
        done = run_python(block, tmp_path)
        assert done.returncode == 0, done.stderr
        if block.split("\n", 1)[0].endswith(".py"):  # "# app/tasks.py": a module, run for errors
            continue  # (tests/backends/redis/test_readme_operate.py runs it under a worker)
        assert "a world around a lighthouse" in done.stdout


def test_readme_quick_start_is_the_quickstart_example() -> None:
    (block,) = [b for b in readme_blocks("python") if "request(" in b]
    assert (
        block.strip()
        == (ROOT / "examples" / "quickstart.py").read_text().split('"""\n', 2)[-1].strip()
    )


def test_readme_starts_with_exactly_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```\w*\n(.*?)```", text, flags=re.DOTALL)
    assert first is not None
    commands = [line for line in first.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    assert commands[0].endswith("nox -s demo")
    assert commands[1].endswith("nox")
