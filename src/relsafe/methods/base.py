"""The method registry: every safety method is a config dataclass plus one entry point.

``apply(model, policy, cfg, *, progress) -> EditResult`` edits ``model`` (in place or not) and
returns it with an :class:`EditRecord` of what was done. ``relsafe edit`` and ``relsafe run`` find
methods here by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from relsafe.errors import InputError


@dataclass
class EditRecord:
    """What a method did: enough to reproduce it and to draw its training curves in a report."""

    method: str
    config: dict[str, Any]
    model: str
    data_sizes: dict[str, int] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)  # one dict per logged step
    params_touched: int = 0
    params_total: int = 0
    time_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EditResult:
    model: Any
    record: EditRecord
    adapter: Any = None  # a LoraHandle for LoRA methods, None otherwise
    artifacts: dict[str, Any] = field(default_factory=dict)  # e.g. a UWM mask


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    config_cls: type
    fn: Callable[..., EditResult]


_METHODS: dict[str, Method] = {}


def register_method(name: str, description: str, config_cls: type) -> Callable:
    def deco(fn: Callable[..., EditResult]) -> Callable[..., EditResult]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = Method(name, description, config_cls, fn)
        return fn

    return deco


def _load_builtin_methods() -> None:
    import importlib

    for mod in ("relational_lora", "safeclip", "uwm", "hysac"):
        try:
            importlib.import_module(f"relsafe.methods.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"relsafe.methods.{mod}":
                raise


def methods() -> dict[str, Method]:
    _load_builtin_methods()
    return dict(_METHODS)


def get_method(name: str) -> Method:
    all_methods = methods()
    if name not in all_methods:
        import difflib

        hint = difflib.get_close_matches(name, list(all_methods), n=1)
        msg = f"unknown method {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        raise InputError(f"{msg} (available: {', '.join(sorted(all_methods))})")
    return all_methods[name]


class Timer:
    """``with Timer() as t: ...; t.elapsed``"""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
