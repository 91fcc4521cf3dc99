"""``serve(..., abort=event)``: the worker loop's stop-at-once mode (asyncio and trio)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from coordinator_helpers import WatchedMetrics

from tta_agent_coordination import AgentId, Backend, Delivery, connect
from tta_agent_coordination.coordinator import MessageCoordinator, _Slots, _Worker
from tta_agent_coordination.metrics import (
    DELIVERIES_ACKED,
    DELIVERIES_RELEASED,
    HANDLER_DURATION,
)
from tta_agent_coordination.retry import RetryPolicy

pytestmark = pytest.mark.anyio

SVC = AgentId("svc", "1")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


async def test_abort_ends_the_grace_period_and_leaves_messages_reserved(backend: Backend) -> None:
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics)
    stop, abort = anyio.Event(), anyio.Event()
    running = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        running.set()
        await anyio.sleep_forever()

    await coord.send(SVC)
    with anyio.fail_after(5):  # far below the grace period: the abort ended it
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: coord.serve(
                    SVC, handler, stop=stop, abort=abort, grace=60, visibility_timeout=0.3
                )
            )
            await running.wait()
            stop.set()
            await anyio.wait_all_tasks_blocked()  # in the grace period, the handler running
            abort.set()
    assert metrics.total(DELIVERIES_RELEASED) == 0
    assert metrics.total(DELIVERIES_ACKED) == 0
    assert metrics.values(HANDLER_DURATION, outcome="aborted") != []
    stats = await backend.queue.stats(SVC)
    assert (stats.ready, stats.reserved) == (0, 1)
    # Nothing was handed back: the message is due again when its visibility ends, the
    # expired reservation counted as an attempt.
    with anyio.fail_after(5):
        again: list[Delivery] = []
        while not again:
            again = await coord.reserve(SVC, visibility_timeout=5, wait=1)
    assert [d.attempt for d in again] == [2]


async def test_abort_alone_stops_the_loop(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    abort = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        abort.set()
        await anyio.sleep_forever()

    await coord.send(SVC)
    with anyio.fail_after(5):
        await coord.serve(SVC, handler, abort=abort, grace=60)
    assert (await backend.queue.stats(SVC)).reserved == 1


async def test_stop_then_no_abort_keeps_the_graceful_path(backend: Backend) -> None:
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics)
    stop, abort = anyio.Event(), anyio.Event()

    async def handler(delivery: Delivery) -> None:
        stop.set()

    await coord.send(SVC)
    with anyio.fail_after(5):
        await coord.serve(SVC, handler, stop=stop, abort=abort)
    assert metrics.total(DELIVERIES_ACKED) == 1
    assert not abort.is_set()


async def test_an_aborted_loop_does_not_release_unstarted_deliveries(backend: Backend) -> None:
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics)

    async def handler(delivery: Delivery) -> None:
        raise AssertionError  # pragma: no cover

    await coord.send(SVC)
    delivery = (await coord.reserve(SVC, visibility_timeout=30))[0]
    slots = _Slots(1)
    assert slots.take(1) == 1
    worker = _Worker(
        coordinator=coord,
        agent_id=SVC,
        handler=handler,
        slots=slots,
        handler_timeout=None,
        visibility_timeout=30,
        policy=RetryPolicy(),
        breaker=None,
        grace=1,
        stopping=True,
        aborted=True,
    )
    await worker._handle(delivery)
    assert slots.free == 1
    assert metrics.total(DELIVERIES_RELEASED) == 0
    assert (await backend.queue.stats(SVC)).reserved == 1
