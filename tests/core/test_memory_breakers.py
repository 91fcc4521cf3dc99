"""The breaker contract against the memory driver, plus what only the memory driver has."""

from __future__ import annotations

from tta_agent_coordination.testing.breaker_contract import BreakerContract


class TestMemoryBreakers(BreakerContract):
    url = "memory://"
