"""The original coordination code's queue failures, reproduced against this driver with many
concurrent clients (each a backend with its own connection pool), and shown not to happen.

The original double delivered under concurrent consumers, overshot its queue cap under
concurrent producers, looped forever on a message that crashed its consumer and merged
identical messages (issue 6). Breaker state per process is the breaker tests' business.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from redis_helpers import REDIS_URL
from tta_agent_coordination import connect
from tta_agent_coordination.errors import QueueFullError
from tta_agent_coordination.models import AgentId, AgentMessage, DeadLetterReason, EnqueueRequest
from tta_agent_coordination.protocols import Backend

pytestmark = pytest.mark.anyio

QUEUE = AgentId("orig", "q")
SENDER = AgentId("orig", "sender")
CLIENTS = 8


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(**fields: Any) -> AgentMessage:
    return AgentMessage(sender=SENDER, recipient=QUEUE, **fields)


@asynccontextmanager
async def clients(n: int = CLIENTS, **options: Any) -> AsyncGenerator[list[Backend]]:
    """``n`` backends on one namespace, each with its own connections."""
    namespace = f"t{uuid.uuid4().hex[:16]}"
    async with AsyncExitStack() as stack:
        backends = [
            await stack.enter_async_context(connect(REDIS_URL, namespace=namespace, **options))
            for _ in range(n)
        ]
        try:
            yield backends
        finally:
            await backends[0].drop_namespace()


async def test_concurrent_consumers_never_get_the_same_entry() -> None:
    async with clients() as backends:
        ids = await backends[0].queue.enqueue_many([EnqueueRequest(message=message())] * 400)
        seen: list[str] = []

        async def consumer(backend: Backend) -> None:
            while got := await backend.queue.reserve(QUEUE, visibility_timeout=60, max_messages=3):
                seen.extend(d.entry_id for d in got)
                assert all(await backend.queue.ack_many([d.receipt for d in got]))
                await anyio.lowlevel.checkpoint()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for backend in backends:
                    for _ in range(3):
                        tg.start_soon(consumer, backend)
        assert Counter(seen) == Counter(ids)  # each entry exactly once


async def test_waiting_consumers_on_many_clients_share_without_duplicates() -> None:
    async with clients() as backends:
        seen: list[str] = []

        async def consumer(backend: Backend) -> None:
            while got := await backend.queue.reserve(QUEUE, visibility_timeout=60, wait=1.5):
                seen.extend(d.entry_id for d in got)
                await backend.queue.ack(got[0].receipt)

        sent: list[str] = []
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for backend in backends:
                    tg.start_soon(consumer, backend)
                await anyio.sleep(0.2)
                for index in range(100):
                    entry_id = await backends[index % CLIENTS].queue.enqueue(message())
                    sent.append(entry_id)  # one await at a time, in order
        assert sorted(seen) == sorted(sent)


async def test_concurrent_producers_never_pass_the_cap() -> None:
    async with clients(max_queue_length=25) as backends:
        outcomes: list[bool] = []

        async def producer(backend: Backend) -> None:
            try:
                await backend.queue.enqueue(message())
                outcomes.append(True)
            except QueueFullError:
                outcomes.append(False)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for backend in backends:
                    for _ in range(10):
                        tg.start_soon(producer, backend)
        assert outcomes.count(True) == 25
        assert (await backends[0].queue.stats(QUEUE)).live == 25


async def test_a_message_that_crashes_its_consumers_is_dead_lettered_not_looped() -> None:
    async with clients(max_attempts=3) as backends:
        entry_id = await backends[0].queue.enqueue(message(payload={"poison": True}))
        deliveries = 0
        for round_ in range(10):  # every consumer "crashes": its reservation just expires
            backend = backends[round_ % CLIENTS]
            got = await backend.queue.reserve(QUEUE, visibility_timeout=10)
            if not got:
                break
            deliveries += 1
            assert got[0].attempt == deliveries
            clock = backend.clock
            assert clock is not None
            await clock.advance(11)
        assert deliveries == 3
        dead = await backends[1].queue.get_dead_letter(QUEUE, entry_id)
        assert dead is not None
        assert (dead.reason, dead.attempts) == (DeadLetterReason.MAX_ATTEMPTS, 3)


async def test_identical_messages_from_many_clients_stay_separate_entries() -> None:
    async with clients() as backends:
        same = message(payload={"same": "body"})
        ids: list[str] = []

        async def send(backend: Backend) -> None:
            ids.append(await backend.queue.enqueue(same))

        async with anyio.create_task_group() as tg:
            for backend in backends:
                tg.start_soon(send, backend)
        got = await backends[0].queue.reserve(QUEUE, visibility_timeout=10, max_messages=100)
        assert sorted(d.entry_id for d in got) == sorted(ids)
        assert len(set(ids)) == CLIENTS
        assert all(d.message == same for d in got)
