"""The floors: redis-py (with hiredis) straight onto Redis, no framework in between.

* ``seq``: ``LPUSH`` one message at a time, then ``RPOP`` one at a time (not reliable: a
  consumer that dies after ``RPOP`` loses the message);
* ``pipe``: the same in pipelines of 100 commands;
* ``lua``: the minimal reliable queue, one script per step: enqueue (``ZADD`` ready +
  ``HSET`` body), reserve (``ZPOPMIN`` ready, ``ZADD`` in-flight with the deadline, ``HGET``
  body) and ack (``ZREM`` in-flight, ``HDEL`` body): three round trips and ten commands per
  message, the ``EVALSHA`` calls included.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from ._measure import Counters, payload

BATCH = 100
LIST = "floor:list"
READY, BODY, INFLIGHT = "floor:{q}:ready", "floor:{q}:body", "floor:{q}:inflight"

ENQUEUE_LUA = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
RESERVE_LUA = """
local top = redis.call('ZPOPMIN', KEYS[1])
if #top == 0 then return false end
redis.call('ZADD', KEYS[3], ARGV[1], top[1])
return {top[1], redis.call('HGET', KEYS[2], top[1])}
"""
ACK_LUA = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


class LuaFloor:
    """The minimal reliable queue in Lua (scripts loaded once, run by SHA)."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.seq = 0
        self.shas: dict[str, str] = {}

    async def load(self) -> None:
        for name, text in (("enqueue", ENQUEUE_LUA), ("reserve", RESERVE_LUA), ("ack", ACK_LUA)):
            self.shas[name] = await self.client.script_load(text)

    async def enqueue(self, body: dict[str, Any]) -> str:
        self.seq += 1
        ident = uuid.uuid4().hex
        await self.client.evalsha(
            self.shas["enqueue"], 2, READY, BODY, self.seq, ident, json.dumps(body)
        )
        return ident

    async def reserve(self) -> tuple[str, dict[str, Any]] | None:
        deadline = int((time.time() + 30) * 1000)
        reply: Any = await self.client.evalsha(
            self.shas["reserve"], 3, READY, BODY, INFLIGHT, deadline
        )
        if reply is None:
            return None
        return reply[0].decode(), json.loads(reply[1])

    async def ack(self, ident: str) -> bool:
        return int(await self.client.evalsha(self.shas["ack"], 2, INFLIGHT, BODY, ident)) == 1


async def seq(client: Redis, n: int) -> dict[str, float]:
    """Sequential LPUSH, then sequential RPOP."""
    start = time.perf_counter()
    for i in range(n):
        await client.lpush(LIST, json.dumps(payload(i)))
    enqueued = time.perf_counter()
    for _ in range(n):
        raw: Any = await client.rpop(LIST)
        json.loads(raw)
    drained = time.perf_counter()
    return {"enqueue": n / (enqueued - start), "drain": n / (drained - enqueued)}


async def pipe(client: Redis, n: int) -> dict[str, float]:
    """LPUSH and RPOP in pipelines of 100."""
    start = time.perf_counter()
    for first in range(0, n, BATCH):
        async with client.pipeline(transaction=False) as p:
            for i in range(first, min(n, first + BATCH)):
                p.lpush(LIST, json.dumps(payload(i)))
            await p.execute()
    enqueued = time.perf_counter()
    for first in range(0, n, BATCH):
        async with client.pipeline(transaction=False) as p:
            for _ in range(first, min(n, first + BATCH)):
                p.rpop(LIST)
            for raw in await p.execute():
                json.loads(raw)
    drained = time.perf_counter()
    return {"enqueue": n / (enqueued - start), "drain": n / (drained - enqueued)}


async def lua(client: Redis, n: int) -> dict[str, float]:
    """The reliable Lua floor: enqueue one at a time, then reserve + ack one at a time."""
    floor = LuaFloor(client)
    await floor.load()
    counters = Counters(client)
    await counters.start()
    start = time.perf_counter()
    for i in range(n):
        await floor.enqueue(payload(i))
    enqueued = time.perf_counter()
    for _ in range(n):
        got = await floor.reserve()
        assert got is not None
        await floor.ack(got[0])
    drained = time.perf_counter()
    trips, calls = await counters.stop()
    assert await client.zcard(READY) == 0
    return {
        "enqueue": n / (enqueued - start),
        "reserve_ack": n / (drained - enqueued),
        "round_trips": trips / n,
        "commands": calls / n,
        **counters.cpu(n),
    }
