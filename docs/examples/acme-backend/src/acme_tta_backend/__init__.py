"""An example tta-agent-coordination driver serving ``acme://`` (the memory driver inside)."""

from .backend import AcmeBackend, from_url

__all__ = ["AcmeBackend", "from_url"]
