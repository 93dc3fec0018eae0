"""One training-checkpoint format: a folder of safetensors files and one JSON state, never pickle.

A checkpoint holds everything a training loop needs to continue as if it had never stopped:

* named tensors (adapter or model parameters, BatchNorm statistics, ...);
* the optimizer's ``state_dict()``, flattened: every tensor in it (AdamW's ``exp_avg``,
  ``exp_avg_sq`` and its 0-d ``step`` tensors, ...) goes to a safetensors file, the rest
  (``param_groups``, scalar entries, the integer keys of ``state``) to JSON, with tuples, integer
  keys and non-finite floats tagged so that loading gives back an equal ``state_dict()``;
* random-number states (:class:`RngState`: the torch CPU generator, a Python ``random.Random``,
  a numpy ``Generator``), restored exactly;
* a JSON-able ``meta`` dict (step counter, config hash, loss curve, ...).

On disk (``folder/``)::

    tensors.safetensors   the named tensors
    state.safetensors     the tensors inside the optimizer state and the RNG states
    state.json            format, version, SHA-256 and size of both files, the rest as tagged JSON

The folder is written under a temporary name and renamed into place whole
(:func:`relsafe.utils_io.atomic_dir`), so a kill never leaves the weights of step N beside the state
of step M. Loading checks the format, each file's size and SHA-256, the tensor names, shapes and
dtypes against what the caller expects and the optimizer's parameter groups, and raises
:class:`~relsafe.errors.CheckpointError` naming the file and what is wrong. ``torch.load`` is never
called.

This module sits in the utils layer: it imports only torch, safetensors and ``relsafe.errors`` /
``relsafe.utils_io``.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relsafe.errors import CheckpointError
from relsafe.utils_io import atomic_dir, recover_atomic_dir, sha256_file

__all__ = [
    "FORMAT",
    "STATE_FILE",
    "STATE_TENSORS_FILE",
    "TENSORS_FILE",
    "VERSION",
    "RngState",
    "TrainingCheckpoint",
    "checkpoint_exists",
    "load_checkpoint",
    "load_optimizer_state",
    "read_meta",
    "save_checkpoint",
]

FORMAT = "relsafe-training-checkpoint"
VERSION = 1
TENSORS_FILE = "tensors.safetensors"
STATE_TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"

_TAGS = ("__tensor__", "__tuple__", "__float__", "__dict__")


# ---- random-number states -----------------------------------------------------------------------
@dataclass
class RngState:
    """Random-number states to save with a checkpoint; ``None`` fields are not saved/restored.

    ``torch`` is the CPU generator state (``torch.get_rng_state()``), ``python`` a
    ``random.Random.getstate()`` tuple and ``numpy`` a ``Generator.bit_generator.state`` dict.
    """

    torch: torch.Tensor | None = None
    python: tuple[Any, ...] | None = None
    numpy: dict[str, Any] | None = None

    @classmethod
    def capture(
        cls,
        *,
        torch_global: bool = True,
        python: random.Random | None = None,
        numpy: Any = None,
    ) -> RngState:
        """The current states of the global torch CPU generator and of the given generators.

        ``numpy`` is a ``numpy.random.Generator`` (duck-typed, so this module needs no numpy).
        """
        return cls(
            torch=torch.get_rng_state() if torch_global else None,
            python=python.getstate() if python is not None else None,
            numpy=dict(numpy.bit_generator.state) if numpy is not None else None,
        )

    def restore(
        self,
        *,
        torch_global: bool = True,
        python: random.Random | None = None,
        numpy: Any = None,
        where: str = "checkpoint",
    ) -> None:
        """Put the saved states back into the global torch generator and the given generators."""
        for name, wanted, saved in (
            ("torch", torch_global, self.torch),
            ("python", python is not None, self.python),
            ("numpy", numpy is not None, self.numpy),
        ):
            if wanted and saved is None:
                raise CheckpointError(f"{where}: holds no {name} random-number state to restore")
        if torch_global and self.torch is not None:
            torch.set_rng_state(self.torch)
        if python is not None:
            python.setstate(self.python)
        if numpy is not None:
            numpy.bit_generator.state = self.numpy

    def to_obj(self) -> dict[str, Any]:
        return {"torch": self.torch, "python": self.python, "numpy": self.numpy}


@dataclass
class TrainingCheckpoint:
    """What :func:`load_checkpoint` returns."""

    path: Path
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    """An ``optimizer.state_dict()``-shaped dict (load it with :func:`load_optimizer_state`)."""
    rng: RngState
    meta: dict[str, Any] = field(default_factory=dict)


# ---- tagged JSON: the non-tensor part of optimizer states, RNG states and meta --------------------
def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors move to ``tensors`` under a key derived from ``path``."""
    if isinstance(obj, torch.Tensor):
        key = path
        n = 1
        while key in tensors:
            key, n = f"{path}#{n}", n + 1
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and not (
            len(obj) == 1 and next(iter(obj)) in _TAGS
        ):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        return {
            "__dict__": [
                [_encode(k, f"{path}.key", tensors), _encode(v, f"{path}.{k}", tensors)]
                for k, v in obj.items()
            ]
        }
    raise CheckpointError(
        f"checkpoint: cannot store a {type(obj).__name__} at {path!r} "
        "(only tensors, numbers, strings, None, lists, tuples and dicts)"
    )


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor] | None, where: str) -> Any:
    """Inverse of :func:`_encode`; ``tensors`` None means they were not loaded (``read_meta``)."""
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        if tag == "__tensor__":
            if tensors is None:
                raise CheckpointError(
                    f"{where}: meta holds tensor {value!r}; read it with load_checkpoint"
                )
            if value not in tensors:
                raise CheckpointError(
                    f"{where}: tensor {value!r} is missing from {STATE_TENSORS_FILE}"
                )
            return tensors[value]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, where) for v in value)
        if tag == "__float__":
            return float(value)
        if tag == "__dict__":
            return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value}
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


