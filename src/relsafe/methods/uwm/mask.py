"""The UWM mask: apply a selection in place, save / load it, check and revert it bit-exactly.

:class:`UWMMask` records, per layer, the selected flat indices (int64, or packed bits when smaller),
the SHA-256 of the original and of the edited weight, shape, dtype and alpha, plus the original
values when ``alpha != -1``. :func:`revert` restores bit-identical weights; :func:`revert_edit`
is what ``relsafe.api.revert`` calls to undo a saved edit.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from relsafe.errors import InputError
from relsafe.methods.base import EditRecord, EditResult
from relsafe.methods.uwm.layers import tower_module

__all__ = [
    "MASK_JSON",
    "MASK_TENSORS",
    "LayerMask",
    "UWMMask",
    "apply_selection",
    "find_mask_dir",
    "mask_state",
    "revert",
    "revert_edit",
    "weight_sha256",
]

MASK_JSON = "uwm_mask.json"
MASK_TENSORS = "uwm_mask.safetensors"
MASK_FORMAT = "relsafe-uwm-mask"
MASK_VERSION = 1


def weight_sha256(t: torch.Tensor) -> str:
    """SHA-256 over dtype, shape and the raw bytes of a tensor (bit-exact identity)."""
    t = t.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no extra copy
    return h.hexdigest()


@dataclass
class LayerMask:
    """What UWM did to one layer's weight (``indices`` are flat, int64, ascending)."""

    tower: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    indices: torch.Tensor
    alpha: float
    sha256_original: str
    sha256_edited: str
    original_values: torch.Tensor | None = None
    score_share: float | None = None

    @property
    def key(self) -> str:
        return f"{self.tower}:{self.name}"

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_selected(self) -> int:
        return int(self.indices.numel())


