"""One registry mechanism for everything relsafe looks up by name: backbones, methods, suites and
attacks.

Each kind has one :class:`Registry`. Entries register themselves *in their own module*
(``METHODS.register("uwm", entry)`` or a decorator helper built on it), so adding a method, suite,
backbone or attack never means editing a list somewhere else. A registry finds the built-in
entries by importing every module of its home packages the first time it is asked for a name
(``relsafe.methods`` for methods, and so on), and the entries of other packages through the
``relsafe.plugins`` entry-point group (and the ``RELSAFE_PLUGINS`` environment variable, a comma
list of modules, handy for scripts and tests). A plugin entry point names a module (importing it
registers its entries) or a ``module:function`` (called with no arguments; it registers).

A module that fails to import is an error that names it, never a silent drop: a renamed or broken
method must not simply disappear from a leaderboard.

Entries may also be registered lazily as ``"module:attr"`` strings, resolved on first use, so a
plugin can announce a name without importing its heavy code::

    from relsafe.registry import METHODS
    METHODS.register_lazy("my-method", "my_pkg.method:ENTRY")
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import pkgutil
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from relsafe.errors import InputError, RelsafeError

log = logging.getLogger(__name__)

T = TypeVar("T")

PLUGIN_GROUP = "relsafe.plugins"
PLUGIN_ENV = "RELSAFE_PLUGINS"


class RegistryError(RelsafeError):
    """A registry entry could not be found, imported or registered."""


def check_version(name: str, version: object) -> int:
    """A method's or suite's declared ``version``: a positive integer, else a
    :class:`RegistryError` naming the entry."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"{name}: version must be a positive integer, got {version!r}")
    return version


