"""The engine's compute precision: what the CPU can do, what ``auto`` picks, and the check.

* :func:`cpu_has_bf16` reads the CPU's flags (``avx512_bf16`` or ``amx_bf16`` in
  ``/proc/cpuinfo``; on other systems torch's oneDNN bf16 probe). Without bf16 units a bfloat16
  autocast is *emulated* and slower than float32, so ``auto`` only uses it where they exist.
* :func:`choose_precision` turns a requested ``--dtype`` (``auto``, ``float32``, ``bfloat16``,
  ``float16``, ``int8-text``) into what the engine runs. ``auto`` is bfloat16 autocast on CUDA; on
  a CPU with bf16 units it is bfloat16 only when :func:`probe_cosine` says that bfloat16's
  embeddings agree with float32's on a small probe batch (min cosine >= :data:`MIN_COSINE`), else
  float32 with a warning. Verdicts are cached per model fingerprint (in the process, and in
  ``precision.json`` of the engine's cache folder when there is one), so the probe runs once.
  ``RELSAFE_CPU_BF16=0`` in the environment makes ``auto`` float32 on every CPU (bfloat16
  results depend on the batch's size and composition, at about 1e-3 on a score; set it where
  scores must not depend on how inputs were batched, or on which machine ran them).
* ``int8-text`` runs the text tower with dynamic int8 ``nn.Linear`` layers
  (:func:`int8_text_model`; ``torch.ao.quantization.quantize_dynamic``) and images in float32;
  it is used only when its own probe passes (else float32, with a warning). ``auto`` never picks
  it: it is an opt-in speed/quality trade.
* :func:`fit_threads` caps torch's intra-op threads at the cores this process may use (divided
  among the processes of a launch on one machine) unless ``OMP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from relsafe.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "CPU_BF16_ENV",
    "DTYPE_CHOICES",
    "MIN_COSINE",
    "Precision",
    "choose_precision",
    "cpu_has_bf16",
    "fit_threads",
    "int8_text_model",
    "probe_cosine",
    "resolve_dtype",
]

MIN_COSINE = 0.999
"""A reduced precision is used only if every probe embedding has cosine >= this to float32's."""

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "int8-text")

CPU_BF16_ENV = "RELSAFE_CPU_BF16"
"""``0`` / ``false`` / ``no`` / ``off``: ``auto`` does not use a CPU's bf16 units (float32)."""


