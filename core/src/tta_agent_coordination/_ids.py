"""Random ids made ahead, for the core and the drivers (a private module: no stable API).

``uuid.uuid4()`` and ``secrets.token_hex()`` each cost a system call (and ``uuid4`` a ``UUID``
object) per id; on the hot paths (a message id per send, an entry id per enqueue, a token per
reservation) that is several microseconds. Here one ``os.urandom`` call makes ``_BATCH`` ids.
They are as random and as unpredictable as the originals (the same source, ``os.urandom``).
``deque.append``/``popleft`` are atomic, so threads never share one; a forked child empties its
copies, so parent and child never hand out the same one.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Final

__all__ = ["new_id", "new_token"]

_BATCH: Final = 64
_IDS: deque[str] = deque()
_TOKENS: deque[str] = deque()
#: The version (4) and variant (10xx) bits of every id of a batch, set in one operation on the
#: batch as one integer: keep everything else (``_KEEP``), then set them (``_SET``).
_KEEP: Final = int.from_bytes(bytes.fromhex("ffffffffffff0fffbfffffffffffffff") * _BATCH)
_SET: Final = int.from_bytes(bytes.fromhex("00000000000040008000000000000000") * _BATCH)


def new_id() -> str:
    """A random UUID4 as 32 hex digits (as ``uuid.uuid4().hex``)."""
    try:
        return _IDS.popleft()
    except IndexError:
        raw = (int.from_bytes(os.urandom(16 * _BATCH)) & _KEEP | _SET).to_bytes(16 * _BATCH)
        text = raw.hex()
        _IDS.extend(text[i : i + 32] for i in range(32, 32 * _BATCH, 32))
        return text[:32]


def new_token() -> str:
    """16 random hex digits (as ``secrets.token_hex(8)``)."""
    try:
        return _TOKENS.popleft()
    except IndexError:
        raw = os.urandom(8 * _BATCH).hex()
        _TOKENS.extend(raw[i : i + 16] for i in range(16, len(raw), 16))
        return raw[:16]


if hasattr(os, "register_at_fork"):  # pragma: no branch  # every platform that can fork
    os.register_at_fork(after_in_child=_IDS.clear)
    os.register_at_fork(after_in_child=_TOKENS.clear)