def _import_module(name: str, why: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - re-raised with the module named
        raise RegistryError(f"{why}: importing {name!r} failed: {type(e).__name__}: {e}") from e


def resolve_target(target: str) -> Any:
    """``"package.module:attr.sub"`` -> the object (an error names the target when it fails)."""
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise RegistryError(f"lazy registry target {target!r} must look like 'module:attr'")
    obj = _import_module(mod_name, f"lazy entry {target!r}")
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise RegistryError(f"lazy entry {target!r}: {mod_name} has no {attr!r}") from e
    return obj


_plugins_lock = threading.RLock()
_plugins_loaded = False


def load_plugins(force: bool = False) -> list[str]:
    """Import every plugin of the ``relsafe.plugins`` entry-point group and of ``RELSAFE_PLUGINS``
    once; returns the names loaded. A plugin that fails to load raises :class:`RegistryError`."""
    global _plugins_loaded
    with _plugins_lock:
        if _plugins_loaded and not force:
            return []
        _plugins_loaded = True
        from importlib import metadata

        loaded: list[str] = []
        targets: list[tuple[str, str]] = []
        for ep in metadata.entry_points(group=PLUGIN_GROUP):
            targets.append((f"entry point {ep.name!r} ({ep.value})", ep.value))
        for mod in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
            targets.append((f"{PLUGIN_ENV} entry {mod!r}", mod))
        for why, value in targets:
            if ":" in value:
                fn = resolve_target(value)
                if not callable(fn):
                    raise RegistryError(f"plugin {why}: {value} is not callable")
                fn()
            else:
                _import_module(value, f"plugin {why}")
            loaded.append(value)
            log.debug("loaded relsafe plugin %s", value)
        return loaded


class Registry(Generic[T]):
    """Name -> entry for one kind of thing (``"method"``, ``"suite"``, ...).

    ``packages`` are the built-in home packages: on first lookup every module under them is
    imported (which registers what they define), then the plugins. ``check`` validates an entry
    when it is registered (or resolved, for lazy entries).
    """

    def __init__(
        self,
        kind: str,
        packages: tuple[str, ...] = (),
        check: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.kind = kind
        self.packages = packages
        self._check = check
        self._entries: dict[str, Any] = {}
        self._lazy: dict[str, str] = {}
        self._discovered = False
        self._lock = threading.RLock()

    # ---- registering --------------------------------------------------------------------
    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` under ``name``; a second registration of a name is an error unless
        ``replace`` (re-importing the same module object again is not an error)."""
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"{self.kind} names must be non-empty strings, got {name!r}")
        with self._lock:
            old = self._entries.get(name)
            if old is not None and not replace and not _same_entry(old, entry):
                raise RegistryError(f"{self.kind} {name!r} registered twice")
            if self._check is not None:
                self._check(name, entry)
            self._entries[name] = entry
            self._lazy.pop(name, None)
        return entry

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"module:attr"``, imported on first use of ``name``."""
        with self._lock:
            if name in self._entries or name in self._lazy:
                raise RegistryError(f"{self.kind} {name!r} registered twice")
            if ":" not in target:
                raise RegistryError(f"lazy target {target!r} must look like 'module:attr'")
            self._lazy[name] = target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests use it to clean up a toy entry)."""
        with self._lock:
            self._entries.pop(name, None)
            self._lazy.pop(name, None)

    # ---- discovery ----------------------------------------------------------------------
    def discover(self) -> None:
        """Import the home packages' modules and the plugins (once)."""
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            try:
                for pkg_name in self.packages:
                    pkg = _import_module(pkg_name, f"{self.kind} registry")
                    path = getattr(pkg, "__path__", None)  # a plain module: importing it is all
                    for info in pkgutil.walk_packages(path or [], prefix=f"{pkg_name}."):
                        if info.name.rsplit(".", 1)[-1].startswith("_"):
                            continue
                        _import_module(info.name, f"{self.kind} registry")
                load_plugins()
            except BaseException:
                self._discovered = False
                raise

    # ---- lookup -------------------------------------------------------------------------
    def _resolve(self, name: str) -> T:
        target = self._lazy[name]
        entry = resolve_target(target)
        if self._check is not None:
            self._check(name, entry)
        self._entries[name] = entry
        del self._lazy[name]
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is an :class:`InputError` with a hint."""
        with self._lock:
            if name in self._entries:
                return self._entries[name]
            if name in self._lazy:
                return self._resolve(name)
            self.discover()
            if name in self._entries:
                return self._entries[name]
            if name in self._lazy:
                return self._resolve(name)
        names = self.names()
        hint = difflib.get_close_matches(str(name), names, n=1)
        msg = f"unknown {self.kind} {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        raise InputError(f"{msg} (available: {', '.join(names)})")

    def names(self) -> list[str]:
        self.discover()
        with self._lock:
            return sorted({*self._entries, *self._lazy})

    def items(self) -> dict[str, T]:
        """Every entry, lazy ones resolved, in registration order."""
        self.discover()
        with self._lock:
            for name in list(self._lazy):
                self._resolve(name)
            return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, packages={self.packages})"


def _same_entry(a: Any, b: Any) -> bool:
    """Two registrations of one object (or of equal frozen dataclasses defined by the same code,
    as happens when a module is imported twice under ``importlib.reload``)."""
    if a is b:
        return True
    fa, fb = getattr(a, "fn", None), getattr(b, "fn", None)
    return (
        fa is not None
        and fb is not None
        and getattr(fa, "__module__", None) == getattr(fb, "__module__", None)
        and getattr(fa, "__qualname__", None) == getattr(fb, "__qualname__", None)
    )


# The four registries. Their home packages are scanned on first use.
BACKBONES: Registry[Any] = Registry("backbone", ("relsafe.models",))
METHODS: Registry[Any] = Registry("method", ("relsafe.methods",))
SUITES: Registry[Any] = Registry("suite", ("relsafe.eval",))
ATTACKS: Registry[Any] = Registry("attack", ("relsafe.data.attacks",))

__all__ = [
    "ATTACKS",
    "BACKBONES",
    "METHODS",
    "PLUGIN_ENV",
    "PLUGIN_GROUP",
    "Registry",
    "RegistryError",
    "SUITES",
    "load_plugins",
    "resolve_target",
]
