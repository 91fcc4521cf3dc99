"""The queue scripts as one Redis Function library (``FCALL``), and the fall back to ``EVALSHA``.

On a server with Redis Functions (7.0+) the driver loads its queue library on first use and
runs the queue scripts as its functions; ``?functions=0``, a server that refuses
``FUNCTION LOAD`` (an older server, an ACL without it) and every path but the lean one run
them by SHA. The queue contract runs in both modes (``test_queue_contract.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis as sync_redis

from redis_helpers import command_calls, fresh
from tta_agent_coordination import connect
from tta_agent_coordination.errors import BackendError, ValidationError
from tta_agent_coordination.models import AgentId, AgentMessage
from tta_agent_coordination_redis import RedisBackend, _scripts

pytestmark = pytest.mark.anyio

QUEUE = AgentId("library", "q")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(i: int = 0) -> AgentMessage:
    return AgentMessage(sender=QUEUE, recipient=QUEUE, payload={"i": i})


@pytest.fixture
def server(private_server: str) -> Iterator[sync_redis.Redis]:
    """The private server with no function library and its statistics reset."""
    with sync_redis.Redis.from_url(private_server) as admin:
        admin.function_flush()
        admin.config_resetstat()
        yield admin


def libraries(server: sync_redis.Redis) -> list[str]:
    listed = cast("list[list[Any]]", server.function_list())  # [b"library_name", name, ...]
    return [dict(zip(row[::2], row[1::2], strict=True))[b"library_name"].decode() for row in listed]


async def cycle(backend: RedisBackend) -> None:
    store = backend.queue
    entry_id = await store.enqueue(message())
    (delivery,) = await store.reserve(QUEUE, visibility_timeout=10)
    assert delivery.entry_id == entry_id
    assert await store.nack(delivery.receipt, delay=0)
    (again,) = await store.reserve(QUEUE, visibility_timeout=10)
    assert again.attempt == 2
    assert await store.ack(again.receipt)
    assert (await store.stats(QUEUE)).live == 0


async def test_the_queue_scripts_run_as_the_library_functions(
    private_server: str, server: sync_redis.Redis
) -> None:
    async with fresh(private_server) as backend:
        await cycle(backend)
        assert backend._connection.scripts.functions is True
        ran = command_calls(server)
    library = _scripts.queue_library()
    assert libraries(server) == [library.name]
    assert library.name.startswith("tta_queue_")
    assert ran["fcall"] == 6  # enqueue, reserve, settle (the nack), reserve, ack, stats
    assert ran.get("evalsha", 0) == 0
    assert ran["function|load"] == 1


async def test_functions_off_runs_the_scripts_by_sha(
    private_server: str, server: sync_redis.Redis
) -> None:
    async with connect(
        f"{private_server}?functions=0", namespace=f"t{uuid.uuid4().hex[:12]}"
    ) as backend:
        assert isinstance(backend, RedisBackend)
        await cycle(backend)
        await backend.drop_namespace()
    assert libraries(server) == []
    ran = command_calls(server)
    assert ran.get("fcall", 0) == 0
    assert ran["evalsha"] >= 6


@pytest.mark.parametrize("value", ["yes", "2", ""])
def test_a_bad_functions_option_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="functions"):
        connect(f"redis://127.0.0.1:1/0?functions={value}")


async def test_a_server_that_lost_the_library_gets_it_again_in_the_same_call(
    private_server: str, server: sync_redis.Redis
) -> None:
    async with fresh(private_server) as backend:
        await backend.queue.enqueue(message())
        server.function_flush()  # a restart without persistence, a failover, FUNCTION FLUSH
        server.config_resetstat()
        await backend.queue.enqueue(message())
        assert (await backend.queue.stats(QUEUE)).ready == 2
        ran = command_calls(server)
        assert ran["function|load"] == 1
        assert ran["fcall"] == 3  # the enqueue refused, the enqueue again, the stats
        assert backend._connection.scripts.functions is True


@pytest.mark.parametrize(
    ("denied", "loaded"),
    [("function", False), ("fcall", True)],  # may not load it; may load it, not call it
)
async def test_a_user_the_acl_denies_functions_runs_the_scripts_by_sha(
    private_server: str, server: sync_redis.Redis, denied: str, loaded: bool
) -> None:
    user, password = f"no{denied}{uuid.uuid4().hex[:8]}", "pw-acl"
    server.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        commands=["+@all", f"-{denied}"],
    )
    try:
        url = private_server.replace("redis://", f"redis://{user}:{password}@")
        async with fresh(url) as backend:
            await cycle(backend)
            assert backend._connection.scripts.functions is False
        assert libraries(server) == ([_scripts.queue_library().name] if loaded else [])
    finally:
        server.acl_deluser(user)


async def test_out_of_memory_an_enqueue_is_refused_and_consumers_still_drain(
    private_server: str, server: sync_redis.Redis
) -> None:
    async with fresh(private_server) as backend:
        store = backend.queue
        await store.enqueue(message(1))
        await store.enqueue(message(2))
        server.config_set("maxmemory", 1)  # every byte is over: the server is out of memory
        try:
            with pytest.raises(BackendError, match="maxmemory"):
                await store.enqueue(message(3))
            deliveries = await store.reserve(QUEUE, visibility_timeout=10, max_messages=5)
            assert [d.message.payload for d in deliveries] == [{"i": 1}, {"i": 2}]
            assert await store.ack_many([d.receipt for d in deliveries]) == [True, True]
            assert (await store.stats(QUEUE)).live == 0
        finally:
            server.config_set("maxmemory", 0)


def test_the_library_is_one_text_with_one_function_per_queue_script() -> None:
    library = _scripts.queue_library()
    assert library.text.startswith(f"#!lua name={library.name}\n")
    for name in _scripts.LIBRARY_SCRIPTS:
        assert f"function_name = '{library.name}_{name}'" in library.text
        assert library.heads[name].endswith(f"{library.name}_{name}\r\n".encode())
    assert library.text.count("local function bind(") == 1  # the helpers, once
    other = _scripts.Library(("enqueue", "ack"))
    assert other.name != library.name  # another text: another name, side by side


def test_a_script_without_the_queue_helpers_cannot_join_the_library() -> None:
    with pytest.raises(ValueError, match="does not include _queue"):
        _scripts.Library(("now",))
