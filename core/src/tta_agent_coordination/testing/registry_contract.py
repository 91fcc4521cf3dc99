"""The registry contract: what every driver's ``RegistryStore`` promises.

Subclass :class:`RegistryContract` and set ``url`` to run it against a backend::

    class TestAcmeRegistry(RegistryContract):
        url = "acme://localhost"

Tests of time take the ``timeline`` fixture (:class:`~.base.Timeline`): ttls go through
``timeline.d()`` and time passes with ``timeline.advance()`` (the backend's clock with
``clock_control``, scaled real time without). A ttl of 10 is checked at least 2 after it or 8
before it, so order and counts are asserted, never latency. Tests that need two clients of one
store connect a second backend to the same URL and namespace (:func:`two_clients`); a private
``memory://`` store is given a name for them.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tta_agent_coordination.errors import (
    AgentConflictError,
    AgentNotFoundError,
    EventsGapError,
    ValidationError,
)
from tta_agent_coordination.models import (
    AgentId,
    Capability,
    CapabilityQuery,
    RegistryEvent,
    RegistryEventKind,
)
from tta_agent_coordination.plugins import connect
from tta_agent_coordination.protocols import Backend, RegistryStore

from .base import BackendTestBase, Timeline

__all__ = ["RegistryContract", "fresh_backend", "two_clients"]

REGISTERED = RegistryEventKind.REGISTERED
DEREGISTERED = RegistryEventKind.DEREGISTERED
EXPIRED = RegistryEventKind.EXPIRED
UPDATED = RegistryEventKind.UPDATED

ALPHA = AgentId("worker", "alpha")
BETA = AgentId("worker", "beta")
GAMMA = AgentId("critic", "gamma")

#: Bounds every wait of a test in real seconds: a hang fails instead of blocking the run.
DEADLINE = 10.0


def _shareable(url: str) -> str:
    """``url``, with a private ``memory://`` store given a name so two clients share it."""
    parts = urlsplit(url)
    if parts.scheme == "memory" and not parts.netloc:
        return urlunsplit(parts._replace(netloc=f"shared-{uuid.uuid4().hex[:12]}"))
    return url


@asynccontextmanager
async def fresh_backend(url: str, **options: Any) -> AsyncGenerator[Backend, None]:
    """A backend for ``url`` in a namespace of its own, with ``options``; dropped afterwards."""
    namespace = f"t{uuid.uuid4().hex[:16]}"
    async with connect(url, namespace=namespace, **options) as backend:
        try:
            yield backend
        finally:
            await backend.drop_namespace()


@asynccontextmanager
async def two_clients(url: str, **options: Any) -> AsyncGenerator[tuple[Backend, Backend], None]:
    """Two backends connected to one store and one fresh namespace, as two processes would be."""
    url = _shareable(url)
    namespace = f"t{uuid.uuid4().hex[:16]}"
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(connect(url, namespace=namespace, **options))
        second = await stack.enter_async_context(connect(url, namespace=namespace, **options))
        stack.push_async_callback(first.drop_namespace)
        yield first, second


async def all_events(store: RegistryStore, after: str = "0") -> list[RegistryEvent]:
    """Every retained event after ``after``, page by page."""
    events: list[RegistryEvent] = []
    cursor = after
    seen: set[str] = set()
    while True:
        page = await store.read_events(after=cursor, limit=2)
        events.extend(page.items)
        assert page.next_cursor is not None
        # A driver whose pages do not advance would loop forever: fail instead.
        assert page.next_cursor not in seen, f"read_events repeats cursor {page.next_cursor!r}"
        seen.add(cursor)
        cursor = page.next_cursor
        if not page.items:
            return events


def kinds(events: list[RegistryEvent], agent_id: AgentId | None = None) -> list[RegistryEventKind]:
    """The kinds of ``events`` (of one agent, if given), in order."""
    return [e.kind for e in events if agent_id is None or e.agent_id == agent_id]


