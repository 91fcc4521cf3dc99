"""What a forked child makes: for the tests that ids made ahead are never shared with a child."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable


def made_in_a_forked_child(make: Callable[[], list[str]]) -> set[str]:
    """Fork; the child runs ``make()`` and exits; return what it made (comma-free strings)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python warns when a process with threads forks (another test's idle worker thread
        # would do): the child here takes no lock, writes to a pipe and exits at once.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child (coverage does not follow it)
        os.close(read_end)
        os.write(write_end, ",".join(make()).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = set(pipe.read().decode().split(","))
    os.waitpid(pid, 0)
    return child
