"""The one boundary where redis-py's exceptions become the package's errors.

Everything the driver sends goes through :func:`boundary` (via ``_Connection.call`` and
``_Connection.run_script``): transient errors (a lost or refused connection, a timeout, a
server still loading its data) are retried a few times with backoff, then raised as
``BackendUnavailableError`` with redis-py's exception chained. Which errors are transient is
decided by class, here and nowhere else.

A retried write is safe: enqueues carry an ``entry_id`` fixed before the first try, and a
repeated ``ack`` with the same receipt answers ``True`` again. A write whose reply was lost is
never reported as a success without its reply.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

from redis import exceptions as redis_errors

from tta_agent_coordination.errors import BackendError, BackendUnavailableError

__all__ = ["TRANSIENT", "boundary", "translate"]

T = TypeVar("T")

#: redis-py errors worth another try: the command may not have reached the server, or the
#: server could not answer yet.
TRANSIENT: Final[tuple[type[BaseException], ...]] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError, AuthenticationError excluded below
    redis_errors.TimeoutError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    OSError,
)

#: Errors that look like connection errors but will not heal by themselves.
_PERMANENT: Final[tuple[type[BaseException], ...]] = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
)

#: Retries are logged here (INFO: a retried blip is not news; giving up raises, and the caller
#: that gets the ``BackendUnavailableError`` decides how loud it is).
logger = logging.getLogger("tta_agent_coordination.redis")

_TRIES: Final = 4
_BASE_DELAY: Final = 0.05


@asynccontextmanager
async def translate(what: str) -> AsyncGenerator[None]:
    """Translate redis-py's exceptions raised inside the block (no retry).

    Raises:
        BackendUnavailableError: A connection, timeout or authentication error.
        BackendError: Any other error reply.
    """
    try:
        yield
    except (*_PERMANENT, *TRANSIENT) as exc:
        msg = f"redis unreachable for {what}: {exc}"
        raise BackendUnavailableError(msg) from exc
    except redis_errors.RedisError as exc:
        msg = f"redis error during {what}: {exc}"
        raise BackendError(msg) from exc


async def boundary(call: Callable[[], Awaitable[T]], *, what: str, tries: int = _TRIES) -> T:
    """Run ``call`` (one round trip), retrying transient errors, translating the rest.

    Args:
        call: A zero-argument coroutine function sending one command, script or pipeline.
        what: What is being done, for the error message (``"enqueue"``).
        tries: Tries in all, the first included.

    Returns:
        What ``call`` returned.

    Raises:
        BackendUnavailableError: The server could not be reached after ``tries`` tries.
        BackendError: Redis refused the command (an error reply that is not transient).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except _PERMANENT as exc:
            msg = f"redis refused the connection for {what}: {exc}"
            raise BackendUnavailableError(msg) from exc
        except TRANSIENT as exc:
            if attempt >= tries:
                msg = f"redis unreachable for {what} after {attempt} tries: {exc}"
                raise BackendUnavailableError(msg) from exc
            delay = random.uniform(0, min(1.0, _BASE_DELAY * 2 ** (attempt - 1)))  # full jitter
            logger.info(
                "redis unreachable for %s (try %d of %d), retrying in %.3fs: %s",
                what,
                attempt,
                tries,
                delay,
                exc,
                extra={"operation": what, "try": attempt},
            )
            await asyncio.sleep(delay)
        except redis_errors.RedisError as exc:
            msg = f"redis error during {what}: {exc}"
            raise BackendError(msg) from exc
