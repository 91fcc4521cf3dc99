"""The documentation site's runnable pages run: every Python block, with its printed output.

The quick start page includes the README's quick start (``pymdownx.snippets``): the blocks are
expanded the way the site build expands them, then run. A ``text`` block right after a Python
block is that block's output and must match it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Pages whose Python blocks all run, and what the first one prints (None: its ``text`` block).
RUNNABLE = {
    "quickstart.md": "a world around a lighthouse",
    "observability/index.md": None,
}
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"$', re.MULTILINE)
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# The reply queue's name is random; the page shows one.
REPLY_QUEUE = re.compile(r"tta\.reply:[0-9a-f]+…?")


def expand(text: str) -> str:
    """Replace each ``--8<-- "file"`` / ``--8<-- "file:section"`` line by what it includes."""

    def include(match: re.Match[str]) -> str:
        included = (ROOT / match["path"]).read_text()
        section = match["section"]
        if section is None:
            return included
        start, end = f"--8<-- [start:{section}]", f"--8<-- [end:{section}]"
        assert included.count(start) == 1, f"{match['path']} has no section {section}"
        body = included.split(start, 1)[1].split(end, 1)[0]
        return body.split("\n", 1)[1].rsplit("\n", 1)[0]  # drop the marker lines' rests

    return SNIPPET.sub(include, text)


def blocks(page: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in BLOCK.finditer(expand((DOCS / page).read_text()))]


def test_the_quick_start_page_is_the_readme_quick_start() -> None:
    readme = (ROOT / "README.md").read_text()
    readme_python = [code for language, code in BLOCK.findall(readme) if language == "python"]
    page_python = [code for language, code in blocks("quickstart.md") if language == "python"]
    assert page_python
    assert page_python == readme_python


def test_expand_includes_a_section_without_its_markers() -> None:
    text = expand('--8<-- "README.md:quickstart"')
    assert "--8<--" not in text
    assert text.startswith("```bash\npip install tta-agent-coordination")
    assert text.endswith("anyio.run(main)\n```")


@pytest.mark.parametrize("page", RUNNABLE)
def test_every_python_block_runs(page: str, tmp_path: Path) -> None:
    found = blocks(page)
    pythons = [i for i, (language, _) in enumerate(found) if language == "python"]
    assert pythons, f"{page} has no Python block"
    for i in pythons:
        done = subprocess.run(
            [sys.executable, "-c", found[i][1]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        if found[i][1].split("\n", 1)[0].endswith(".py"):  # "# app/tasks.py": a module, imported
            continue
        if i + 1 < len(found) and found[i + 1][0] == "text":
            shown = REPLY_QUEUE.sub("tta.reply:…", found[i + 1][1])
            assert REPLY_QUEUE.sub("tta.reply:…", done.stdout) == shown
        else:
            expected = RUNNABLE[page]
            assert expected is not None, f"block {i} of {page} prints nothing checked"
            assert expected in done.stdout


def test_the_core_readme_shows_the_same_quick_start() -> None:
    """The core's README is its PyPI page: its example is the tested quick start."""
    readme = (ROOT / "README.md").read_text()
    core = (ROOT / "core" / "README.md").read_text()
    python = [code for language, code in BLOCK.findall(core) if language == "python"]
    assert python
    assert python == [code for language, code in BLOCK.findall(readme) if language == "python"]
    assert "](" not in core.replace("](https://", "")  # no relative link: PyPI cannot follow it


@pytest.mark.parametrize(
    "readme", ["core", "backends/redis", "contrib/prometheus", "contrib/opentelemetry"]
)
def test_every_distribution_readme_has_only_absolute_links(readme: str) -> None:
    """Each README is a PyPI page: a relative link there leads nowhere."""
    text = (ROOT / readme / "README.md").read_text()
    assert "](" not in text.replace("](https://", "")
