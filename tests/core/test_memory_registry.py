"""The registry contract against the memory driver, plus what only the memory driver has."""

from __future__ import annotations

from tta_agent_coordination.testing.registry_contract import RegistryContract


class TestMemoryRegistry(RegistryContract):
    url = "memory://"
