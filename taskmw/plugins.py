"""The plugin manager of a server: the built-in plugins, the installed ones
(entry-point group ``taskmw``) and the given ones, and the one way taskmw
calls hook implementations (:func:`implementations`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

import pluggy

from taskmw import hookspecs
from taskmw.listeners import DeferredResolver, Dispatcher, Invoker, Listener

log = logging.getLogger(__name__)

DISABLE_ENV = "TASKMW_DISABLE_PLUGINS"
_NOT_WRAPPED = ("on_task", "on_finish", "on_worker_start", "on_worker_stop")
_failed_plugins: set[str] = set()  # entry points that failed to load in this process: reported once

Impl = tuple[Callable[..., Any], tuple[str, ...], str]
"""A hook implementation: its function, the argument names it takes, its plugin's name."""


def implementations(hook: pluggy.HookCaller) -> list[Impl]:
    """The implementations of ``hook`` in the order pluggy calls them (take
    them once the plugins are fixed, e.g. in a forked worker)."""
    return [(impl.function, tuple(impl.argnames), impl.plugin_name) for impl in reversed(hook.get_hookimpls())]


def call_each(hook: pluggy.HookCaller, kwargs: dict[str, Any]) -> None:
    """Call every implementation of ``hook``; an exception is logged and does
    not stop the others."""
    for fn, argnames, plugin in implementations(hook):
        try:
            fn(*[kwargs[name] for name in argnames])
        except Exception:
            log.exception("plugin %s failed in %s", plugin, hook.name)


def plugin_manager(
    plugins: Iterable[object],
    listeners: Mapping[type, Sequence[Listener]] | None,
    entrypoints: bool,
    disable_plugins: Iterable[str],
) -> pluggy.PluginManager:
    """The plugin manager of a server (any backend): the built-in plugins,
    the installed ones (unless disabled), then ``plugins``.

    Raises:
        ValueError: ``disable_plugins`` is not a list of names, or a plugin
            implements a hook as a wrapper.
    """
    names = [] if isinstance(disable_plugins, str) else list(disable_plugins)
    if isinstance(disable_plugins, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"disable_plugins must be a list of plugin names, got {disable_plugins!r}")
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(Invoker(), "taskmw.invoker")
    pm.register(Dispatcher(listeners or {}), "taskmw.dispatcher")
    pm.register(DeferredResolver(), "taskmw.deferred")
    disabled = set(names) | {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    if entrypoints and "*" not in disabled:
        _load_entrypoints(pm, disabled)
    for plugin in plugins:
        pm.register(plugin)
    check_no_wrappers(pm)
    return pm


def check_no_wrappers(pm: pluggy.PluginManager) -> None:
    """Refuse hook wrappers for the hooks taskmw calls one implementation at a time.

    Raises:
        ValueError: naming the plugin and the hook.
    """
    for name in _NOT_WRAPPED:
        for impl in getattr(pm.hook, name).get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                raise ValueError(
                    f"plugin {impl.plugin_name!r}: {name} cannot be a hook wrapper "
                    "(taskmw calls its implementations one by one)"
                )


def _load_entrypoints(pm: pluggy.PluginManager, disabled: set[str]) -> None:
    """Register the plugins of the entry-point group ``taskmw`` but the
    ``disabled`` ones; one that fails to load is logged once per process, by
    name, and skipped."""
    for ep in entry_points(group=hookspecs.PROJECT):
        if ep.name in disabled:
            log.debug("taskmw plugin %r is disabled", ep.name)
            continue
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name) or ep.name in _failed_plugins:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception:
            _failed_plugins.add(ep.name)
            log.exception("taskmw plugin %r (%s) failed to load and is skipped", ep.name, ep.value)
