"""The conformance suite: every clause of the contract, for one backend URL.

A driver author's whole test file::

    from tta_agent_coordination.testing.conformance import BackendConformance

    class TestAcme(BackendConformance):
        url = "acme://localhost"

or no file at all: ``pytest --pyargs tta_agent_coordination.testing --tta-backend=acme://...``.
Each test runs in a namespace of its own and drops it afterwards. Tests of time run instantly
on a backend with ``clock_control`` and in scaled real time without it; the few tests that need
an optional capability the backend does not declare are skipped and listed at the end of the
run. Everything else is mandatory. Overriding a suite test needs a stated reason:
decorate the override with :func:`override_reason`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .breaker_contract import BreakerContract
from .queue_contract import QueueContract
from .registry_contract import RegistryContract
from .stateful import StatefulContract

__all__ = ["OVERRIDE_REASON_ATTR", "BackendConformance", "override_reason"]

F = TypeVar("F", bound=Callable[..., object])

#: The attribute :func:`override_reason` sets on an overriding test.
OVERRIDE_REASON_ATTR = "__tta_override_reason__"


def override_reason(reason: str) -> Callable[[F], F]:
    """Mark a test that overrides a suite test, saying why (required by the suite's plugin)."""
    if not reason.strip():
        msg = "override_reason() needs a reason"
        raise ValueError(msg)

    def mark(fn: F) -> F:
        setattr(fn, OVERRIDE_REASON_ATTR, reason)
        return fn

    return mark


class BackendConformance(QueueContract, RegistryContract, BreakerContract, StatefulContract):
    """The whole suite: the queue, registry and breaker contracts and the stateful test.

    Set ``url``.
    """
