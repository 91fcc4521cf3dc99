"""OpenTelemetry for tta-agent-coordination: metrics on the metrics API, spans on the tracing API.

Two pieces, each on the core's own extension points (the core imports no OpenTelemetry)::

    from tta_agent_coordination import MessageCoordinator, connect
    from tta_agent_coordination_opentelemetry import OpenTelemetryMetrics, TracingMiddleware

    coord = MessageCoordinator(
        backend, metrics=OpenTelemetryMetrics(), middleware=[TracingMiddleware()]
    )

* :class:`OpenTelemetryMetrics`: a ``MetricsSink``, the core's counters and histograms as
  OpenTelemetry instruments with bounded attributes.
* :class:`TracingMiddleware`: a ``Middleware``, a producer span per send and a consumer span per
  handled message, W3C trace context carried in the message headers.

Both use the global providers unless given others; configure those with the SDK.
"""

from ._version import __version__
from .metrics import (
    DEFAULT_BUCKETS,
    INSTRUMENTS,
    OTHER,
    InstrumentSpec,
    OpenTelemetryMetrics,
    queue_attributes,
)
from .tracing import TracingMiddleware, destination_template

__all__ = [
    "DEFAULT_BUCKETS",
    "INSTRUMENTS",
    "OTHER",
    "InstrumentSpec",
    "OpenTelemetryMetrics",
    "TracingMiddleware",
    "__version__",
    "destination_template",
    "queue_attributes",
]
