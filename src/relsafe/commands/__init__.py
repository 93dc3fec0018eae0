"""Subcommands that put an edited model to work (``classify``, ``index``, ``search``, ``serve``),
each in its own module with a ``register(add, sub)`` function that adds its parsers; the handlers
parse arguments, call :mod:`relsafe.api` and print. :func:`relsafe.cli.build_parser` calls
:func:`register_commands`."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

MODULES: tuple[str, ...] = ("classify", "gallery", "serve", "data", "tune")
"""The modules of this package that register commands, in help order."""

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


DTYPES = ("auto", "float32", "bfloat16", "float16", "int8-text")
"""The engine's compute modes, as ``--dtype`` takes them (:mod:`relsafe.engine.precision`)."""


def add_dtype_argument(sp: argparse.ArgumentParser) -> None:
    """``--dtype`` for a command that embeds (``embed``, ``index``)."""
    sp.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="compute: auto (bf16 on CUDA; on CPU bf16 only with bf16 units and a passing probe), "
        "float32, bfloat16, float16 (CUDA), int8-text (CPU: dynamic int8 text tower)",
    )


def add_world_arguments(sp: argparse.ArgumentParser) -> None:
    """``--data MANIFEST`` and ``--skip-bad``: the images of the policy's world
    (``docs/your-data.md``), for commands that edit, evaluate or tune."""
    sp.add_argument(
        "--data",
        default=None,
        metavar="MANIFEST",
        help="tuple-labelled manifest (CSV, JSONL, Parquet, datasets folder) whose images the "
        "policy's world uses (docs/your-data.md); default: RelWorld renders, or text only",
    )
    sp.add_argument("--skip-bad", action="store_true", help="skip (and report) bad manifest rows")


def world_arg(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``world`` of ``--data MANIFEST [--skip-bad]`` (None: the policy vocabulary's default)."""
    if getattr(args, "data", None) is None:
        return None
    return {"data": args.data, "skip_bad": bool(args.skip_bad)}


def register_commands(add: Add, sub: Any) -> None:
    """Let every module of :data:`MODULES` add its subcommands (``add(name, handler, help)``
    returns the new subparser; ``sub`` is the subparsers action, for nested subcommands)."""
    for name in MODULES:
        importlib.import_module(f"relsafe.commands.{name}").register(add, sub)
