"""The method registry: every safety method is a config dataclass plus one entry point.

``fn(model, policy, cfg, *, progress, workdir) -> EditResult`` edits ``model`` (in place or not)
and returns it with an :class:`EditRecord` of what was done. Methods register themselves with
:func:`register_method` in their own module; ``relsafe.api`` finds them by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from relsafe.registry import METHODS, check_version


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
    # ``revert(model, edit_dir, model_spec) -> (EditResult, files read)``: undo a saved edit on
    # ``model``; None for methods whose edits cannot be undone from what they saved
    revert: Callable[..., tuple[EditResult, list[Any]]] | None = None
    # the version of what the method computes: part of every ``relsafe run`` edit stage's key, so
    # bumping it redoes exactly this method's edits (and their evaluations) on a resumed run
    version: int = 1


def register_method(
    name: str,
    description: str,
    config_cls: type,
    *,
    revert: Callable[..., tuple[EditResult, list[Any]]] | None = None,
    version: int = 1,
) -> Callable:
    """Decorator: register ``fn(model, policy, cfg, *, progress, workdir) -> EditResult`` as method
    ``name`` in :data:`relsafe.registry.METHODS`. Call it in the method's own module; built-in
    methods are found by importing ``relsafe.methods``' modules, outside ones through the
    ``relsafe.plugins`` entry-point group (docs/extending.md).

    ``version``: bump it with any change to the code that changes what an edit computes for the
    same config (a new default is a config change and needs no bump); a resumed ``relsafe run``
    then redoes this method's edits and evaluations, and nothing else."""
    check_version(name, version)

    def deco(fn: Callable[..., EditResult]) -> Callable[..., EditResult]:
        METHODS.register(name, Method(name, description, config_cls, fn, revert, version))
        return fn

    return deco


def methods() -> dict[str, Method]:
    """Every registered method (built-in and plugins), by name."""
    return METHODS.items()


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is an InputError with a suggestion."""
    return METHODS.get(name)


class Timer:
    """``with Timer() as t: ...; t.elapsed``"""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
