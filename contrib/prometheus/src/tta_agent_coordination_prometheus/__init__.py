"""Prometheus metrics for tta-agent-coordination.

* :class:`PrometheusMetrics`: the core's ``MetricsSink`` on prometheus_client (counters and
  histograms for every operation the core reports, labels of bounded cardinality).
* :class:`CoordinationCollector`: queue depths and breaker states, read by a background
  refresher and served at scrape time from a snapshot.
* :func:`serve_metrics` serves ``/metrics`` over HTTP; :func:`metrics_endpoint` runs all three
  for a backend (what ``tta-coord worker --metrics-port`` does).

See ``docs/observability/prometheus.md`` for the metric names, labels and PromQL examples.
"""

from .collector import QUEUE_STATES, CollectorSnapshot, CoordinationCollector
from .server import MetricsEndpoint, MetricsServer, metrics_endpoint, serve_metrics
from .sink import DEFAULT_BUCKETS, METRICS, OTHER, MetricSpec, PrometheusMetrics, queue_label

__all__ = [
    "DEFAULT_BUCKETS",
    "METRICS",
    "OTHER",
    "QUEUE_STATES",
    "CollectorSnapshot",
    "CoordinationCollector",
    "MetricSpec",
    "MetricsEndpoint",
    "MetricsServer",
    "PrometheusMetrics",
    "metrics_endpoint",
    "queue_label",
    "serve_metrics",
]
