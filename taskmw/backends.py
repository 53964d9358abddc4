"""Finding a backend by name: the built-in ``"local"`` and ``"eager"``
transports, and those installed in the entry-point group ``taskmw.backends``."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from taskmw.interfaces import Transport

BACKEND_GROUP = "taskmw.backends"
"""Entry-point group of the backends: each names a transport factory,
``factory(settings, server, **options) -> Transport``."""
BACKEND_ENV = "TASKMW_BACKEND"
"""The environment variable that names the backend when ``backend=`` is not given."""


def backend_factory(name: str) -> Callable[..., Transport]:
    """The transport factory of the backend called ``name``.

    Raises:
        ValueError: no such backend is installed (the message lists those that are).
    """
    if name == "local":
        from taskmw.local import LocalTransport

        return LocalTransport
    if name == "eager":
        from taskmw.eager import EagerTransport

        return EagerTransport
    found = {ep.name: ep for ep in entry_points(group=BACKEND_GROUP)}
    if name not in found:
        known = ", ".join(repr(n) for n in ["local", "eager", *sorted(set(found) - {"eager"})])
        raise ValueError(f"backend must be one of {known}, got {name!r} (is its plugin installed?)")
    factory: Callable[..., Transport] = found[name].load()
    return factory
