"""The floors: redis-py (with hiredis) straight onto Redis, no framework in between.

* ``seq``: ``LPUSH`` one message at a time, then ``RPOP`` one at a time (not reliable: a
  consumer that dies after ``RPOP`` loses the message);
* ``pipe``: the same in pipelines of 100 commands;
* ``lua``: the minimal reliable queue, one script per step: enqueue (``ZADD`` ready +
  ``HSET`` body), reserve (``ZPOPMIN`` ready, ``ZADD`` in-flight with the deadline, ``HGET``
  body) and ack (``ZREM`` in-flight, ``HDEL`` body): three round trips and ten commands per
  message, the ``EVALSHA`` calls included;
* ``lua_batch``: the same reliable queue a batch of 100 at a time, one script per step and
  one variadic command per structure: enqueue (``ZADD`` ready, ``HSET`` bodies), reserve
  (``ZPOPMIN`` 100, ``ZADD`` in-flight, ``HMGET`` bodies), ack (``ZREM`` in-flight, ``HDEL``
  bodies). Not a target of issue 9 (its batch targets are against ``pipe``): the reference
  for what a reliable queue's batches cost on this server, printed beside them.
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


READY_B, BODY_B, INFLIGHT_B = "floor:{qb}:ready", "floor:{qb}:body", "floor:{qb}:inflight"
ENQUEUE_BATCH_LUA = """
local scores, bodies = {}, {}
for i = 1, #ARGV, 3 do
  scores[#scores + 1] = ARGV[i]
  scores[#scores + 1] = ARGV[i + 1]
  bodies[#bodies + 1] = ARGV[i + 1]
  bodies[#bodies + 1] = ARGV[i + 2]
end
redis.call('ZADD', KEYS[1], unpack(scores))
redis.call('HSET', KEYS[2], unpack(bodies))
return #ARGV / 3
"""
RESERVE_BATCH_LUA = """
local top = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
if #top == 0 then return {} end
local inflight, ids = {}, {}
for i = 1, #top, 2 do
  inflight[#inflight + 1] = ARGV[1]
  inflight[#inflight + 1] = top[i]
  ids[#ids + 1] = top[i]
end
redis.call('ZADD', KEYS[3], unpack(inflight))
local bodies = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = bodies[i]
end
return out
"""
ACK_BATCH_LUA = """
local acked = redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
return acked
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
    figures = await counters.cycle(n, start, enqueued, time.perf_counter())
    assert await client.zcard(READY) == 0
    return figures


async def lua_batch(client: Redis, n: int) -> dict[str, float]:
    """The reliable Lua floor in batches of 100: enqueue, then reserve + ack, a batch a script."""
    shas = [
        await client.script_load(text)
        for text in (ENQUEUE_BATCH_LUA, RESERVE_BATCH_LUA, ACK_BATCH_LUA)
    ]
    counters = Counters(client)
    await counters.start()
    start = time.perf_counter()
    for first in range(0, n, BATCH):
        args: list[Any] = []
        for i in range(first, min(n, first + BATCH)):
            args += (i, uuid.uuid4().hex, json.dumps(payload(i)))
        await client.evalsha(shas[0], 2, READY_B, BODY_B, *args)
    enqueued = time.perf_counter()
    left = n
    while left:
        deadline = int((time.time() + 30) * 1000)
        reply: Any = await client.evalsha(shas[1], 3, READY_B, BODY_B, INFLIGHT_B, deadline, BATCH)
        ids = reply[0::2]
        for raw in reply[1::2]:
            json.loads(raw)
        assert ids
        await client.evalsha(shas[2], 2, INFLIGHT_B, BODY_B, *ids)
        left -= len(ids)
    figures = await counters.cycle(n, start, enqueued, time.perf_counter())
    assert await client.zcard(READY_B) == 0
    return figures
