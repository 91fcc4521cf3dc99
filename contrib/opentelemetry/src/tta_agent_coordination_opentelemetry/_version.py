"""The distribution's version, read from its installed metadata (one source: pyproject.toml)."""

from importlib.metadata import version

__all__ = ["__version__"]

__version__: str = version("tta-agent-coordination-opentelemetry")
