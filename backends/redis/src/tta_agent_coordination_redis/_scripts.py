"""Lua scripts from ``scripts/``, run by SHA in one round trip.

``scripts/NAME.lua`` is the script ``NAME``. A line ``--#include OTHER`` inlines
``scripts/OTHER.lua`` (once), so shared helpers (``_time.lua``, ``_queue.lua``) are written
once and every script stays one self-contained ``EVALSHA``. A script is sent by SHA; if the
server answers ``NOSCRIPT`` (restarted, failed over, ``SCRIPT FLUSH``), the same round trip is
repeated with ``EVAL`` and the full text, which also caches it again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio import Redis

__all__ = ["Script", "ScriptRunner", "load_script"]

_INCLUDE: Final = re.compile(r"^--#include ([A-Za-z0-9_]+)[ \t]*$", re.MULTILINE)


_PACKAGE: Final = "tta_agent_coordination_redis"


def _read(name: str) -> str:
    return resources.files(_PACKAGE).joinpath("scripts", f"{name}.lua").read_text("utf-8")


def load_script(name: str) -> str:
    """The text of ``scripts/NAME.lua`` with its ``--#include`` lines expanded."""
    seen: set[str] = set()

    def expand(text: str) -> str:
        def inline(match: re.Match[str]) -> str:
            other = match.group(1)
            if other in seen:
                return f"-- (included above: {other})"
            seen.add(other)
            return expand(_read(other))

        return _INCLUDE.sub(inline, text)

    seen.add(name)
    return expand(_read(name))


class Script:
    """One loaded script: its text and SHA1."""

    __slots__ = ("name", "sha", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = load_script(name)
        self.sha = hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest()


class ScriptRunner:
    """Runs scripts by name on one client (scripts are read from the package once)."""

    def __init__(self) -> None:
        self._scripts: dict[str, Script] = {}

    def get(self, name: str) -> Script:
        """The script ``name`` (read and expanded on first use)."""
        script = self._scripts.get(name)
        if script is None:
            script = Script(name)
            self._scripts[name] = script
        return script

    async def run(self, client: Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``EVALSHA`` the script; on ``NOSCRIPT``, ``EVAL`` it (which caches it again).

        Redis errors are not translated here: the caller runs this inside the error boundary.
        """
        script = self.get(name)
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await client.eval(script.text, len(keys), *keys, *args)
