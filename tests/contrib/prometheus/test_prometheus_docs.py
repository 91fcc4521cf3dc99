"""docs/observability/prometheus.md matches the code.

Its example prints what the page shows, its other Python blocks compile, and its tables name
every metric the sink and the collector expose.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tta_agent_coordination import connect
from tta_agent_coordination_prometheus import METRICS, CoordinationCollector

PAGE = Path(__file__).resolve().parents[3] / "docs" / "observability" / "prometheus.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \| (?P<type>\w+) \|", re.MULTILINE)


def test_the_example_scrape_prints_what_the_page_shows(tmp_path: Path) -> None:
    section = PAGE.read_text().split("## An example scrape", 1)[1]
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
    assert done.stdout == shown


def test_every_python_block_compiles() -> None:
    blocks = [code for language, code in BLOCK.findall(PAGE.read_text()) if language == "python"]
    assert len(blocks) == 3
    for number, code in enumerate(blocks):
        compile(code, f"block {number}", "exec")


def test_the_tables_name_every_metric_with_its_type() -> None:
    rows = {m["name"]: m["type"] for m in ROW.finditer(PAGE.read_text())}
    for name, spec in METRICS.items():
        exposed = f"{name}_total" if spec.kind == "counter" else name
        assert rows.pop(exposed) == spec.kind, name
    assert rows.pop("tta_metrics_sink_errors_total") == "counter"
    backend = connect("memory://")
    collected = {f.name: f.type for f in CoordinationCollector(backend).describe()}
    for name, kind in collected.items():
        exposed = f"{name}_total" if kind == "counter" else name
        assert rows.pop(exposed) == kind, name
    assert rows == {}  # nothing documented that is not exposed
