"""The README's "Running it" block, pasted: the handler module, a worker, queues, dlq list.

The commands are read from the README (between the ``operate`` markers) and run as they are,
with the URL pointed at the test server in a namespace of its own; the worker is a real
subprocess, followed through what its handler prints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from redis_helpers import REDIS_URL
from tta_agent_coordination.plugins import connect

README = Path(__file__).parents[3] / "README.md"
SCRIPT = Path(sys.executable).parent / "tta-coord"


def operate_block() -> tuple[str, list[str]]:
    text = README.read_text()
    block = text.split("<!-- --8<-- [start:operate] -->")[1].split("<!-- --8<-- [end:operate] -->")[
        0
    ]
    (python,) = re.findall(r"```python\n(.*?)```", block, re.DOTALL)
    (shell,) = re.findall(r"```bash\n(.*?)```", block, re.DOTALL)
    commands = [line.split("  #")[0].strip() for line in shell.splitlines() if line.strip()]
    return python, commands


@pytest.fixture
def url() -> Iterator[str]:
    made = f"{REDIS_URL}?namespace=readme{uuid.uuid4().hex[:10]}"
    yield made

    async def drop() -> None:
        async with connect(made) as backend:
            await backend.drop_namespace()

    anyio.run(drop)


def test_the_readme_running_it_block_works_when_pasted(tmp_path: Path, url: str) -> None:
    python, commands = operate_block()
    assert python.startswith("# app/tasks.py\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "tasks.py").write_text(python)
    export, worker, queues, dlq = commands
    assert export.startswith("export TTA_COORDINATION_URL=")
    env = {**os.environ, "TTA_COORDINATION_URL": url, "PYTHONUNBUFFERED": "1"}

    def run(line: str) -> subprocess.CompletedProcess[str]:
        argv = shlex.split(line)
        assert argv[0] == "tta-coord"
        return subprocess.run(
            [str(SCRIPT), *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    assert worker.endswith("&")
    argv = shlex.split(worker.removesuffix("&"))
    with subprocess.Popen(
        [str(SCRIPT), *argv[1:]], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            sent = run("tta-coord send summariser '{\"doc\": 7}' --yes")
            assert sent.returncode == 0, sent.stderr
            assert process.stdout is not None
            assert process.stdout.readline() == "summarising {'doc': 7}\n"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0

    listed = run(queues + " --json")
    assert listed.returncode == 0, listed.stderr
    by_queue = {q["queue"]: q for q in json.loads(listed.stdout)}
    assert by_queue["summariser"]["ready"] == 0
    assert by_queue["summariser"]["reserved"] == 0
    dead = run(dlq + " --json")
    assert dead.returncode == 0, dead.stderr
    assert json.loads(dead.stdout)["items"] == []
