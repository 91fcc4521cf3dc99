"""The memory driver's queue store: the queue contract, plus memory-specific tests."""

from __future__ import annotations

from typing import ClassVar

from tta_agent_coordination.testing.queue_contract import QueueContract


class TestMemoryQueue(QueueContract):
    url: ClassVar[str] = "memory://"
    shared_url: ClassVar[str | None] = "memory://queue-contract"


class TestMemoryQueueManualClock(QueueContract):
    url: ClassVar[str] = "memory://?clock=manual"
    shared_url: ClassVar[str | None] = "memory://queue-contract-manual"
