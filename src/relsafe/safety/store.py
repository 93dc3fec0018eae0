"""A fitted unsafe classifier on disk: ``classifier.json`` + ``classifier.safetensors`` in a folder.

The folder ``relsafe classify fit`` writes, by default beside the model it was fitted for
(:func:`default_classifier_dir`: ``<edit folder>/unsafe-classifier`` or ``<model folder>/
unsafe-classifier``). No pickle: tensors go to safetensors, everything else to JSON. The JSON
carries the fingerprint of the model the classifier was fitted on, and :func:`load_classifier`
refuses it for any other model (the scores would be meaningless).

``classifier.json``::

    {"format": "relsafe-unsafe-classifier", "format_version": 1, "kind": "probe",
     "thresholds": {"text": 0.12, "image": -0.3}, "fitted_on": {"text": 532, "image": 1064},
     "score_scale": {"text": 1.0, "image": 1.0}, "model_fingerprint": "...",
     "policy": "default", "metrics": {"text": {"auroc": 0.99, ...}}, "provenance": {...}}

Tensors: ``prompt.unsafe`` / ``prompt.safe`` for the ``prompt`` kind; ``probe.<modality>.{w,b,
mean,std}`` for the ``probe`` kind; nothing for ``radius``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from relsafe.errors import CheckpointError
from relsafe.eval.unsafe_cls import MODALITIES, SCORERS, LinearProbe, UnsafeClassifier

__all__ = [
    "CLASSIFIER_DIR",
    "FORMAT",
    "default_classifier_dir",
    "load_classifier",
    "save_classifier",
]

CLASSIFIER_DIR = "unsafe-classifier"
FORMAT = "relsafe-unsafe-classifier"
FORMAT_VERSION = 1
_JSON = "classifier.json"
_TENSORS = "classifier.safetensors"


def default_classifier_dir(spec: str | os.PathLike[str]) -> Path | None:
    """Where the classifier of model ``spec`` lives by default: ``<folder>/unsafe-classifier``
    when ``spec`` is a folder (an edit output folder or a model folder), else None (a bundled
    name or a hub id has no folder of its own to write into)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path / CLASSIFIER_DIR
    return None


def _tensors(clf: UnsafeClassifier) -> dict[str, torch.Tensor]:
    if clf.kind == "prompt":
        return {
            "prompt.unsafe": clf.params["unsafe"].float().contiguous(),
            "prompt.safe": clf.params["safe"].float().contiguous(),
        }
    if clf.kind == "probe":
        out = {}
        for m, probe in clf.params.items():
            for name in ("w", "b", "mean", "std"):
                out[f"probe.{m}.{name}"] = getattr(probe, name).double().reshape(-1).contiguous()
        return out
    return {}


