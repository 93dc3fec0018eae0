"""What every results file carries so a number can be traced and reproduced (DESIGN.md).

:func:`collect_provenance` records the resolved config, seeds, package versions, the relsafe git
commit (when relsafe runs from a git checkout), the platform and the SHA-256 of every checkpoint
file read. Only the standard library is imported at module level; package versions are looked up
with :mod:`importlib.metadata`, so nothing heavy is imported just to be named.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from relsafe.errors import InputError
from relsafe.utils_io import sha256_file_cached

__all__ = ["checkpoint_hashes", "collect_provenance", "git_commit", "package_versions"]

_PACKAGES = ("relsafe", "torch", "transformers", "numpy", "safetensors", "peft", "pillow")


def package_versions(packages: Iterable[str] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions (``None`` for a package that is not installed) plus ``python``."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("relsafe") is None:
        import relsafe

        out["relsafe"] = relsafe.__version__
    return out


def git_commit(path: str | os.PathLike[str] | None = None, timeout: float = 3.0) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``path`` (default: relsafe's source).

    Returns None when git is missing, times out, or ``path`` is not in a repository. Runs with
    ``GIT_OPTIONAL_LOCKS=0`` so it never takes the index lock.
    """
    if path is None:
        import relsafe

        path = Path(relsafe.__file__).resolve().parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=str(path),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = res.stdout.strip()
    if res.returncode != 0 or len(sha) not in (40, 64):
        return None
    return sha


def checkpoint_hashes(checkpoints: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """SHA-256 and size of each checkpoint file, streamed (once per process per file version).

    A folder contributes every regular file under it (sorted, recursively), each with its path.
    A missing path raises :class:`InputError` naming it.
    """
    out: list[dict[str, Any]] = []
    for ck in checkpoints:
        p = Path(ck)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            files = [p]
        else:
            raise InputError(f"checkpoint not found: {p}")
        for f in files:
            out.append({"path": str(f), "sha256": sha256_file_cached(f), "bytes": f.stat().st_size})
    return out


def _jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples, sets and numpy/torch scalars into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(_jsonable(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(obj)


def collect_provenance(
    config: Mapping[str, Any] | Any,
    seeds: Mapping[str, int] | None = None,
    checkpoints: Iterable[str | os.PathLike[str]] = (),
) -> dict[str, Any]:
    """Everything needed to trace a results file back to its inputs.

    Returns a JSON-ready dict: ``config`` (a mapping or dataclass, made JSON-safe), ``seeds``,
    ``versions`` (relsafe, torch, transformers, numpy, safetensors, peft, pillow, python),
    ``git_commit`` (None outside a git checkout), ``platform``, ``argv``, ``created`` (UTC ISO
    time) and ``checkpoints`` (``[{"path", "sha256", "bytes"}]``).
    """
    return {
        "config": _jsonable(config),
        "seeds": _jsonable(dict(seeds or {})),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "python_implementation": platform.python_implementation(),
        },
        "argv": list(sys.argv),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "checkpoints": checkpoint_hashes(checkpoints),
    }
