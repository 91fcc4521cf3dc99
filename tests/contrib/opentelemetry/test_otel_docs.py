"""The OpenTelemetry page's example trace runs and prints what the page shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[3] / "docs" / "observability" / "opentelemetry.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
REPLY_QUEUE = re.compile(r"tta\.reply:[0-9a-f]+…?")


def test_the_example_trace_prints_what_the_page_shows(tmp_path: Path) -> None:
    section = PAGE.read_text().split("### An example trace", 1)[1]
    (language, code), (shown_language, shown) = [(m[1], m[2]) for m in BLOCK.finditer(section)][:2]
    assert (language, shown_language) == ("python", "text")
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert REPLY_QUEUE.sub("tta.reply:…", done.stdout) == REPLY_QUEUE.sub("tta.reply:…", shown)


def test_the_setup_block_compiles() -> None:
    section = PAGE.read_text().split("## Setup", 1)[1]
    language, code = next((m[1], m[2]) for m in BLOCK.finditer(section))
    assert language == "python"
    compile(code, "setup", "exec")  # it needs a collector to run; it must at least parse