def save_classifier(
    clf: UnsafeClassifier,
    folder: str | os.PathLike[str],
    *,
    model_fingerprint: str,
    score_scale: dict[str, float] | None = None,
    policy: str | None = None,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``clf`` to ``folder`` whole (built in a sibling and renamed into place, so a killed
    write leaves the previous classifier or none, never half of one). ``metrics``: the fit's own
    numbers (``{modality: {metric: value}}``), kept for the record. Returns the folder."""
    from safetensors.torch import save

    from relsafe.utils_io import atomic_dir

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": clf.kind,
        "thresholds": {m: float(t) for m, t in clf.thresholds.items()},
        "fitted_on": {m: int(n) for m, n in clf.fitted_on.items()},
        "score_scale": {m: float(s) for m, s in (score_scale or {}).items()},
        "model_fingerprint": model_fingerprint,
        "policy": policy,
        "metrics": metrics or {},
        "provenance": provenance or {},
    }
    with atomic_dir(folder) as tmp:
        (tmp / _TENSORS).write_bytes(save(_tensors(clf)))
        (tmp / _JSON).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    return Path(folder)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckpointError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def load_classifier(
    folder: str | os.PathLike[str], model_fingerprint: str | None = None
) -> tuple[UnsafeClassifier, dict[str, Any]]:
    """Read a classifier folder; returns ``(classifier, metadata)``.

    Refuses (``CheckpointError`` naming the file) a missing or malformed file, a format it does
    not know, tensors of the wrong shape, and, when ``model_fingerprint`` is given, a classifier
    fitted on a different model."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from relsafe.utils_io import read_format_file

    folder = Path(folder).expanduser()
    jpath, tpath = folder / _JSON, folder / _TENSORS
    if not jpath.is_file() or not tpath.is_file():
        raise CheckpointError(
            f"{folder} is not an unsafe-classifier folder (it needs {_JSON} and {_TENSORS}; "
            "write one with `relsafe classify fit`)"
        )
    meta = read_format_file(jpath, FORMAT, FORMAT_VERSION, "unsafe-classifier")
    kind = meta.get("kind")
    if kind not in SCORERS:
        raise CheckpointError(f"{jpath}: kind {kind!r} is not one of {list(SCORERS)}")
    fp = meta.get("model_fingerprint")
    if model_fingerprint is not None and fp != model_fingerprint:
        raise CheckpointError(
            f"{folder} was fitted on a different model (fingerprint {str(fp)[:12]}..., this "
            f"model's is {model_fingerprint[:12]}...): refit it with `relsafe classify fit`"
        )
    thresholds_raw = meta.get("thresholds")
    if not isinstance(thresholds_raw, dict) or not thresholds_raw:
        raise CheckpointError(f"{jpath}: 'thresholds' must map modalities to numbers")
    thresholds = {}
    for m, t in thresholds_raw.items():
        if m not in MODALITIES:
            raise CheckpointError(f"{jpath}: unknown modality {m!r} in thresholds")
        thresholds[m] = _number(t, f"{jpath}: thresholds.{m}")
    try:
        tensors = load(tpath.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{tpath}: unreadable safetensors file ({e})") from e
    params: dict[str, Any] = {}
    if kind == "prompt":
        try:
            params = {"unsafe": tensors["prompt.unsafe"], "safe": tensors["prompt.safe"]}
        except KeyError as e:
            raise CheckpointError(f"{tpath}: missing tensor {e.args[0]}") from e
        for k, v in params.items():
            if v.ndim != 2 or not torch.isfinite(v).all():
                raise CheckpointError(f"{tpath}: prompt.{k} must be a finite (P, D) matrix")
        if params["unsafe"].shape[1] != params["safe"].shape[1]:
            raise CheckpointError(f"{tpath}: prompt embeddings disagree on their dimension")
    elif kind == "probe":
        for m in thresholds:
            try:
                w, b, mean, std = (tensors[f"probe.{m}.{n}"] for n in ("w", "b", "mean", "std"))
            except KeyError as e:
                raise CheckpointError(f"{tpath}: missing tensor {e.args[0]}") from e
            d = w.numel()
            if b.numel() != 1 or mean.numel() != d or std.numel() != d:
                raise CheckpointError(f"{tpath}: probe.{m} tensors have inconsistent shapes")
            if not all(torch.isfinite(x).all() for x in (w, b, mean, std)) or (std <= 0).any():
                raise CheckpointError(f"{tpath}: probe.{m} holds non-finite or zero-spread values")
            params[m] = LinearProbe(w.double(), b.double().reshape(()), mean.double(), std.double())
    fitted_on = {
        str(m): int(n) for m, n in (meta.get("fitted_on") or {}).items() if isinstance(n, int)
    }
    scale_raw = meta.get("score_scale") or {}
    meta["score_scale"] = {
        m: _number(s, f"{jpath}: score_scale.{m}") for m, s in scale_raw.items() if m in MODALITIES
    }
    return UnsafeClassifier(kind, thresholds, params, fitted_on), meta