@dataclass
class UWMMask:
    """The complete, reversible record of a UWM edit (see the module docs for the file layout)."""

    layers: dict[str, LayerMask]
    alpha: float
    model_class: str = ""
    model_spec: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_selected(self) -> int:
        return sum(lm.n_selected for lm in self.layers.values())

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per layer: selected count, layer size, share selected and score mass share."""
        return {
            k: {
                "selected": lm.n_selected,
                "total": lm.numel,
                "share": lm.n_selected / lm.numel,
                "score_mass": lm.score_share,
            }
            for k, lm in self.layers.items()
        }

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``uwm_mask.safetensors`` and ``uwm_mask.json`` into ``folder`` (atomically).

        Each layer's selection is stored as int64 flat indices or as packed bits
        (``numel / 8`` bytes), whichever is smaller.
        """
        from safetensors.torch import save_file

        from relsafe.utils_io import atomic_path, atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        meta_layers = []
        for i, lm in enumerate(self.layers.values()):
            idx = lm.indices.to(torch.int64).cpu()
            if idx.numel() * 8 <= (lm.numel + 7) // 8:
                encoding = "indices"
                tensors[f"{i}.indices"] = idx.contiguous()
            else:
                encoding = "bits"
                bits = np.zeros(lm.numel, dtype=bool)
                bits[idx.numpy()] = True
                tensors[f"{i}.bits"] = torch.from_numpy(np.packbits(bits))
            if lm.original_values is not None:
                tensors[f"{i}.original"] = lm.original_values.detach().cpu().contiguous()
            meta_layers.append(
                {
                    "id": i,
                    "tower": lm.tower,
                    "name": lm.name,
                    "shape": list(lm.shape),
                    "dtype": lm.dtype,
                    "n_selected": lm.n_selected,
                    "encoding": encoding,
                    "alpha": lm.alpha,
                    "sha256_original": lm.sha256_original,
                    "sha256_edited": lm.sha256_edited,
                    "has_original_values": lm.original_values is not None,
                    "score_share": lm.score_share,
                }
            )
        with atomic_path(folder / MASK_TENSORS) as tmp:
            save_file(tensors, str(tmp), metadata={"format": MASK_FORMAT})
        atomic_write_json(
            folder / MASK_JSON,
            {
                "format": MASK_FORMAT,
                "version": MASK_VERSION,
                "alpha": self.alpha,
                "model_class": self.model_class,
                "model_spec": self.model_spec,
                "n_selected": self.n_selected,
                "config": self.config,
                "layers": meta_layers,
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> UWMMask:
        """Read a mask written by :meth:`save` (``folder`` or an edit dir with ``artifacts/``)."""
        from safetensors.torch import load_file

        folder = find_mask_dir(folder)
        jpath, tpath = folder / MASK_JSON, folder / MASK_TENSORS
        from relsafe.utils_io import read_json_file

        meta = read_json_file(jpath, "UWM mask metadata", expect=None)
        if not isinstance(meta, dict) or meta.get("format") != MASK_FORMAT:
            raise InputError(f"{jpath}: not a relsafe UWM mask (format != {MASK_FORMAT!r})")
        if meta.get("version") != MASK_VERSION:
            raise InputError(f"{jpath}: unsupported UWM mask version {meta.get('version')!r}")
        try:
            tensors = load_file(str(tpath))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise InputError(f"{tpath}: unreadable UWM mask tensors ({e})") from e
        layers: dict[str, LayerMask] = {}
        for lmeta in meta.get("layers", []):
            try:
                i, shape = lmeta["id"], tuple(int(s) for s in lmeta["shape"])
                numel = int(np.prod(shape))
                if lmeta["encoding"] == "indices":
                    idx = tensors[f"{i}.indices"].to(torch.int64)
                else:
                    bits = np.unpackbits(tensors[f"{i}.bits"].numpy(), count=numel).astype(bool)
                    idx = torch.from_numpy(np.nonzero(bits)[0].astype(np.int64))
                orig = tensors.get(f"{i}.original") if lmeta["has_original_values"] else None
                lm = LayerMask(
                    tower=lmeta["tower"],
                    name=lmeta["name"],
                    shape=shape,
                    dtype=lmeta["dtype"],
                    indices=idx,
                    alpha=float(lmeta["alpha"]),
                    sha256_original=lmeta["sha256_original"],
                    sha256_edited=lmeta["sha256_edited"],
                    original_values=orig,
                    score_share=lmeta.get("score_share"),
                )
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{jpath}: malformed layer record {lmeta!r} ({e})") from e
            if lm.n_selected != int(lmeta["n_selected"]) or (
                lm.n_selected and (int(idx.min()) < 0 or int(idx.max()) >= numel)
            ):
                raise InputError(f"{jpath}: layer {lm.key}: indices do not match the record")
            if orig is None and lm.alpha != -1.0:
                raise InputError(
                    f"{jpath}: layer {lm.key}: alpha={lm.alpha} needs the original values, "
                    "which the mask lacks"
                )
            if orig is not None and orig.numel() != lm.n_selected:
                raise InputError(f"{jpath}: layer {lm.key}: original values do not match indices")
            layers[lm.key] = lm
        if not layers:
            raise InputError(f"{jpath}: the mask records no layers")
        return cls(
            layers=layers,
            alpha=float(meta.get("alpha", -1.0)),
            model_class=str(meta.get("model_class", "")),
            model_spec=str(meta.get("model_spec", "")),
            config=dict(meta.get("config") or {}),
        )


def find_mask_dir(path: str | os.PathLike[str]) -> Path:
    """The folder holding ``uwm_mask.json``: ``path`` itself, ``path/artifacts``, or the JSON's folder."""
    p = Path(path)
    if p.is_file() and p.name == MASK_JSON:
        return p.parent
    for cand in (p, p / "artifacts"):
        if (cand / MASK_JSON).is_file() and (cand / MASK_TENSORS).is_file():
            return cand
    raise InputError(
        f"no UWM mask in {p}: expected {MASK_JSON} and {MASK_TENSORS} there or in {p / 'artifacts'} "
        "(is it the output folder of `relsafe edit --method uwm`?)"
    )


def _layer_module(model: Any, tower: str, name: str) -> nn.Module:
    mods = dict(tower_module(model, tower).named_modules())
    mod = mods.get(name)
    if mod is None or not isinstance(getattr(mod, "weight", None), torch.Tensor):
        raise InputError(
            f"the model ({type(model).__name__}) has no {tower} layer {name!r} with a weight; "
            "was the mask made for another architecture?"
        )
    return mod


def apply_selection(
    model: Any,
    selection: Mapping[str, torch.Tensor],
    alpha: float,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> UWMMask:
    """Multiply the selected weights by ``alpha`` in place and return the reversible mask.

    Args:
        selection: ``"tower:layer" -> (k,)`` flat indices into the layer's weight.
        alpha: -1 negates; any other value also stores the original values (exact revert).
        scores: optional, to record each layer's selected share of the score mass.
    """
    layers: dict[str, LayerMask] = {}
    with torch.no_grad():
        for key, idx in selection.items():
            tower, _, name = key.partition(":")
            mod = _layer_module(model, tower, name)
            w = mod.weight
            sha_o = weight_sha256(w)
            flat = w.data.view(-1)
            idx = idx.to(torch.int64)
            dev_idx = idx.to(flat.device)
            orig = None
            if alpha == -1.0:
                flat[dev_idx] = -flat[dev_idx]
            else:
                orig = flat[dev_idx].detach().cpu().clone()
                flat[dev_idx] = flat[dev_idx] * alpha
            share = None
            if scores is not None and key in scores:
                s = scores[key].reshape(-1)
                sel_mass = s[idx.to(s.device)].sum(dtype=torch.float64)
                share = float(sel_mass / s.sum(dtype=torch.float64))
            layers[key] = LayerMask(
                tower=tower,
                name=name,
                shape=tuple(w.shape),
                dtype=str(w.dtype).removeprefix("torch."),
                indices=idx.cpu(),
                alpha=float(alpha),
                sha256_original=sha_o,
                sha256_edited=weight_sha256(w),
                original_values=orig,
                score_share=share,
            )
    return UWMMask(
        layers=layers,
        alpha=float(alpha),
        model_class=type(model).__name__,
        model_spec=str(getattr(model, "spec", "")),
    )


def mask_state(model: Any, mask: UWMMask) -> dict[str, str]:
    """Per masked layer: ``"edited"``, ``"original"`` or ``"mismatch"`` (by checksum)."""
    out = {}
    for key, lm in mask.layers.items():
        w = _layer_module(model, lm.tower, lm.name).weight
        if tuple(w.shape) != lm.shape:
            out[key] = "mismatch"
            continue
        sha = weight_sha256(w)
        out[key] = (
            "edited"
            if sha == lm.sha256_edited
            else "original"
            if sha == lm.sha256_original
            else "mismatch"
        )
    return out


def revert(model: Any, mask: UWMMask | str | os.PathLike[str]) -> dict[str, int]:
    """Undo a UWM edit in place, restoring bit-identical weights; returns counts per layer.

    ``mask`` is a :class:`UWMMask` or a folder (the edit output dir or its ``artifacts/``).
    Every layer is checked first: if any layer's current checksum is not the recorded *edited*
    checksum (another model, an already reverted one, a different edit), :class:`InputError` is
    raised and nothing is changed.
    """
    if not isinstance(mask, UWMMask):
        mask = UWMMask.load(mask)
    states = mask_state(model, mask)
    bad = {k: s for k, s in states.items() if s != "edited"}
    if bad:
        first, state = next(iter(bad.items()))
        why = (
            "it already holds the original weights (already reverted, or never edited)"
            if state == "original"
            else "its weights match neither the edited nor the original checksum (a different model?)"
        )
        raise InputError(
            f"cannot revert: {len(bad)} of {len(states)} masked layers are not in the edited "
            f"state, e.g. {first}: {why}. The mask was made on {mask.model_class} "
            f"{mask.model_spec!r}."
        )
    counts = {}
    with torch.no_grad():
        for key, lm in mask.layers.items():
            w = _layer_module(model, lm.tower, lm.name).weight
            flat = w.data.view(-1)
            idx = lm.indices.to(flat.device)
            if lm.original_values is not None:
                flat[idx] = lm.original_values.to(device=flat.device, dtype=flat.dtype)
            else:
                flat[idx] = -flat[idx]
            if weight_sha256(w) != lm.sha256_original:
                raise InputError(f"revert of {key} did not restore the original checksum")
            counts[key] = lm.n_selected
    return counts


def revert_edit(
    model: Any, edit_dir: str | os.PathLike[str], model_spec: str | None = None
) -> tuple[EditResult, list[Path]]:
    """Undo the UWM edit saved in ``edit_dir`` on an already loaded ``model``, in place.

    This is the method's ``revert`` hook, called by :func:`relsafe.api.revert` (which loads the
    model, checks the output folder and writes the result with provenance). ``edit_dir`` is the
    edit's output folder (or its ``artifacts/``, or the mask JSON); ``model_spec`` names the model
    in the record and in errors (default: ``model.spec``).

    If every masked layer holds the edited weights they are restored (checksums verified,
    ``action="reverted"``); if every one already holds the original weights (the model the edit
    was made on) nothing changes (``action="unchanged"``). Mixed or foreign weights raise
    :class:`InputError` and change nothing.

    Returns:
        ``(EditResult, files read)``: the result's record has ``method="uwm-revert"``,
        ``config={"revert": mask folder, "model": spec, "action": ...}`` and ``params_touched``
        (weights restored); the files are the mask's JSON and tensors, for provenance.
    """
    t0 = time.perf_counter()
    mask_dir = find_mask_dir(edit_dir)
    mask = UWMMask.load(mask_dir)
    spec = str(model_spec) if model_spec is not None else str(getattr(model, "spec", ""))
    states = mask_state(model, mask)
    kinds = set(states.values())
    if kinds == {"edited"}:
        counts = revert(model, mask)
        action = "reverted"
        touched = sum(counts.values())
    elif kinds == {"original"}:
        action = "unchanged"
        touched = 0
    else:
        bad = [k for k, s in states.items() if s == "mismatch"][:3]
        merged = Path(edit_dir) / "merged"
        raise InputError(
            f"model {spec or type(model).__name__} does not carry this UWM edit: layers "
            f"{bad or list(states)[:3]} match neither the recorded edited nor the original "
            f"weights. Pass the edited checkpoint ({merged}) or the model the edit was made on "
            f"({mask.model_spec or mask.model_class})."
        )
    record = EditRecord(
        method="uwm-revert",
        config={"revert": str(mask_dir), "model": spec, "action": action},
        model=spec,
        params_touched=touched,
        params_total=int(sum(p.numel() for p in model.parameters())),
        time_s=time.perf_counter() - t0,
        extra={"layers": len(mask.layers), "mask_n_selected": mask.n_selected, "alpha": mask.alpha},
    )
    return EditResult(model=model, record=record), [mask_dir / MASK_JSON, mask_dir / MASK_TENSORS]
