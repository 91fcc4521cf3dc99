"""The plugin the ``tta_agent_coordination`` entry point names.

It imports nothing but the hook marker, so listing the installed schemes stays cheap: the
driver module is imported only when someone connects to ``acme://``.
"""

from tta_agent_coordination.hookspecs import hookimpl

__all__ = ["tta_backend_schemes"]


@hookimpl
def tta_backend_schemes() -> dict[str, str]:
    """acme serves ``acme://``."""
    return {"acme": "acme_tta_backend.backend:from_url"}