def _cpu_bf16_for_auto() -> bool:
    """May ``auto`` use bfloat16 on this CPU: it has bf16 units and ``RELSAFE_CPU_BF16`` allows."""
    if os.environ.get(CPU_BF16_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return cpu_has_bf16()


_VERDICTS: dict[str, dict[str, Any]] = {}  # "fingerprint|device|mode" -> verdict (this process)
VERDICT_FILE = "precision.json"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on CUDA, float32 elsewhere; float16 needs CUDA."""
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif dtype == "auto":
        out = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif dtype in _DTYPES:
        out = _DTYPES[dtype]
    else:
        raise InputError(f"unknown dtype {dtype!r}; use one of 'auto', {', '.join(_DTYPES)}")
    if out not in _DTYPES.values():
        raise InputError(f"unsupported compute dtype {out}; use one of {', '.join(_DTYPES)}")
    if out == torch.float16 and device.type != "cuda":
        raise InputError("float16 compute needs CUDA; use bfloat16 or float32 on CPU")
    return out


@dataclass(frozen=True)
class Precision:
    """What the engine computes in: the autocast dtype, and whether texts run int8 (``mode``
    ``int8-text``). ``min_cosine`` is the probe's verdict when one ran (None otherwise)."""

    mode: str  # "float32" | "bfloat16" | "float16" | "int8-text"
    autocast: torch.dtype
    min_cosine: float | None = None
    reason: str = ""


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return None


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Does this CPU compute bfloat16 natively (AVX512-BF16 or AMX-BF16)?"""
    flags = _cpuinfo_flags(cpuinfo)
    if flags is not None:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def fit_threads(local_processes: int = 1) -> int:
    """Cap torch's intra-op threads at this process's share of the cores it may run on (its CPU
    affinity, divided among ``local_processes``); returns the thread count.

    An explicit ``OMP_NUM_THREADS`` wins (nothing is changed)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    want = max(1, cores // max(1, local_processes))
    if torch.get_num_threads() > want:  # only ever fewer: torch's default is the physical cores
        torch.set_num_threads(want)
    return torch.get_num_threads()


def int8_text_model(model: Any) -> Any:
    """A copy of ``model`` whose text tower's ``nn.Linear`` layers are dynamic int8; every other
    parameter and buffer is shared with ``model`` (not copied). CPU only."""
    from torch.ao.quantization import quantize_dynamic

    text = model.text_tower
    text_ids = {id(t) for t in list(text.parameters()) + list(text.buffers())}
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in text_ids:
            memo[id(t)] = t  # shared, not copied
    clone = copy.deepcopy(model, memo)
    with warnings.catch_warnings():  # torch marks its quantized tensors as deprecated
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        quantize_dynamic(clone.text_tower, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    clone.eval()
    return clone


def probe_cosine(
    run: Callable[[str, Any], torch.Tensor], model: Any, modalities: tuple[str, ...]
) -> float:
    """Min cosine between ``run(mode, inputs)`` and float32's, over a fixed probe batch.

    ``run(mode, (modality, inputs))`` embeds one prepared batch in the given mode. The probe is
    16 varied captions and 8 seeded random-pixel images at the model's size."""
    texts = [
        f"{a} {b} on the {c}"
        for a, b, c in zip(
            ["a photo of", "a drawing of", "two", "a red", "an old", "a small", "the", "some"] * 2,
            ["dogs", "a man", "cars", "a cat", "trees", "a woman", "boats", "birds"] * 2,
            ["beach", "street", "table", "grass", "roof", "river", "road", "hill"] * 2,
            strict=True,
        )
    ]
    g = torch.Generator().manual_seed(0)
    s = int(model.image_size)
    pix = torch.rand(8, 3, s, s, generator=g) * 2 - 1
    worst = 1.0
    for modality in modalities:
        inputs = model.tokenize(texts) if modality == "text" else pix
        ref = run("float32", (modality, inputs))
        got = run("probe", (modality, inputs))
        cos = torch.nn.functional.cosine_similarity(ref.float(), got.float(), dim=-1)
        worst = min(worst, float(cos.min()))
    return worst


def _verdict_path(cache_dir: Path | None) -> Path | None:
    return cache_dir / VERDICT_FILE if cache_dir is not None else None


def _load_verdicts(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("ignoring unreadable precision verdicts in %s", path)
        return {}
    return data if isinstance(data, dict) else {}


def _store_verdict(path: Path | None, key: str, verdict: dict[str, Any]) -> None:
    _VERDICTS[key] = verdict
    if path is None:
        return
    from relsafe.utils_io import atomic_write_json

    data = _load_verdicts(path)
    data[key] = verdict
    try:
        atomic_write_json(path, data)
    except OSError as e:  # a read-only cache folder: the in-process verdict still holds
        log.warning("could not record the precision verdict in %s: %s", path, e)


def choose_precision(
    requested: str | torch.dtype,
    device: torch.device,
    *,
    fingerprint: Callable[[], str] | None = None,
    probe: Callable[[str], float] | None = None,
    cache_dir: Path | None = None,
    bf16_units: Callable[[], bool] | None = None,
) -> Precision:
    """Resolve ``requested`` on ``device`` (see the module docs).

    ``probe(mode)`` returns the min cosine of ``mode`` (``bfloat16`` / ``int8-text``) against
    float32 on the probe batch; without it (or a ``fingerprint``) no check runs and ``auto`` on
    CPU is float32. ``bf16_units`` replaces :func:`cpu_has_bf16` (tests). Forced ``bfloat16`` / ``float32`` / ``float16`` are used as asked."""
    if isinstance(requested, torch.dtype):
        names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
        if requested not in names:
            raise InputError(f"unsupported compute dtype {requested}; use one of {DTYPE_CHOICES}")
        requested = names[requested]
    if requested not in DTYPE_CHOICES:
        raise InputError(f"unknown dtype {requested!r}; use one of {', '.join(DTYPE_CHOICES)}")
    if requested == "float16" and device.type != "cuda":
        raise InputError("float16 compute needs CUDA; use bfloat16 or float32 on CPU")
    if requested == "int8-text" and device.type != "cpu":
        raise InputError("int8-text is a CPU mode (dynamic int8 kernels); use auto on CUDA")
    if requested in ("float32", "bfloat16", "float16"):
        return Precision(requested, getattr(torch, requested), reason="requested")
    if requested == "auto":
        if device.type == "cuda":
            return Precision("bfloat16", torch.bfloat16, reason="CUDA")
        if not (bf16_units or _cpu_bf16_for_auto)():
            return Precision(
                "float32",
                torch.float32,
                reason=f"CPU without bf16 units (avx512_bf16/amx_bf16) or {CPU_BF16_ENV}=0",
            )
        mode = "bfloat16"
    else:
        mode = "int8-text"
    if probe is None or fingerprint is None:
        return Precision("float32", torch.float32, reason="no probe to check reduced precision")
    key = f"{fingerprint()}|{device.type}|{mode}"
    path = _verdict_path(cache_dir)
    verdict = _VERDICTS.get(key) or _load_verdicts(path).get(key)
    if not isinstance(verdict, dict) or not isinstance(verdict.get("min_cosine"), float):
        verdict = {"min_cosine": float(probe(mode)), "threshold": MIN_COSINE}
        _store_verdict(path, key, verdict)
    cos = float(verdict["min_cosine"])
    if cos >= MIN_COSINE:
        autocast = torch.bfloat16 if mode == "bfloat16" else torch.float32
        return Precision(mode, autocast, cos, reason=f"probe min cosine {cos:.5f}")
    log.warning(
        "%s embeddings differ from float32 (probe min cosine %.5f < %.3f): using float32",
        mode,
        cos,
        MIN_COSINE,
    )
    return Precision("float32", torch.float32, cos, reason=f"{mode} failed the probe ({cos:.5f})")
