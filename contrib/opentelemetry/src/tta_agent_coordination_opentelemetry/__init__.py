"""opentelemetry support for tta-agent-coordination (work in progress)."""

__all__: list[str] = []
