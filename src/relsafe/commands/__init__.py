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


def register_commands(add: Add, sub: Any) -> None:
    """Let every module of :data:`MODULES` add its subcommands (``add(name, handler, help)``
    returns the new subparser; ``sub`` is the subparsers action, for nested subcommands)."""
    for name in MODULES:
        importlib.import_module(f"relsafe.commands.{name}").register(add, sub)
