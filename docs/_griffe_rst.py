"""A griffe extension for the API reference: the docstrings' reST bits, shown as Markdown.

The docstrings use Sphinx roles (``:class:`~pkg.Name```) and ``::`` before literal blocks.
mkdocstrings renders docstrings as Markdown, where those would show as they are written; this
extension rewrites them, in the rendered copy only, as code spans (``~`` keeps the last
component, as Sphinx does) and a plain ``:``. Loaded by ``mkdocs.yml``
(``extensions: [docs/_griffe_rst.py]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|attr|exc|mod|data|obj|const):`(~?)([^`<]+?)(?:\s*<[^`]+>)?`"
)
LITERAL = re.compile(r"::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    target = match[2].strip()
    return f"`{target.rsplit('.', 1)[-1] if match[1] else target}`"


def to_markdown(text: str) -> str:
    """Sphinx roles to code spans, ``text::`` to ``text:`` (the literal block stays indented)."""
    text = ROLE.sub(_role, text)
    text = re.sub(r"^\s*::$\n?", "", text, flags=re.MULTILINE)  # a lone "::" line
    return LITERAL.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring's reST roles and ``::`` markers before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite this object's docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
