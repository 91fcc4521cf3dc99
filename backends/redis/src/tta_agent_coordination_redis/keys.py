"""Key names: every key starts with the namespace and carries the layout version.

A key looks like ``{namespace}:tta1:{{tag}}:{name}``:

* ``namespace`` first, so two applications sharing one Redis never see each other's keys and
  ``drop_namespace`` stays inside its own prefix;
* ``tta1``, the layout version, second: the original coordination code wrote
  ``{prefix}:queue:...``, ``{prefix}:sched:...``, ``{prefix}:agents:...``, ``{prefix}:cb:...``
  (see ``docs/redis-layout.md``), so no key of ours can ever equal one of its keys, even under
  the same prefix; a future layout ``tta2`` can live beside this one during a migration;
* one hash tag: ``{namespace}`` for the namespace-wide structures (queue index, registry,
  breakers, events, clock offset), ``{namespace/queue}`` for the keys of one queue, so every
  queue operation is one script on one Redis Cluster slot.

Identities match ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``, so neither ``{``, ``}`` nor ``/`` can
appear inside a tag: the two kinds of tag can never be equal.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LAYOUT_VERSION", "QUEUE_KEY_NAMES", "Keys"]

#: The layout version every key carries.
LAYOUT_VERSION: Final = "tta1"

#: The per-queue keys, in the order the queue scripts take them (after the three namespace
#: keys ``clock``, ``queues`` and ``idle``). ``docs/redis-layout.md`` explains each one.
QUEUE_KEY_NAMES: Final = (
    "info",  # HASH: seq, dseq, idle_ttl, idle_until, gates md, pn, wt
    "meta",  # HASH: entry id -> entry state (JSON)
    "body",  # HASH: entry id -> message JSON, stored once
    "ready",  # ZSET: ordering member -> priority and due time
    "delayed",  # ZSET: entry id -> due time
    "reserved",  # ZSET: entry id -> reservation deadline
    "expiry",  # ZSET: entry id -> ttl deadline (entries not reserved)
    "dead",  # ZSET: entry id -> dead-letter sequence
    "deadinfo",  # HASH: entry id -> reason, error, attempts, time (JSON)
    "settled",  # ZSET: entry id -> end of its retention (acked, purged)
    "acks",  # HASH: entry id -> token of the receipt that acked it
    "dedup",  # HASH: dedup key -> entry id
    "dedupx",  # ZSET: dedup key -> end of its window (settled holders only)
    "wake",  # LIST: wake-up tokens a waiting consumer pops
    "waiters",  # ZSET: "token|visibility ms" of a waiting consumer -> end of its wait
)


class Keys:
    """Builds every key of one namespace.

    Args:
        namespace: The backend's namespace (already validated by ``BackendOptions``).
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.prefix = f"{namespace}:{LAYOUT_VERSION}:"
        self.namespace_tag = f"{{{namespace}}}"

    def ns(self, name: str) -> str:
        """A namespace-wide key (the namespace's hash tag), e.g. ``ns("queues")``."""
        return f"{self.prefix}{self.namespace_tag}:{name}"

    def queue_tag(self, queue: str) -> str:
        """The hash tag shared by every key of ``queue`` (``str(AgentId)``)."""
        return f"{{{self.namespace}/{queue}}}"

    def queue(self, queue: str, name: str) -> str:
        """One key of ``queue`` (``str(AgentId)``), e.g. ``queue("a:b", "ready")``."""
        return f"{self.prefix}{self.queue_tag(queue)}:{name}"

    def queue_keys(self, queue: str) -> list[str]:
        """Every key of ``queue``, in :data:`QUEUE_KEY_NAMES` order."""
        return [self.queue(queue, name) for name in QUEUE_KEY_NAMES]

    @property
    def clock(self) -> str:
        """The clock offset (milliseconds added to the server's ``TIME``; tests only)."""
        return self.ns("clock")

    @property
    def queues(self) -> str:
        """The queue index: a sorted set of queue names (score 0, ordered by name)."""
        return self.ns("queues")

    @property
    def idle(self) -> str:
        """Queues with an idle ttl: a sorted set of queue names by the time they lapse."""
        return self.ns("idle")