# ---- saving -----------------------------------------------------------------------------------------
def _plain(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies safetensors accepts (tensors sharing memory are cloned)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint: {k!r} is a {type(v).__name__}, not a tensor")
        t = v.detach().cpu().contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def save_checkpoint(
    folder: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    optimizer: Mapping[str, Any] | None = None,
    rng: RngState | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (replacing an older one whole); returns its path.

    Args:
        folder: the checkpoint folder (its parent is created).
        tensors: named tensors, e.g. ``handle.state_dict()`` or ``{"param.x": p, ...}``.
        optimizer: ``optimizer.state_dict()``; tensors in it are stored bit-exactly.
        rng: random-number states (:meth:`RngState.capture`).
        meta: JSON-able extra state (step, config hash, curve, ...); tuples and tensors allowed.
    """
    from safetensors.torch import save_file

    from relsafe.utils_io import atomic_write_json

    folder = Path(folder)
    named = _plain(tensors)
    state_tensors: dict[str, torch.Tensor] = {}
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": None
        if optimizer is None
        else _encode(dict(optimizer), "optimizer", state_tensors),
        "rng": _encode((rng or RngState()).to_obj(), "rng", state_tensors),
        "meta": _encode(dict(meta or {}), "meta", state_tensors),
    }
    state_tensors = _plain(state_tensors)
    with atomic_dir(folder) as tmp:
        files = {TENSORS_FILE: named, STATE_TENSORS_FILE: state_tensors}
        doc["files"] = {}
        for name, content in files.items():
            save_file(content, str(tmp / name), metadata={"format": FORMAT})
            doc["files"][name] = {
                "sha256": sha256_file(tmp / name),
                "bytes": (tmp / name).stat().st_size,
            }
        atomic_write_json(tmp / STATE_FILE, doc)
    return folder


# ---- loading ---------------------------------------------------------------------------------------
def checkpoint_exists(folder: str | os.PathLike[str]) -> bool:
    """Whether there is a checkpoint folder at ``folder`` (after undoing an interrupted
    replacement). A damaged one counts: loading it then says what is wrong, so a resume never
    silently starts afresh over a broken checkpoint."""
    folder = Path(folder)
    recover_atomic_dir(folder)
    return folder.is_dir()


def _read_state(folder: Path) -> dict[str, Any]:
    recover_atomic_dir(folder)
    path = folder / STATE_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no checkpoint folder here")
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; {folder} is not a complete {FORMAT} folder "
            f"(holds {sorted(p.name for p in folder.iterdir())})"
        )
    from relsafe.errors import InputError
    from relsafe.utils_io import read_json_file

    try:
        doc = read_json_file(path, "checkpoint state file", expect=None)
    except CheckpointError:
        raise
    except InputError as e:
        raise CheckpointError(f"{path}: unreadable or not JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} state file")
    if doc.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {doc.get('version')!r}; this relsafe reads {VERSION}"
        )
    for key in ("files", "optimizer", "rng", "meta"):
        if key not in doc:
            raise CheckpointError(f"{path}: has no {key!r} entry")
    return doc


def read_meta(
    folder: str | os.PathLike[str], keys: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The ``meta`` dict of a checkpoint without loading its tensors (e.g. to compare a config
    hash before deciding to resume). Tensors stored in ``meta`` are not available here: pass
    ``keys`` to read only those top-level entries (the others may hold tensors)."""
    folder = Path(folder)
    doc = _read_state(folder)
    raw = doc["meta"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{folder / STATE_FILE}: 'meta' is not a mapping")
    if keys is not None:
        raw = {k: v for k, v in raw.items() if k in keys}
    meta = _decode(raw, None, str(folder / STATE_FILE))
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / STATE_FILE}: 'meta' is not a mapping")
    return meta


def _load_file(folder: Path, name: str, info: Any) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / name
    if not isinstance(info, dict) or "sha256" not in info or "bytes" not in info:
        raise CheckpointError(f"{folder / STATE_FILE}: no size and SHA-256 recorded for {name}")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise CheckpointError(
            f"{path}: truncated or overwritten ({size} bytes, {info['bytes']} expected)"
        )
    if sha256_file(path) != info["sha256"]:
        raise CheckpointError(f"{path}: corrupt (its SHA-256 differs from the one in {STATE_FILE})")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e


def _check_expected(
    path: Path, got: Mapping[str, torch.Tensor], expect: Mapping[str, torch.Tensor]
) -> None:
    missing = sorted(set(expect) - set(got))
    extra = sorted(set(got) - set(expect))
    if missing or extra:
        raise CheckpointError(
            f"{path}: tensors do not match this model "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''})"
        )
    for k, ref in expect.items():
        t = got[k]
        if tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype:
            raise CheckpointError(
                f"{path}: tensor {k!r} is {t.dtype} {tuple(t.shape)}, "
                f"expected {ref.dtype} {tuple(ref.shape)}"
            )


