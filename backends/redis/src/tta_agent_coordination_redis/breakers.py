"""The Redis breaker store: circuit-breaker state shared by every process of a namespace.

Every operation is one Lua script (``scripts/breaker_*.lua``, sharing ``breaker_lib``), so
every transition is atomic across processes and costs one round trip. The configuration
travels with each call (decision 0001); the store keeps only state. Times are the server's
(``TIME`` inside the script, plus the namespace's clock offset), in microseconds. The keys,
under the namespace's hash tag (one Redis Cluster slot):

=====================  ====  ================================================================
``breaker:<name>``     HASH  state, successes, opened and changed times, the failure times
                             (comma-joined, at most ``failure_threshold``) and one field
                             ``p:<permit>`` -> lease end per half-open probe permit
``breakers``           SET   every breaker name used (``acquire``, ``record_*``, ``reset``)
=====================  ====  ================================================================

Half-open probe permits are fields of the breaker's hash with the end of their lease: a
script counts only the leases that have not ended, so a crashed probe frees its slot after
``probe_timeout`` and its late outcome is ignored; every transition deletes them all, so a
permit of an earlier period never counts. Two processes therefore always agree, and at most
``half_open_max_calls`` permits are out at any moment across all of them.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from tta_agent_coordination._validation import require_name
from tta_agent_coordination.models import (
    BreakerDecision,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    BreakerUpdate,
    CircuitBreakerConfig,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tta_agent_coordination.settings import BackendOptions

    from ._scripts import Packed
    from .backend import Connection

__all__ = ["RedisBreakerStore"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_STATES: Final = {state.value: state for state in BreakerState}
#: Breakers (name and configuration) whose keys and leading arguments are kept packed.
_MAX_HEADS: Final = 256
#: The configuration arguments of ``reset``, which needs none.
_NO_CONFIG: Final = ["1", "", "1", "1", "1", "1"]

#: A breaker script's answer: allowed, the permit granted, the snapshot, the transition.
_Answer = tuple[bool, str | None, BreakerSnapshot, BreakerTransition | None]


def _text(value: bytes | str) -> str:
    """A reply as text (redis-py answers bytes, or str from a client that decodes)."""
    return value.decode() if isinstance(value, bytes) else value


def _dt(microseconds: bytes | str) -> datetime | None:
    return _EPOCH + timedelta(microseconds=int(microseconds)) if microseconds else None


def _us(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))


def _config_args(config: CircuitBreakerConfig) -> list[int | str]:
    return [
        config.failure_threshold,
        "" if config.window is None else _us(config.window),
        _us(config.recovery_timeout),
        config.half_open_max_calls,
        config.success_threshold,
        _us(config.probe_timeout),
    ]


def _parse(name: str, reply: Sequence[bytes | str]) -> _Answer:
    """(allowed, permit, snapshot, transition) from a breaker script's answer.

    The models are built without validation (``model_construct``): every field comes from
    our own script in the types the models hold, and the name was validated before the call.
    """
    allowed, permit, state, failures, successes, permits, opened, changed, retry_after = reply[:9]
    from_state, to_state, at = reply[9:12]
    snapshot = BreakerSnapshot.model_construct(
        name=name,
        state=_STATES[_text(state)],
        failures=int(failures),
        successes=int(successes),
        permits_in_use=int(permits),
        opened_at=_dt(opened),
        changed_at=_dt(changed),
        retry_after=int(retry_after) / 1_000_000 if retry_after else None,
    )
    transition = None
    if from_state:
        moved_at = _dt(at)
        assert moved_at is not None  # noqa: S101  # the scripts set it with every transition
        transition = BreakerTransition.model_construct(
            name=name,
            from_state=_STATES[_text(from_state)],
            to_state=_STATES[_text(to_state)],
            at=moved_at,
        )
    return _text(allowed) == "1", _text(permit) or None, snapshot, transition


class RedisBreakerStore:
    """The breaker store on Redis (the ``BreakerStore`` protocol).

    Args:
        connection: The backend's shared internals (client, keys, scripts, error boundary).
        options: The backend's options.
    """

    def __init__(self, connection: Connection, options: BackendOptions) -> None:
        self._connection = connection
        self._options = options
        keys = connection.keys
        self._names_key = keys.ns("breakers")
        self._prefix = keys.ns("breaker:")
        # Per breaker name and configuration: the keys, the leading arguments (name and
        # configuration) and both packed once (a bounded cache, oldest dropped first).
        self._heads: dict[
            tuple[str, CircuitBreakerConfig | None], tuple[list[str], list[Any], Packed]
        ] = {}

    def _head(
        self, name: str, config: CircuitBreakerConfig | None
    ) -> tuple[list[str], list[Any], Packed]:
        head = self._heads.get((name, config))
        if head is None:
            require_name(name, "breaker name")
            keys = [self._connection.keys.clock, self._prefix + name, self._names_key]
            fixed: list[Any] = [name, *(_NO_CONFIG if config is None else _config_args(config))]
            head = (keys, fixed, self._connection.pack(keys, fixed))
            if len(self._heads) >= _MAX_HEADS:
                del self._heads[next(iter(self._heads))]
            self._heads[(name, config)] = head
        return head

    async def _run(
        self, script: str, name: str, config: CircuitBreakerConfig | None, *args: str
    ) -> _Answer:
        keys, fixed, packed = self._head(name, config)
        reply = await self._connection.run_script(
            f"breaker_{script}", keys, [*fixed, *args], packed=packed
        )
        return _parse(name, reply)

    async def acquire(self, name: str, config: CircuitBreakerConfig) -> BreakerDecision:
        """May a call proceed? Moves open to half-open once ``recovery_timeout`` has passed.

        Closed: allowed without a permit. Open: refused with ``retry_after`` until the recovery
        timeout ends; then the first caller moves it to half-open and gets a permit. Half-open:
        a permit (a lease of ``probe_timeout`` seconds) while fewer than
        ``half_open_max_calls`` are outstanding across all processes, else refused with
        ``retry_after=0``.

        Raises:
            ValidationError: An invalid breaker name.
        """
        allowed, permit, snapshot, transition = await self._run(
            "acquire", name, config, secrets.token_hex(16)
        )
        return BreakerDecision.model_construct(
            allowed=allowed, permit=permit, snapshot=snapshot, transition=transition
        )

    async def record_success(
        self, name: str, config: CircuitBreakerConfig, permit: str | None = None
    ) -> BreakerUpdate:
        """Record a successful call: a probe's (with its permit) or a closed call's (without).

        Raises:
            ValidationError: An invalid breaker name.
        """
        _, _, snapshot, transition = await self._run(
            "record", name, config, "success", permit or ""
        )
        return BreakerUpdate.model_construct(snapshot=snapshot, transition=transition)

    async def record_failure(
        self, name: str, config: CircuitBreakerConfig, permit: str | None = None
    ) -> BreakerUpdate:
        """Record a failed call: ``failure_threshold`` failures open it, a probe's re-opens it.

        Raises:
            ValidationError: An invalid breaker name.
        """
        _, _, snapshot, transition = await self._run(
            "record", name, config, "failure", permit or ""
        )
        return BreakerUpdate.model_construct(snapshot=snapshot, transition=transition)

    async def snapshot(self, name: str, config: CircuitBreakerConfig) -> BreakerSnapshot:
        """The current state; closed with zeros for a name never used (not added to the index).

        Raises:
            ValidationError: An invalid breaker name.
        """
        return (await self._run("snapshot", name, config))[2]

    async def reset(self, name: str) -> BreakerUpdate:
        """Close the breaker from any state and forget its failures.

        Raises:
            ValidationError: An invalid breaker name.
        """
        _, _, snapshot, transition = await self._run("reset", name, None)
        return BreakerUpdate.model_construct(snapshot=snapshot, transition=transition)

    async def breakers(self) -> list[str]:
        """Every breaker name used in this namespace, from the index, sorted."""
        names_key = self._names_key

        async def members(client: Redis) -> set[bytes | str]:
            return await client.smembers(names_key)

        names: set[bytes | str] = await self._connection.call(members, what="list breakers")
        return sorted(_text(name) for name in names)

    async def drop(self) -> None:
        """Delete every breaker of the namespace, found from the index (``drop_namespace``)."""
        await self._connection.run_script("breaker_drop", [self._names_key], [self._prefix])