SUMMARISE_1 = Capability("summarise", "1.4", tags={"en", "fast"})
SUMMARISE_2 = Capability("summarise", "2.0", tags={"en"})
TRANSLATE = Capability("translate", "1.0", tags={"fr"})


class RegistryContract(BackendTestBase):
    """The contract of ``RegistryStore``: sessions, liveness by ttl, discovery and events."""

    @pytest.fixture
    def registry(self, backend: Backend) -> RegistryStore:
        """The backend's registry store."""
        return backend.registry

    # -- registration ---------------------------------------------------------------------

    async def test_register_returns_a_token_and_the_agent_is_live(
        self, registry: RegistryStore
    ) -> None:
        """A registered agent is returned by get and list with what it registered."""
        token = await registry.register(
            ALPHA,
            capabilities=[SUMMARISE_1],
            metadata={"zone": "eu", "n": [1, 2]},
            ttl=30,
            load=0.25,
        )
        assert isinstance(token, str)
        assert token
        info = await registry.get(ALPHA)
        assert info is not None
        assert info.agent_id == ALPHA
        assert info.capabilities == (SUMMARISE_1,)
        assert info.metadata == {"zone": "eu", "n": [1, 2]}
        assert info.load == 0.25
        assert info.available is True
        assert info.ttl == 30
        assert info.registered_at <= info.last_heartbeat < info.expires_at
        assert info.registered_at.utcoffset() is not None
        assert [i.agent_id for i in await registry.list()] == [ALPHA]

    async def test_sessions_get_distinct_tokens(self, registry: RegistryStore) -> None:
        """Every registration is a new session with a new token."""
        first = await registry.register(ALPHA)
        second = await registry.register(ALPHA, replace=True)
        other = await registry.register(BETA)
        assert len({first, second, other}) == 3

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"ttl": 0},
            {"ttl": -1.0},
            {"ttl": math.inf},
            {"ttl": math.nan},
            {"load": -0.1},
            {"load": math.nan},
            {"metadata": {"x": object()}},
            {"metadata": {"x": math.nan}},
        ],
    )
    async def test_register_rejects_invalid_input_and_writes_nothing(
        self, registry: RegistryStore, kwargs: dict[str, Any]
    ) -> None:
        """A bad ttl, load or metadata raises ValidationError before any write."""
        cursor = (await registry.read_events()).next_cursor
        with pytest.raises(ValidationError):
            await registry.register(ALPHA, **kwargs)
        assert await registry.get(ALPHA) is None
        assert (await registry.read_events(after=cursor)).items == []

    async def test_metadata_is_copied(self, registry: RegistryStore) -> None:
        """Mutating the caller's metadata or a returned AgentInfo changes nothing stored."""
        metadata: dict[str, Any] = {"tags": ["a"]}
        await registry.register(ALPHA, metadata=metadata)
        metadata["tags"].append("b")
        info = await registry.get(ALPHA)
        assert info is not None
        assert info.metadata == {"tags": ["a"]}
        info.metadata["tags"] = "changed"
        again = await registry.get(ALPHA)
        assert again is not None
        assert again.metadata == {"tags": ["a"]}

    async def test_registering_a_live_id_conflicts(self, registry: RegistryStore) -> None:
        """A live id under another session raises AgentConflictError; the first session stays."""
        token = await registry.register(ALPHA, load=0.1)
        with pytest.raises(AgentConflictError):
            await registry.register(ALPHA, load=0.9)
        info = await registry.heartbeat(ALPHA, token)
        assert info.load == 0.1

    async def test_replace_takes_over_and_the_old_session_conflicts(
        self, registry: RegistryStore
    ) -> None:
        """replace=True starts a new session; the replaced token conflicts and cannot deregister."""
        old = await registry.register(ALPHA, load=0.1)
        new = await registry.register(ALPHA, load=0.2, replace=True)
        with pytest.raises(AgentConflictError):
            await registry.heartbeat(ALPHA, old)
        assert await registry.deregister(ALPHA, old) is False
        info = await registry.heartbeat(ALPHA, new)
        assert info.load == 0.2
        assert [i.load for i in await registry.list()] == [0.2]

    async def test_registration_event_carries_the_agent(self, registry: RegistryStore) -> None:
        """A registered event names the agent and carries the registered snapshot."""
        cursor = (await registry.read_events()).next_cursor
        await registry.register(ALPHA, capabilities=[TRANSLATE], metadata={"k": 1})
        page = await registry.read_events(after=cursor)
        assert [e.kind for e in page.items] == [REGISTERED]
        event = page.items[0]
        assert event.agent_id == ALPHA
        assert event.agent is not None
        assert event.agent.capabilities == (TRANSLATE,)
        assert event.agent.metadata == {"k": 1}
        assert event.at.utcoffset() is not None

    # -- heartbeats and liveness ----------------------------------------------------------

    async def test_heartbeat_of_an_unknown_agent_is_not_found(
        self, registry: RegistryStore
    ) -> None:
        """A heartbeat for an id never registered raises AgentNotFoundError."""
        with pytest.raises(AgentNotFoundError):
            await registry.heartbeat(ALPHA, "no-such-token")

    async def test_heartbeat_after_deregister_is_not_found(self, registry: RegistryStore) -> None:
        """A heartbeat of a deregistered session raises AgentNotFoundError."""
        token = await registry.register(ALPHA)
        assert await registry.deregister(ALPHA, token) is True
        with pytest.raises(AgentNotFoundError):
            await registry.heartbeat(ALPHA, token)

    async def test_heartbeat_with_a_foreign_token_conflicts(self, registry: RegistryStore) -> None:
        """A heartbeat with a token that is not the current session's raises a conflict."""
        await registry.register(ALPHA)
        with pytest.raises(AgentConflictError):
            await registry.heartbeat(ALPHA, uuid.uuid4().hex)

    async def test_heartbeat_updates_load_and_availability(self, registry: RegistryStore) -> None:
        """Load and available change through heartbeats; None keeps the current value."""
        token = await registry.register(ALPHA, capabilities=[SUMMARISE_1], load=0.5)
        info = await registry.heartbeat(ALPHA, token, load=0.75)
        assert (info.load, info.available) == (0.75, True)
        info = await registry.heartbeat(ALPHA, token, available=False)
        assert (info.load, info.available) == (0.75, False)
        assert await registry.discover(CapabilityQuery("summarise")) == []
        assert [i.agent_id for i in await registry.list()] == [ALPHA]
        await registry.heartbeat(ALPHA, token, available=True, load=0.0)
        found = await registry.discover(CapabilityQuery("summarise"))
        assert [(i.agent_id, i.load) for i in found] == [(ALPHA, 0.0)]

    async def test_heartbeat_rejects_a_negative_load(self, registry: RegistryStore) -> None:
        """A negative load raises ValidationError and changes nothing."""
        token = await registry.register(ALPHA, load=0.5)
        with pytest.raises(ValidationError):
            await registry.heartbeat(ALPHA, token, load=-1.0)
        info = await registry.get(ALPHA)
        assert info is not None
        assert info.load == 0.5

    async def test_only_changes_are_update_events(self, registry: RegistryStore) -> None:
        """A heartbeat that changes nothing is no event; a changed load or availability is one."""
        token = await registry.register(ALPHA, load=0.5)
        cursor = (await registry.read_events()).next_cursor
        await registry.heartbeat(ALPHA, token)
        await registry.heartbeat(ALPHA, token, load=0.5, available=True)
        assert (await registry.read_events(after=cursor)).items == []
        await registry.heartbeat(ALPHA, token, load=0.6)
        await registry.heartbeat(ALPHA, token, available=False)
        events = (await registry.read_events(after=cursor)).items
        assert kinds(events) == [UPDATED, UPDATED]
        assert events[0].agent is not None
        assert events[0].agent.load == 0.6
        assert events[1].agent is not None
        assert events[1].agent.available is False

    async def test_liveness_ends_after_the_ttl(
        self, registry: RegistryStore, timeline: Timeline
    ) -> None:
        """An agent not heartbeating within its ttl is absent from get, list and discover."""
        await registry.register(ALPHA, capabilities=[SUMMARISE_1], ttl=timeline.d(10))
        await registry.register(BETA, capabilities=[SUMMARISE_1], ttl=timeline.d(100))
        await timeline.advance(2)
        assert await registry.get(ALPHA) is not None
        await timeline.advance(10)
        assert await registry.get(ALPHA) is None
        assert [i.agent_id for i in await registry.list()] == [BETA]
        assert [i.agent_id for i in await registry.list(capability="summarise")] == [BETA]
        assert [i.agent_id for i in await registry.discover(CapabilityQuery("summarise"))] == [BETA]

    async def test_heartbeats_extend_liveness_by_the_ttl(
        self, registry: RegistryStore, timeline: Timeline
    ) -> None:
        """Each heartbeat keeps the agent live for another ttl from the heartbeat."""
        cursor = (await registry.read_events()).next_cursor
        token = await registry.register(ALPHA, ttl=timeline.d(20))
        for _ in range(3):  # 36 s in all, each heartbeat 12 s after the last
            await timeline.advance(12)
            info = await registry.heartbeat(ALPHA, token)
            assert info.expires_at > info.last_heartbeat
        assert await registry.get(ALPHA) is not None
        assert EXPIRED not in kinds(await all_events(registry, cursor or "0"))
        await timeline.advance(22)
        assert await registry.get(ALPHA) is None

    async def test_heartbeat_after_expiry_re_registers(
        self, registry: RegistryStore, timeline: Timeline
    ) -> None:
        """A heartbeat with the expired session's token re-registers: expired, then registered."""
        cursor = (await registry.read_events()).next_cursor
        token = await registry.register(
            ALPHA, capabilities=[TRANSLATE], ttl=timeline.d(10), metadata={"a": 1}
        )
        await timeline.advance(12)
        info = await registry.heartbeat(ALPHA, token, load=0.3)
        assert info.load == 0.3
        assert info.capabilities == (TRANSLATE,)
        assert info.metadata == {"a": 1}
        live = await registry.get(ALPHA)
        assert live is not None
        assert live.registered_at == info.registered_at
        events = (await registry.read_events(after=cursor)).items
        assert kinds(events) == [REGISTERED, EXPIRED, REGISTERED]
        assert [i.agent_id for i in await registry.discover(CapabilityQuery("translate"))] == [
            ALPHA
        ]
        await registry.heartbeat(ALPHA, token)
        assert await registry.deregister(ALPHA, token) is True

    async def test_register_over_an_expired_session_needs_no_replace(
        self, registry: RegistryStore, timeline: Timeline
    ) -> None:
        """An expired id can be registered again; the expired session then conflicts."""
        old = await registry.register(ALPHA, ttl=timeline.d(10))
        await timeline.advance(12)
        new = await registry.register(ALPHA, ttl=timeline.d(10))
        with pytest.raises(AgentConflictError):
            await registry.heartbeat(ALPHA, old)
        await registry.heartbeat(ALPHA, new)

    async def test_expired_is_emitted_exactly_once(
        self, registry: RegistryStore, timeline: Timeline
    ) -> None:
        """Many operations after expiry emit one expired event; sweep counts it once."""
        cursor = (await registry.read_events()).next_cursor
        await registry.register(ALPHA, ttl=timeline.d(10))
        await timeline.advance(12)
        swept = await registry.sweep()
        swept += await registry.sweep()
        assert swept <= 1
        await registry.get(ALPHA)
        await registry.list()
        await registry.discover(CapabilityQuery("summarise"))
        events = await all_events(registry, cursor or "0")
        assert kinds(events, ALPHA) == [REGISTERED, EXPIRED]

    async def test_expiry_is_detected_by_any_operation(
        self, registry: RegistryStore, timeline: Timeline
    ) -> None:
        """After the ttl, an operation on another agent emits the expired event (no listing)."""
        await registry.register(ALPHA, ttl=timeline.d(10))
        await registry.register(BETA, ttl=timeline.d(100))
        cursor = (await registry.read_events()).next_cursor
        await timeline.advance(12)
        await registry.get(BETA)
        page = await registry.read_events(after=cursor)
        assert kinds(page.items) == [EXPIRED]
        assert page.items[0].agent_id == ALPHA

    async def test_sweep_reports_the_expired_agents(
        self, registry: RegistryStore, timeline: Timeline
    ) -> None:
        """sweep() detects expiries itself and returns how many it found."""
        cursor = (await registry.read_events()).next_cursor
        await registry.register(ALPHA, ttl=timeline.d(10))
        await registry.register(BETA, ttl=timeline.d(10))
        await registry.register(GAMMA, ttl=timeline.d(100))
        await timeline.advance(12)
        await registry.sweep()
        await registry.sweep()
        events = (await registry.read_events(after=cursor)).items
        assert sorted(e.agent_id for e in events if e.kind is EXPIRED) == [ALPHA, BETA]

    async def test_expired_once_across_two_clients(self) -> None:
        """Two clients of one store racing to detect an expiry emit one expired event."""
        async with two_clients(self.target_url) as (first, second):
            timeline = self.timeline_for(first)
            await first.registry.register(ALPHA, ttl=timeline.d(10))
            await second.registry.register(BETA, ttl=timeline.d(10))
            cursor = (await first.registry.read_events()).next_cursor
            await timeline.advance(12)
            async with anyio.create_task_group() as tg:
                for client in (first, second, first, second):
                    tg.start_soon(client.registry.sweep)
                    tg.start_soon(client.registry.list)
                    tg.start_soon(client.registry.get, ALPHA)
            events = await all_events(second.registry, cursor or "0")
            assert sorted(e.agent_id for e in events if e.kind is EXPIRED) == [ALPHA, BETA]
            assert await first.registry.get(ALPHA) is None
            assert await second.registry.get(BETA) is None

    async def test_a_session_is_shared_by_two_clients(self) -> None:
        """Two clients of one store see one session: only one can hold an id."""
        async with two_clients(self.target_url) as (first, second):
            token = await first.registry.register(ALPHA)
            with pytest.raises(AgentConflictError):
                await second.registry.register(ALPHA)
            info = await second.registry.heartbeat(ALPHA, token, load=0.5)
            assert info.load == 0.5
            taken = await second.registry.register(ALPHA, replace=True)
            with pytest.raises(AgentConflictError):
                await first.registry.heartbeat(ALPHA, token)
            assert await first.registry.deregister(ALPHA, taken) is True

    # -- deregistration -------------------------------------------------------------------

    async def test_deregister_ends_the_session(self, registry: RegistryStore) -> None:
        """Deregister returns True once, emits deregistered, and the agent is gone."""
        token = await registry.register(ALPHA, capabilities=[TRANSLATE])
        cursor = (await registry.read_events()).next_cursor
        assert await registry.deregister(ALPHA, "not-the-token") is False
        assert await registry.deregister(ALPHA, token) is True
        assert await registry.deregister(ALPHA, token) is False
        assert await registry.deregister(BETA, token) is False
        assert await registry.get(ALPHA) is None
        assert await registry.list(capability="translate") == []
        events = (await registry.read_events(after=cursor)).items
        assert kinds(events) == [DEREGISTERED]
        await registry.register(ALPHA)

    # -- listing and discovery ------------------------------------------------------------

    async def test_list_filters_by_type_and_capability_sorted_by_id(
        self, registry: RegistryStore
    ) -> None:
        """list() filters by type and capability name and sorts by agent id."""
        await registry.register(BETA, capabilities=[SUMMARISE_1])
        await registry.register(GAMMA, capabilities=[SUMMARISE_2, TRANSLATE])
        await registry.register(ALPHA, capabilities=[TRANSLATE], available=False)
        assert [i.agent_id for i in await registry.list()] == [GAMMA, ALPHA, BETA]
        assert [i.agent_id for i in await registry.list(type="worker")] == [ALPHA, BETA]
        assert [i.agent_id for i in await registry.list(capability="translate")] == [GAMMA, ALPHA]
        assert [i.agent_id for i in await registry.list(type="worker", capability="summarise")] == [
            BETA
        ]
        assert await registry.list(type="nobody") == []
        assert await registry.list(capability="nothing") == []

    async def test_discover_matches_versions_tags_and_load(self, registry: RegistryStore) -> None:
        """discover() honours the version range, the tags and max_load."""
        await registry.register(ALPHA, capabilities=[SUMMARISE_1], load=0.5)
        await registry.register(BETA, capabilities=[SUMMARISE_2], load=0.1)
        await registry.register(GAMMA, capabilities=[TRANSLATE], load=0.0)

        async def ids(query: CapabilityQuery) -> list[AgentId]:
            return [i.agent_id for i in await registry.discover(query)]

        assert await ids(CapabilityQuery("summarise")) == [BETA, ALPHA]
        assert await ids(CapabilityQuery("summarise", ">=1.2,<2")) == [ALPHA]
        assert await ids(CapabilityQuery("summarise", ">=2")) == [BETA]
        assert await ids(CapabilityQuery("summarise", ">=3")) == []
        assert await ids(CapabilityQuery("summarise", tags={"fast"})) == [ALPHA]
        assert await ids(CapabilityQuery("summarise", tags={"en"})) == [BETA, ALPHA]
        assert await ids(CapabilityQuery("summarise", tags={"en", "de"})) == []
        assert await ids(CapabilityQuery("summarise", max_load=0.4)) == [BETA]
        assert await ids(CapabilityQuery("summarise", max_load=0.5)) == [BETA, ALPHA]
        assert await ids(CapabilityQuery("translate", "==1.0", tags=["fr"])) == [GAMMA]
        assert await ids(CapabilityQuery("nothing")) == []

    async def test_discover_orders_by_load_then_id_and_limits(
        self, registry: RegistryStore
    ) -> None:
        """Least loaded first, ties by agent id; limit bounds the answer."""
        agents = [AgentId("w", f"i{n}") for n in range(6)]
        loads = [0.5, 0.2, 0.5, 0.0, 0.2, 0.9]
        for agent_id, load in zip(reversed(agents), reversed(loads), strict=True):
            await registry.register(agent_id, capabilities=[SUMMARISE_1], load=load)
        found = await registry.discover(CapabilityQuery("summarise"))
        expected = sorted(zip(loads, agents, strict=True))
        assert [(i.load, i.agent_id) for i in found] == expected
        limited = await registry.discover(CapabilityQuery("summarise"), limit=2)
        assert [(i.load, i.agent_id) for i in limited] == expected[:2]
        with pytest.raises(ValidationError):
            await registry.discover(CapabilityQuery("summarise"), limit=0)

    async def test_discover_skips_unavailable_agents(self, registry: RegistryStore) -> None:
        """An unavailable agent is live but never discovered."""
        await registry.register(ALPHA, capabilities=[SUMMARISE_1], available=False)
        assert await registry.discover(CapabilityQuery("summarise")) == []
        assert await registry.get(ALPHA) is not None

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        agents=st.lists(
            st.tuples(
                st.sampled_from(["1.0", "1.5", "2.0", "2.1rc1", "3"]),
                st.frozensets(st.sampled_from(["a", "b", "c"])),
                st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                st.booleans(),
                st.booleans(),
            ),
            max_size=8,
        ),
        queries=st.lists(
            st.tuples(
                st.sampled_from([None, ">=1.5", "<2", ">=1,<3", "==2.*"]),
                st.frozensets(st.sampled_from(["a", "b", "c"]), max_size=2),
                st.sampled_from([None, 0.25, 0.5]),
                st.sampled_from([None, 1, 3]),
            ),
            min_size=1,
            max_size=4,
        ),
    )
    async def test_discover_equals_a_brute_force_filter(
        self,
        agents: list[tuple[str, frozenset[str], float, bool, bool]],
        queries: list[tuple[str | None, frozenset[str], float | None, int | None]],
    ) -> None:
        """discover() is the brute-force filter and sort over every live agent."""
        async with fresh_backend(self.target_url) as backend:
            store = backend.registry
            for n, (version, tags, load, available, named) in enumerate(agents):
                name = "summarise" if named else "other"
                await store.register(
                    AgentId("w", f"a{n}"),
                    capabilities=[Capability(name, version, tags=tags)],
                    load=load,
                    available=available,
                )
            infos = await store.list()
            for spec, wanted, max_load, limit in queries:
                query = CapabilityQuery("summarise", spec, tags=wanted, max_load=max_load)
                expected = sorted(
                    (i for i in infos if i.holds(query)), key=lambda i: (i.load, i.agent_id)
                )
                if limit is not None:
                    expected = expected[:limit]
                found = await store.discover(query, limit=limit)
                assert [i.agent_id for i in found] == [i.agent_id for i in expected]

    # -- events ---------------------------------------------------------------------------

    async def test_events_after_none_are_only_new_ones(self, registry: RegistryStore) -> None:
        """after=None returns nothing old, and a cursor at the head."""
        await registry.register(ALPHA)
        page = await registry.read_events()
        assert page.items == []
        assert page.next_cursor is not None
        await registry.register(BETA)
        page = await registry.read_events(after=page.next_cursor)
        assert [(e.kind, e.agent_id) for e in page.items] == [(REGISTERED, BETA)]

    async def test_events_from_zero_start_at_the_oldest(self, registry: RegistryStore) -> None:
        """after="0" reads from the oldest retained event, in order."""
        token = await registry.register(ALPHA)
        await registry.heartbeat(ALPHA, token, load=1.0)
        await registry.deregister(ALPHA, token)
        events = await all_events(registry)
        assert [(e.kind, e.agent_id) for e in events] == [
            (REGISTERED, ALPHA),
            (UPDATED, ALPHA),
            (DEREGISTERED, ALPHA),
        ]
        assert len({e.cursor for e in events}) == 3

    async def test_events_resume_without_loss_or_repetition(self, registry: RegistryStore) -> None:
        """Paging by next_cursor sees every event once, in order, across new writes."""
        start = (await registry.read_events()).next_cursor
        assert start is not None
        seen: list[RegistryEvent] = []
        cursor = start
        tokens: dict[AgentId, str] = {}
        for n in range(5):
            agent_id = AgentId("w", f"i{n}")
            tokens[agent_id] = await registry.register(agent_id)
            page = await registry.read_events(after=cursor, limit=2)
            seen.extend(page.items)
            assert page.next_cursor is not None
            cursor = page.next_cursor
        for agent_id, token in tokens.items():
            await registry.deregister(agent_id, token)
        seen.extend(await all_events(registry, cursor))
        assert [(e.kind, e.agent_id) for e in seen] == [
            (REGISTERED, AgentId("w", f"i{n}")) for n in range(5)
        ] + [(DEREGISTERED, AgentId("w", f"i{n}")) for n in range(5)]
        assert seen == await all_events(registry, start)
        empty = await registry.read_events(after=seen[-1].cursor)
        assert empty.items == []
        assert empty.next_cursor is not None
        assert (await registry.read_events(after=empty.next_cursor)).items == []

    async def test_events_cursor_of_an_event_resumes_after_it(
        self, registry: RegistryStore
    ) -> None:
        """Each event's own cursor resumes right after that event."""
        for agent_id in (ALPHA, BETA, GAMMA):
            await registry.register(agent_id)
        events = await all_events(registry)
        for n, event in enumerate(events):
            page = await registry.read_events(after=event.cursor, limit=100)
            assert page.items == events[n + 1 :]

    @pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "", "1\n", " 1"])
    async def test_malformed_cursor_is_a_validation_error(
        self, registry: RegistryStore, cursor: str
    ) -> None:
        """A cursor no store could have returned raises ValidationError."""
        with pytest.raises(ValidationError):
            await registry.read_events(after=cursor)

    @pytest.mark.parametrize("limit", [0, -1, 1001])
    async def test_events_limit_is_validated(self, registry: RegistryStore, limit: int) -> None:
        """Limit runs from 1 to 1000."""
        with pytest.raises(ValidationError):
            await registry.read_events(limit=limit)

    async def test_trimmed_cursor_raises_events_gap(self) -> None:
        """A cursor whose following events were trimmed raises EventsGapError."""
        async with fresh_backend(self.target_url, events_max_length=3) as backend:
            store = backend.registry
            for n in range(6):
                await store.register(AgentId("w", f"i{n}"))
            events = await all_events(store)
            assert [e.agent_id.instance for e in events] == ["i3", "i4", "i5"]
            with pytest.raises(EventsGapError):
                await store.read_events(after=str(int(events[0].cursor) - 2))
            page = await store.read_events(after=str(int(events[0].cursor) - 1))
            assert page.items == events

    async def test_stale_cursor_kept_by_a_slow_reader_gaps(self) -> None:
        """A reader that falls more than events_max_length behind gets EventsGapError."""
        async with fresh_backend(self.target_url, events_max_length=2) as backend:
            store = backend.registry
            cursor = (await store.read_events()).next_cursor
            for n in range(4):
                await store.register(AgentId("w", f"i{n}"))
            with pytest.raises(EventsGapError):
                await store.read_events(after=cursor)

    async def test_wait_is_woken_by_a_register(self, registry: RegistryStore) -> None:
        """A waiting reader returns as soon as an event arrives, long before its wait ends."""
        cursor = (await registry.read_events()).next_cursor
        pages: list[list[RegistryEvent]] = []

        async def reader() -> None:
            page = await registry.read_events(after=cursor, wait=60)
            pages.append(page.items)

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.lowlevel.checkpoint()
                await registry.register(ALPHA)
        assert [[(e.kind, e.agent_id) for e in items] for items in pages] == [[(REGISTERED, ALPHA)]]

    async def test_wait_returns_empty_when_nothing_happens(self, registry: RegistryStore) -> None:
        """A wait with no event returns an empty page, with the cursor it was given."""
        cursor = (await registry.read_events()).next_cursor
        with anyio.fail_after(DEADLINE):
            page = await registry.read_events(after=cursor, wait=0.05)
        assert page.items == []
        assert page.next_cursor == cursor

    async def test_wait_sees_an_expiry_detected_meanwhile(
        self, registry: RegistryStore, timeline: Timeline
    ) -> None:
        """A waiting reader is woken by the expired event of an agent past its ttl."""
        await registry.register(ALPHA, ttl=timeline.d(10))
        cursor = (await registry.read_events()).next_cursor
        pages: list[list[RegistryEvent]] = []

        async def reader() -> None:
            page = await registry.read_events(after=cursor, wait=60)
            pages.append(page.items)

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.lowlevel.checkpoint()
                await timeline.advance(12)
                await registry.sweep()
        assert [[(e.kind, e.agent_id) for e in items] for items in pages] == [[(EXPIRED, ALPHA)]]

    async def test_wait_across_two_clients(self) -> None:
        """A reader waiting on one client is woken by a register through another."""
        async with two_clients(self.target_url) as (first, second):
            cursor = (await first.registry.read_events()).next_cursor
            got: list[RegistryEvent] = []

            async def reader() -> None:
                got.extend((await first.registry.read_events(after=cursor, wait=60)).items)

            with anyio.fail_after(DEADLINE):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(reader)
                    await anyio.lowlevel.checkpoint()
                    await second.registry.register(ALPHA)
            assert [(e.kind, e.agent_id) for e in got] == [(REGISTERED, ALPHA)]