def load_checkpoint(
    folder: str | os.PathLike[str],
    *,
    expect: Mapping[str, torch.Tensor] | None = None,
) -> TrainingCheckpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Args:
        folder: the checkpoint folder.
        expect: the tensors the caller will copy into (e.g. the live model's); the checkpoint's
            names, shapes and dtypes must match them exactly.

    Raises:
        CheckpointError: the folder is missing, incomplete, truncated, corrupt, of another format
            version, or does not match ``expect``; the message names the file.
    """
    folder = Path(folder)
    doc = _read_state(folder)
    where = str(folder / STATE_FILE)
    files = doc["files"]
    if not isinstance(files, dict) or set(files) != {TENSORS_FILE, STATE_TENSORS_FILE}:
        raise CheckpointError(f"{where}: 'files' must list {TENSORS_FILE} and {STATE_TENSORS_FILE}")
    named = _load_file(folder, TENSORS_FILE, files[TENSORS_FILE])
    state_tensors = _load_file(folder, STATE_TENSORS_FILE, files[STATE_TENSORS_FILE])
    if expect is not None:
        _check_expected(folder / TENSORS_FILE, named, expect)
    optimizer = _decode(doc["optimizer"], state_tensors, where)
    if optimizer is not None and (
        not isinstance(optimizer, dict) or set(optimizer) != {"state", "param_groups"}
    ):
        raise CheckpointError(f"{where}: 'optimizer' is not an optimizer state_dict")
    rng = _decode(doc["rng"], state_tensors, where)
    meta = _decode(doc["meta"], state_tensors, where)
    if not isinstance(rng, dict) or set(rng) != {"torch", "python", "numpy"}:
        raise CheckpointError(f"{where}: 'rng' must hold torch, python and numpy entries")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: 'meta' is not a mapping")
    return TrainingCheckpoint(
        path=folder, tensors=named, optimizer=optimizer, rng=RngState(**rng), meta=meta
    )


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: Mapping[str, Any] | None, where: str = "checkpoint"
) -> None:
    """Validate a saved ``state_dict()`` against ``optimizer`` and load it.

    The saved parameter groups must have the same number of parameters as the live ones, every
    state entry must refer to one of them, and every non-scalar tensor in it (``exp_avg``, a
    momentum buffer, ...) must have its parameter's shape.
    """
    if state is None:
        raise CheckpointError(f"{where}: holds no optimizer state")
    live = optimizer.state_dict()["param_groups"]
    saved = state["param_groups"]
    if len(saved) != len(live):
        raise CheckpointError(
            f"{where}: optimizer has {len(saved)} parameter groups, this run {len(live)}"
        )
    params: dict[int, torch.Tensor] = {}
    for i, (g_saved, g_live, group) in enumerate(
        zip(saved, live, optimizer.param_groups, strict=True)
    ):
        if len(g_saved["params"]) != len(g_live["params"]):
            raise CheckpointError(
                f"{where}: optimizer group {i} has {len(g_saved['params'])} parameters, "
                f"this run {len(g_live['params'])}"
            )
        params.update(zip(g_saved["params"], group["params"], strict=True))
    for idx, entry in state["state"].items():
        if idx not in params:
            raise CheckpointError(f"{where}: optimizer state for unknown parameter {idx!r}")
        for k, v in entry.items():
            if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape != params[idx].shape:
                raise CheckpointError(
                    f"{where}: optimizer state {k!r} of parameter {idx} is {tuple(v.shape)}, "
                    f"the parameter {tuple(params[idx].shape)}"
                )
    try:
        optimizer.load_state_dict(dict(state))
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{where}: optimizer state does not fit this optimizer ({e})") from e
