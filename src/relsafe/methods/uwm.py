"""Unsafe Weights Manipulation (UWM): training-free safety by negating unsafe-specific weights.

From "Safe Vision-Language Models via Unsafe Weights Manipulation" (D'Incà et al., arXiv
2503.11742), Sec. 4 (the method) and its official code, as restated in ``METHODS.md`` section 3.

Pipeline (one forward pass over a paired calibration set, then one in-place edit):

1. **Layers** (Sec. 4, "where to look"): per tower, the ``nn.Linear`` layers named by the model's
   preset (``preset.text_uwm`` / ``preset.vision_uwm``: for CLIP the text attention ``out_proj`` and
   the vision ``mlp.fc2`` of every block), overridable with ``text_layers`` / ``vision_layers``
   globs relative to the tower. Only weights, never biases.
2. **Calibration**: pairs (S_b, U_b) of safe/unsafe texts for the text tower and (V_b, G_b) of
   safe/unsafe images for the vision tower; the towers are scored independently. Each batch of
   pairs is one forward pass of ``[safe_1..safe_B; unsafe_1..unsafe_B]``; forward *pre*-hooks read
   each targeted layer's input ``X_b`` (tokens x d_in) and keep only per-sample vectors:
   ``a_b[j] = ||X_b[:, j]||_2`` over tokens and ``sig_b[j] = std_tokens(X_b[:, j]) + 1e-8`` (text:
   real tokens only, from the attention mask).
3. **Score** (Sec. 4, information-flow importance): with ``M_b = a_b[j] |W_ij|``,
   ``out_b[i] = mean_j M_b[i, j]``, ``in_b[j] = mean_i M_b[i, j]`` and
   ``Phi_b = out_b[i] in_b[j] / sig_b[j]``, ``Score = mean_b Phi^u_b / Phi^s_b``. The ratio factorises
   into ``R_b[i] = out^u_b[i] / out^s_b[i]`` (B x d_out) and
   ``C_b[j] = (a^u_b[j] / sig^u_b[j]) / (a^s_b[j] / sig^s_b[j])`` (B x d_in; the column mean of
   ``|W|`` in ``in_b`` cancels), so ``Score = R^T C / B``: one matmul per batch, never a
   per-sample d_out x d_in tensor. Text scores are multiplied by ``|W|`` (the paper's prior; it hurts
   vision, so ``vision_prior`` is off by default).
4. **Selection** (Sec. 4, adaptive threshold): normalise a layer's scores to sum to 1, sort
   descending and take the shortest prefix holding ``tau`` (2%) of the mass (the code's
   ``sparsity = 0.98``); or the top ``fraction`` by count. Per layer (default) or pooled over all
   targeted layers of a tower (``scope="global"``).
5. **Manipulation**: ``W[mask] *= alpha`` in place (``alpha = -1`` negates, ``0`` prunes).

The mask (:class:`UWMMask`) records, per layer, the selected flat indices (int64, or packed bits
when smaller), the SHA-256 of the original and of the edited weight, shape, dtype and alpha, plus the
original values when ``alpha != -1`` (negation is its own exact inverse in floating point; any other
factor is not). :func:`revert` restores bit-identical weights and refuses a model whose weights are
not the recorded edited ones.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from relsafe.config import to_dict
from relsafe.data.images import to_pil
from relsafe.errors import ConfigError, InputError
from relsafe.methods.base import EditRecord, EditResult, register_method

log = logging.getLogger(__name__)

__all__ = [
    "MASK_JSON",
    "MASK_TENSORS",
    "Calibration",
    "CalibrationData",
    "LayerMask",
    "UWMConfig",
    "UWMMask",
    "apply_selection",
    "calibration_data",
    "compute_scores",
    "factorised_score",
    "find_mask_dir",
    "mask_state",
    "pair_factors",
    "revert",
    "revert_cli",
    "select_weights",
    "target_layers",
    "token_stats",
    "top_mass_indices",
    "uwm",
    "weight_sha256",
]

TOWERS = ("text", "vision")
STD_EPS = 1e-8  # added to the token std (METHODS.md section 3)
RATIO_EPS = 1e-12  # guards exact zeros in ratio denominators only
MASK_JSON = "uwm_mask.json"
MASK_TENSORS = "uwm_mask.safetensors"
MASK_FORMAT = "relsafe-uwm-mask"
MASK_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class UWMConfig:
    """Configuration of :func:`uwm` (every key is documented in ``docs/uwm.md``).

    Attributes:
        towers: which towers to edit, a non-empty subset of ``["text", "vision"]``.
        text_layers / vision_layers: ``fnmatch`` globs relative to the tower; ``None`` takes the
            model preset's ``text_uwm`` / ``vision_uwm``.
        selection: ``"mass"`` (shortest prefix of the sorted normalised scores holding ``tau`` of
            the mass, the paper's adaptive threshold) or ``"topk"`` (``fraction`` of the weights
            by count).
        tau: mass share in (0, 1) for ``selection="mass"`` (paper: 0.02; 0.085 for LLaVA vision).
        fraction: count share in (0, 1) for ``selection="topk"``.
        scope: ``"per_layer"`` (each layer separately, the paper's choice) or ``"global"`` (pooled
            over all targeted layers of one tower; towers are never pooled together).
        alpha: factor applied to the selected weights; -1 negates (the paper), 0 prunes.
        text_prior / vision_prior: multiply that tower's scores by ``|W|``.
        n_per_pair: RelWorld calibration quadruplets per (unsafe, counterpart) pair of the policy.
        size: RelWorld image side in pixels.
        seed: added to the ``EDIT`` base seed for the calibration data.
        batch_size: pairs per forward pass (each pass holds ``2 * batch_size`` inputs).
        dtype: calibration compute dtype: ``"auto"`` (bfloat16 autocast on CUDA, float32 on CPU),
            ``"float32"`` or ``"bfloat16"``; statistics are always accumulated in float32.
    """

    towers: list[str] = field(default_factory=lambda: ["text", "vision"])
    text_layers: list[str] | None = None
    vision_layers: list[str] | None = None
    selection: Literal["mass", "topk"] = "mass"
    tau: float = 0.02
    fraction: float = 0.02
    scope: Literal["per_layer", "global"] = "per_layer"
    alpha: float = -1.0
    text_prior: bool = True
    vision_prior: bool = False
    n_per_pair: int = 64
    size: int = 64
    seed: int = 0
    batch_size: int = 32
    dtype: str = "auto"

    def validate(self) -> None:
        towers = list(self.towers)
        if not towers:
            raise ConfigError("towers is empty: name at least one of 'text', 'vision'")
        bad = [t for t in towers if t not in TOWERS]
        if bad:
            raise ConfigError(f"towers {bad} unknown; use a subset of {list(TOWERS)}")
        if len(set(towers)) != len(towers):
            raise ConfigError(f"towers {towers} lists a tower twice")
        if self.selection not in ("mass", "topk"):
            raise ConfigError(f"selection must be 'mass' or 'topk', got {self.selection!r}")
        if self.scope not in ("per_layer", "global"):
            raise ConfigError(f"scope must be 'per_layer' or 'global', got {self.scope!r}")
        for name in ("tau", "fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < float(v) < 1.0:
                raise ConfigError(f"{name} must be a fraction strictly between 0 and 1, got {v!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(float(a)):
            raise ConfigError(f"alpha must be a finite number, got {a!r}")
        for name in ("n_per_pair", "size", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")
        for name in ("text_layers", "vision_layers"):
            globs = getattr(self, name)
            if globs is not None and (
                isinstance(globs, str) or not all(isinstance(g, str) and g for g in globs)
            ):
                raise ConfigError(f"{name} must be a list of non-empty glob strings, got {globs!r}")


# ---------------------------------------------------------------------------------------------
# Calibration data
# ---------------------------------------------------------------------------------------------


@dataclass
class CalibrationData:
    """Paired calibration inputs: ``S[b]`` pairs with ``U[b]``, ``V[b]`` with ``G[b]``.

    Images are PIL images, file paths or ``uint8 (H, W, 3)`` arrays; ``V``/``G`` may be ``None``
    when only the text tower is calibrated.
    """

    S: list[str]
    U: list[str]
    V: list[Any] | None
    G: list[Any] | None
    source: str = "data"
    dropped_image_pairs: int = 0


def _field(data: Any, key: str) -> Any:
    if isinstance(data, Mapping):
        return data.get(key)
    return getattr(data, key, None)


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray | torch.Tensor):
        if value.ndim != 4:
            raise InputError(
                f"calibration images as an array must be uint8 (N, H, W, 3), got shape {tuple(value.shape)}"
            )
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return list(arr)
    if isinstance(value, str):
        raise InputError("calibration texts/images must be lists, got a single string")
    return list(value)


def calibration_data(policy: Any, cfg: UWMConfig, data: Any = None) -> CalibrationData:
    """The calibration pairs: from ``data`` when given, else RelWorld quadruplets of ``policy``.

    RelWorld: ``cfg.n_per_pair`` quadruplets per ``(unsafe, counterpart)`` pair of the policy, train
    phrasings and training styles only, base seed ``EDIT + cfg.seed`` (never the TEST seed).
    ``data``: a mapping or object with ``S``, ``U`` (texts) and ``V``, ``G`` (images), e.g. a
    :class:`relsafe.data.visu.VisuData`; image pairs with a missing side (``None``) are dropped
    from the vision calibration.

    Raises :class:`InputError` for empty or one-sided calibration sets of a requested tower.
    """
    if data is None:
        if policy is None:
            raise InputError("uwm needs a safety policy (--policy) or calibration data (data=...)")
        from relsafe.data.quadruplets import build_quadruplets
        from relsafe.world import splits

        q = build_quadruplets(policy, cfg.n_per_pair, splits.EDIT + cfg.seed, size=cfg.size)
        return CalibrationData(S=q.S, U=q.U, V=q.V, G=q.G, source=q.source)
    S, U = _as_list(_field(data, "S")), _as_list(_field(data, "U"))
    V, G = _as_list(_field(data, "V")), _as_list(_field(data, "G"))
    dropped = 0
    if V is not None and G is not None and len(V) == len(G):
        keep = [i for i in range(len(V)) if V[i] is not None and G[i] is not None]
        dropped = len(V) - len(keep)
        if dropped:
            V, G = [V[i] for i in keep], [G[i] for i in keep]
    return CalibrationData(
        S or [],
        U or [],
        V,
        G,
        source=str(_field(data, "source") or "data"),
        dropped_image_pairs=dropped,
    )


def _check_pairs(cal: CalibrationData, tower: str) -> int:
    """Number of pairs for ``tower``; errors for empty, one-sided or unequal calibration sets."""
    safe, unsafe, what = (
        (cal.S, cal.U, "texts (S, U)") if tower == "text" else (cal.V, cal.G, "images (V, G)")
    )
    n_s, n_u = len(safe or []), len(unsafe or [])
    if n_s == 0 and n_u == 0:
        extra = (
            f" ({cal.dropped_image_pairs} image pairs were dropped for a missing side)"
            if tower == "vision" and cal.dropped_image_pairs
            else ""
        )
        raise InputError(
            f"UWM calibration of the {tower} tower needs paired safe and unsafe {what}; got none"
            f"{extra}. Drop the tower from `towers` or provide the data."
        )
    if n_s == 0 or n_u == 0:
        raise InputError(
            f"UWM calibration of the {tower} tower is one-sided: {n_s} safe and {n_u} unsafe "
            f"{what}; the score is a ratio of unsafe to safe statistics and needs both"
        )
    if n_s != n_u:
        raise InputError(
            f"UWM calibration of the {tower} tower needs paired {what}: got {n_s} safe and {n_u} "
            "unsafe (item b of each must belong together)"
        )
    if tower == "text":
        for name, texts in (("S", safe), ("U", unsafe)):
            for i, t in enumerate(texts or []):
                if not isinstance(t, str) or not t:
                    raise InputError(f"calibration text {name}[{i}] is {t!r}, not a non-empty str")
    return n_s


# ---------------------------------------------------------------------------------------------
# Statistics and scores (pure functions, documented with shapes)
# ---------------------------------------------------------------------------------------------


def token_stats(
    x: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample input statistics of a linear layer.

    Args:
        x: the layer input ``(B, T, d_in)`` (``(B, d_in)`` is read as one token; extra middle
            dimensions are flattened into tokens).
        mask: optional ``(B, T)`` mask of real tokens (text: the attention mask).

    Returns:
        ``a (B, d_in)``: L2 norm over (real) tokens; ``sig (B, d_in)``: standard deviation over
        (real) tokens, Bessel-corrected like ``torch.std`` (0 for a single token), plus ``1e-8``.
        Both float32.
    """
    x = x.detach().float()
    if x.ndim == 2:
        x = x[:, None, :]
    elif x.ndim > 3:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    elif x.ndim != 3:
        raise InputError(f"a linear layer input must be (B, T, d), got shape {tuple(x.shape)}")
    if mask is None:
        a = torch.linalg.vector_norm(x, dim=1)
        n_tok = x.shape[1]
        sig = x.std(dim=1, correction=1 if n_tok > 1 else 0)
        return a, sig + STD_EPS
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise InputError(
            f"token mask of shape {tuple(mask.shape)} does not match the layer input "
            f"{tuple(x.shape)}: the hooked layer does not run over the tokenised sequence"
        )
    m = mask.to(device=x.device, dtype=x.dtype)[..., None]  # (B, T, 1)
    n = m.sum(dim=1)  # (B, 1)
    xm = x * m
    a = torch.linalg.vector_norm(xm, dim=1)
    mean = xm.sum(dim=1) / n.clamp_min(1.0)
    var = ((x - mean[:, None, :]).square() * m).sum(dim=1) / (n - 1.0).clamp_min(1.0)
    return a, var.sqrt() + STD_EPS


def pair_factors(
    a_s: torch.Tensor,
    sig_s: torch.Tensor,
    a_u: torch.Tensor,
    sig_u: torch.Tensor,
    w_abs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factorised per-pair ratio ``Phi^u_b / Phi^s_b = R_b[i] * C_b[j]``.

    Args:
        a_s, sig_s, a_u, sig_u: ``(B, d_in)`` statistics of the safe and unsafe item of each pair.
        w_abs: ``|W|`` of the layer, ``(d_out, d_in)``.

    Returns:
        ``R (B, d_out) = out^u / out^s`` with ``out_b = |W| a_b / d_in``, and
        ``C (B, d_in) = (in^u / sig^u) / (in^s / sig^s) = (a^u / sig^u) / (a^s / sig^s)``
        (``in_b[j] = a_b[j] mean_i |W_ij|``; the column mean cancels). Exact zeros in the
        denominators are clamped to ``1e-12``.
    """
    d_in = w_abs.shape[1]
    out_s = a_s @ w_abs.T / d_in
    out_u = a_u @ w_abs.T / d_in
    r = out_u / out_s.clamp_min(RATIO_EPS)
    c = (a_u / sig_u) / (a_s / sig_s).clamp_min(RATIO_EPS)
    return r, c


def factorised_score(
    a_s: torch.Tensor,
    sig_s: torch.Tensor,
    a_u: torch.Tensor,
    sig_u: torch.Tensor,
    w_abs: torch.Tensor,
) -> torch.Tensor:
    """``Score (d_out, d_in) = mean_b Phi^u_b / Phi^s_b = R^T C / B`` (no prior); see :func:`pair_factors`."""
    r, c = pair_factors(a_s, sig_s, a_u, sig_u, w_abs)
    return r.T @ c / r.shape[0]


# ---------------------------------------------------------------------------------------------
# Layers and hooks
# ---------------------------------------------------------------------------------------------


def _tower_module(model: Any, tower: str) -> nn.Module:
    if tower not in TOWERS:
        raise InputError(f"unknown tower {tower!r}; use one of {list(TOWERS)}")
    return model.text_tower if tower == "text" else model.vision_tower


def target_layers(
    model: Any, tower: str, globs: Sequence[str] | None = None
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of ``tower`` that UWM scores: ``globs`` or the model's preset.

    Raises :class:`InputError` when there are no globs or they match no linear layer.
    """
    from relsafe.models.base import match_linear_layers

    if globs is None:
        preset = getattr(model, "preset", None)
        globs = tuple(getattr(preset, f"{tower}_uwm", ()) or ())
        if not globs:
            raise InputError(
                f"{type(model).__name__}'s layer preset names no UWM layers for the {tower} tower; "
                f"set `{tower}_layers` to globs relative to the tower"
            )
    globs = list(globs)
    if not globs:
        raise InputError(f"`{tower}_layers` is an empty list; give globs or leave it unset")
    found = match_linear_layers(_tower_module(model, tower), globs)
    for name, mod in found.items():
        if not mod.weight.is_contiguous():
            raise InputError(
                f"{tower} layer {name}: its weight is not contiguous; cannot edit it in place"
            )
    return found  # type: ignore[return-value]


class _Recorder:
    """Forward pre-hooks on one tower's targeted layers.

    Each call stores ``(a, sig)`` for the batch, two ``(2B, d_in)`` float32 tensors per layer: the
    only thing kept from the activations (memory O(B x width)). ``mask`` (``(2B, T)`` bool) is set
    before each text forward so the hooks see it.
    """

    def __init__(self, layers: Mapping[str, nn.Module], use_mask: bool) -> None:
        self.layers = dict(layers)
        self.use_mask = use_mask
        self.mask: torch.Tensor | None = None
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.peak_bytes = 0

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def fn(module: nn.Module, args: tuple[Any, ...]) -> None:
            del module
            if name in self.stats:
                raise InputError(f"layer {name} ran twice in one forward pass; UWM expects once")
            x = args[0]
            # a pooled input (B, d), e.g. a text head after mean pooling, has no tokens to mask
            mask = self.mask if self.use_mask and x.ndim == 3 else None
            self.stats[name] = token_stats(x, mask)

        return fn

    def stats_bytes(self) -> int:
        return sum(a.numel() * a.element_size() * 2 for a, _ in self.stats.values())

    @contextlib.contextmanager
    def attached(self) -> Iterator[_Recorder]:
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self.stats.clear()
            self.mask = None


# ---------------------------------------------------------------------------------------------
# Calibration: one forward pass per batch, scores accumulated as R^T C
# ---------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """Scores and bookkeeping of one calibration run.

    ``scores`` maps ``"tower:layer"`` to a float32 ``(d_out, d_in)`` score (mean over pairs, prior
    applied). ``factor_shapes`` records the shapes of the per-batch factor matrices of each layer
    (``R (B, d_out)``, ``C (B, d_in)``, ``a (2B, d_in)``): the only per-sample tensors ever held.
    """

    scores: dict[str, torch.Tensor]
    n_pairs: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    stats_peak_bytes: int = 0
    score_bytes: int = 0
    factor_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(model: Any, data: CalibrationData, tower: str, lo: int, hi: int) -> Any:
    """Inputs of pairs ``lo:hi`` as one batch ``[safe; unsafe]``: tokens, or pixels (CPU)."""
    if tower == "text":
        return model.tokenize(list(data.S[lo:hi]) + list(data.U[lo:hi]))
    assert data.V is not None and data.G is not None
    b = hi - lo
    items = list(data.V[lo:hi]) + list(data.G[lo:hi])
    pils = [
        to_pil(it, f"calibration image {'V' if k < b else 'G'}[{lo + k % b}]")
        for k, it in enumerate(items)
    ]
    return model.preprocess(pils)


def _prepared(
    model: Any, data: CalibrationData, tower: str, n: int, bs: int, workers: int
) -> Iterator[tuple[int, Any]]:
    """Yield ``(lo, inputs)`` in order while worker threads tokenise / decode and preprocess
    the next batches (PIL and the tokenizers release the GIL); at most ``workers + 1`` ahead."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    starts = iter(range(0, n, bs))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="relsafe-uwm")
    pending: deque[tuple[int, Future[Any]]] = deque()
    try:
        for lo in starts:
            pending.append((lo, pool.submit(_prepare, model, data, tower, lo, min(n, lo + bs))))
            if len(pending) > workers:
                break
        while pending:
            lo, fut = pending.popleft()
            inputs = fut.result()
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(
                    (nxt, pool.submit(_prepare, model, data, tower, nxt, min(n, nxt + bs)))
                )
            yield lo, inputs
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _timed(it: Iterator[Any], waits: list[float]) -> Iterator[Any]:
    """Re-yield ``it``, adding the time spent waiting for each item to ``waits[0]``."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        waits[0] += time.perf_counter() - t0
        yield item


def compute_scores(
    model: Any,
    data: CalibrationData,
    cfg: UWMConfig,
    *,
    progress: bool = False,
) -> Calibration:
    """Score every targeted weight of every tower in ``cfg.towers`` (no gradients).

    Per batch of ``B`` pairs: one forward of the ``2B`` inputs ``[safe; unsafe]``, hooks keep
    ``a, sig (2B, d_in)`` per layer, then per layer ``R (B, d_out)``, ``C (B, d_in)`` and
    ``score_sum += R^T C``. Finally ``score = score_sum / N`` times ``|W|`` where the tower's prior
    is on. Inputs are tokenised / preprocessed by worker threads ahead of the forward loop.
    Timings: ``forward_s`` (forward passes incl. the hooks' per-sample reductions), ``scoring_s``
    (factor matmuls and priors), ``input_wait_s`` (time the loop waited for prepared inputs).
    """
    from tqdm.auto import tqdm

    from relsafe.engine.embed import progress_enabled, resolve_dtype

    device = model.device
    dtype = resolve_dtype(cfg.dtype, device)
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
        contextlib.nullcontext
        if dtype == torch.float32
        else lambda: torch.autocast(device_type=device.type, dtype=dtype)
    )
    was_training = bool(model.training)
    model.eval()
    out = Calibration(scores={}, n_pairs={})
    t_fwd = t_score = 0.0
    waits = [0.0]  # time the forward loop waited for prepared inputs
    workers = min(4, os.cpu_count() or 1)
    try:
        for tower in cfg.towers:
            n = _check_pairs(data, tower)
            globs = cfg.text_layers if tower == "text" else cfg.vision_layers
            layers = target_layers(model, tower, globs)
            rec = _Recorder(layers, use_mask=(tower == "text"))
            sums = {
                name: torch.zeros(mod.weight.shape, dtype=torch.float32, device=mod.weight.device)
                for name, mod in layers.items()
            }
            bs = cfg.batch_size
            bar = tqdm(
                total=n,
                desc=f"uwm calibrate {tower}",
                unit="pair",
                disable=not progress_enabled(progress),
                leave=False,
            )
            with rec.attached(), torch.no_grad():
                # one tokenising thread: a fast tokenizer must not be called concurrently
                n_workers = 1 if tower == "text" else workers
                batches = _prepared(model, data, tower, n, bs, n_workers)
                try:
                    for lo, inputs in _timed(batches, waits):
                        b = min(n, lo + bs) - lo
                        t0 = time.perf_counter()
                        if tower == "text":
                            mask = inputs.get("attention_mask")
                            rec.mask = mask.to(device).bool() if mask is not None else None
                            tokens = {k: v.to(device) for k, v in inputs.items()}
                            with autocast():
                                model.forward_text(tokens)
                        else:
                            with autocast():
                                model.forward_image(inputs.to(device))
                        _sync(device)
                        t1 = time.perf_counter()
                        missing = [name for name in layers if name not in rec.stats]
                        if missing:
                            raise InputError(
                                f"{tower} layers {missing[:3]} never ran during the {tower} forward "
                                "pass; they cannot be scored (check the layer globs)"
                            )
                        held = rec.stats_bytes()  # every layer's (a, sig) of this batch
                        for name, mod in layers.items():
                            a, sig = rec.stats.pop(name)
                            if a.shape[0] != 2 * b:
                                raise InputError(
                                    f"{tower} layer {name} saw a batch of {a.shape[0]} inputs, "
                                    f"expected {2 * b}"
                                )
                            w_abs = mod.weight.detach().float().abs()
                            r, c = pair_factors(a[:b], sig[:b], a[b:], sig[b:], w_abs)
                            sums[name].addmm_(r.T, c)
                            out.factor_shapes[f"{tower}:{name}"] = [
                                tuple(r.shape),
                                tuple(c.shape),
                                tuple(a.shape),
                            ]
                            factor_bytes = (r.numel() + c.numel()) * r.element_size()
                            out.stats_peak_bytes = max(out.stats_peak_bytes, held + factor_bytes)
                            del a, sig, r, c, w_abs
                        _sync(device)
                        t_fwd += t1 - t0
                        t_score += time.perf_counter() - t1
                        bar.update(b)
                finally:
                    batches.close()
            bar.close()
            t0 = time.perf_counter()
            prior = cfg.text_prior if tower == "text" else cfg.vision_prior
            for name, mod in layers.items():
                score = sums.pop(name).div_(n)
                if prior:
                    score.mul_(mod.weight.detach().float().abs())
                out.scores[f"{tower}:{name}"] = score
                out.score_bytes += score.numel() * score.element_size()
            _sync(device)
            t_score += time.perf_counter() - t0
            out.n_pairs[tower] = n
    finally:
        model.train(was_training)
    out.timings = {"forward_s": t_fwd, "scoring_s": t_score, "input_wait_s": waits[0]}
    return out


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


def _check_scores(flat: torch.Tensor, what: str) -> float:
    """The float64 total of ``flat``; errors for empty, non-finite, negative or all-zero scores."""
    if flat.numel() == 0:
        raise InputError(f"{what}: no weights to select from")
    total = float(flat.detach().sum(dtype=torch.float64))
    if not math.isfinite(total):
        raise InputError(f"{what}: scores contain NaN or inf (degenerate calibration inputs?)")
    if float(flat.min()) < 0:
        raise InputError(f"{what}: scores must be non-negative")
    if total <= 0:
        raise InputError(f"{what}: every score is zero; nothing distinguishes unsafe from safe")
    return total


def top_mass_indices(flat: torch.Tensor, tau: float, what: str = "scores") -> torch.Tensor:
    """Indices of the shortest prefix of ``flat`` sorted descending that holds ``tau`` of its mass.

    Equivalent to normalising to sum 1, sorting descending and taking the first ``k`` entries with
    ``k = min{k : cumsum_k >= tau}`` (cumulative sums in float64). No full sort is needed: the
    ``ceil(tau * n)`` largest scores hold at least ``tau`` of the mass (they are at least the
    mean), so one ``topk`` of that size (plus a little slack for rounding) always contains the
    prefix; a full stable sort is the fallback.

    Args:
        flat: ``(n,)`` non-negative scores. tau: mass share in (0, 1).

    Returns:
        ``(k,)`` int64 indices into ``flat``, in descending score order.
    """
    flat = flat.detach()
    n = flat.numel()
    total = _check_scores(flat, what)
    target = tau * total
    k = min(n, math.ceil(tau * n) + 16)
    while True:
        if k >= n:
            vals, idx = torch.sort(flat, descending=True, stable=True)
        else:
            vals, idx = torch.topk(flat, k, sorted=True)
        cs = vals.double().cumsum(0)
        if float(cs[-1]) >= target or k >= n:
            where = torch.tensor([target], dtype=cs.dtype, device=cs.device)
            count = int(torch.searchsorted(cs, where)[0]) + 1
            return idx[: min(count, n)]
        k = min(n, k * 2)


def _select_flat(flat: torch.Tensor, cfg: UWMConfig, what: str) -> torch.Tensor:
    if cfg.selection == "mass":
        return top_mass_indices(flat, cfg.tau, what)
    _check_scores(flat, what)
    k = max(1, int(round(cfg.fraction * flat.numel())))
    return torch.topk(flat, k, sorted=True).indices


def select_weights(scores: Mapping[str, torch.Tensor], cfg: UWMConfig) -> dict[str, torch.Tensor]:
    """Selected flat indices per layer (int64, ascending), per layer or pooled per tower.

    Args:
        scores: ``"tower:layer" -> (d_out, d_in)`` non-negative scores.
        cfg: ``selection``, ``tau`` / ``fraction`` and ``scope`` are used.
    """
    out: dict[str, torch.Tensor] = {}
    if cfg.scope == "per_layer":
        for key, s in scores.items():
            idx = _select_flat(s.reshape(-1), cfg, f"layer {key}")
            out[key] = torch.sort(idx.cpu()).values
        return out
    by_tower: dict[str, list[str]] = {}
    for key in scores:
        by_tower.setdefault(key.split(":", 1)[0], []).append(key)
    for tower, keys in by_tower.items():
        flats = [scores[k].reshape(-1) for k in keys]
        sizes = [f.numel() for f in flats]
        pooled = torch.cat(flats)
        idx = _select_flat(pooled, cfg, f"{tower} tower (global)").cpu()
        del pooled
        offsets = np.cumsum([0, *sizes])
        for i, key in enumerate(keys):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            part = idx[(idx >= lo) & (idx < hi)] - lo
            out[key] = torch.sort(part).values
    return out


# ---------------------------------------------------------------------------------------------
# The mask: apply, save, load, revert
# ---------------------------------------------------------------------------------------------


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
        try:
            meta = json.loads(jpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{jpath}: unreadable UWM mask metadata ({e})") from e
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
    mods = dict(_tower_module(model, tower).named_modules())
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


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


def _sync_model(model: Any) -> None:
    _sync(model.device)


@register_method(
    "uwm",
    "training-free: negate the weights most specific to unsafe inputs (Unsafe Weights Manipulation)",
    UWMConfig,
)
def uwm(
    model: Any,
    policy: Any,
    cfg: UWMConfig | None = None,
    *,
    progress: bool = True,
    workdir: str | None = None,
    data: Any = None,
) -> EditResult:
    """Apply UWM to ``model`` in place (METHODS.md section 3; arXiv 2503.11742 Sec. 4).

    Args:
        model: a :class:`~relsafe.models.base.DualEncoder`.
        policy: the safety policy (calibration pairs from RelWorld); may be None when ``data`` is
            given.
        cfg: :class:`UWMConfig` (defaults when None).
        data: optional calibration data, a mapping/object with ``S``, ``U``, ``V``, ``G``
            (e.g. :class:`relsafe.data.visu.VisuData`); overrides the policy's RelWorld pairs.
        workdir: unused (UWM has no checkpoints to resume).

    Returns:
        :class:`EditResult` with ``adapter=None`` and ``artifacts={"mask": UWMMask, "save": fn}``
        where ``fn(folder)`` writes the mask. ``record.params_touched`` is the number of weights
        multiplied by alpha; ``record.extra`` has per-layer counts, calibration size and timings.
    """
    del workdir
    cfg = cfg if cfg is not None else UWMConfig()
    cfg.validate()
    t_start = time.perf_counter()
    for tower in cfg.towers:  # misspelt layer globs fail before any data is built
        target_layers(model, tower, cfg.text_layers if tower == "text" else cfg.vision_layers)
    cal_data = calibration_data(policy, cfg, data)
    for tower in cfg.towers:  # fail on bad data before any forward pass
        _check_pairs(cal_data, tower)
    t_data = time.perf_counter() - t_start
    cal = compute_scores(model, cal_data, cfg, progress=progress)
    t0 = time.perf_counter()
    selection = select_weights(cal.scores, cfg)
    mask = apply_selection(model, selection, float(cfg.alpha), cal.scores)
    _sync_model(model)
    t_edit = time.perf_counter() - t0
    mask.config = to_dict(cfg)
    del cal.scores
    total = time.perf_counter() - t_start
    warnings = []
    if cfg.alpha == 1.0:
        warnings.append("alpha=1 leaves every weight unchanged")
    if cal_data.dropped_image_pairs:
        warnings.append(
            f"{cal_data.dropped_image_pairs} image pairs lacked a safe or unsafe image and were "
            "left out of the vision calibration"
        )
    per_tower = {t: 0 for t in cfg.towers}
    for lm in mask.layers.values():
        per_tower[lm.tower] += lm.n_selected
    record = EditRecord(
        method="uwm",
        config=to_dict(cfg),
        model=str(getattr(model, "spec", type(model).__name__)),
        data_sizes={f"{t}_pairs": n for t, n in cal.n_pairs.items()},
        params_touched=mask.n_selected,
        params_total=int(sum(p.numel() for p in model.parameters())),
        time_s=total,
        warnings=warnings,
        extra={
            "layers": mask.summary(),
            "selected_per_tower": per_tower,
            "calibration_size": dict(cal.n_pairs),
            "calibration_source": cal_data.source,
            "calibration_s": cal.timings["forward_s"],
            "data_s": t_data,
            "scoring_s": cal.timings["scoring_s"],
            "input_wait_s": cal.timings["input_wait_s"],
            "select_edit_s": t_edit,
            "stats_peak_bytes": cal.stats_peak_bytes,
            "score_bytes": cal.score_bytes,
        },
    )
    return EditResult(
        model=model, record=record, adapter=None, artifacts={"mask": mask, "save": mask.save}
    )


# ---------------------------------------------------------------------------------------------
# CLI: relsafe edit --revert EDIT_DIR --model MODEL --out OUT
# ---------------------------------------------------------------------------------------------


def revert_cli(args: argparse.Namespace) -> int:
    """``relsafe edit --revert EDIT_DIR --model MODEL --out OUT``.

    Loads ``MODEL`` (normally ``EDIT_DIR/merged``, the edited checkpoint) and the mask in
    ``EDIT_DIR/artifacts``. If every masked layer holds the edited weights they are restored; if
    every one already holds the original weights (``MODEL`` is the original spec) nothing changes.
    Either way the result is written to ``OUT`` with the edit layout (``merged/``, ``record.json``,
    ``provenance.json``, atomically). Mixed or foreign weights are refused.
    """
    from relsafe.methods.export import check_out_dir, write_edit
    from relsafe.models.registry import load_model
    from relsafe.provenance import collect_provenance

    t0 = time.perf_counter()
    mask_dir = find_mask_dir(args.revert)
    mask = UWMMask.load(mask_dir)
    check_out_dir(args.out, bool(getattr(args, "overwrite", False)))
    model = load_model(args.model)
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
        merged = Path(args.revert) / "merged"
        raise InputError(
            f"--model {args.model} does not carry this UWM edit: layers {bad or list(states)[:3]} "
            "match neither the recorded edited nor the original weights. Pass the edited "
            f"checkpoint (--model {merged}) or the model the edit was made on "
            f"({mask.model_spec or mask.model_class})."
        )
    record = EditRecord(
        method="uwm-revert",
        config={"revert": str(mask_dir), "model": args.model, "action": action},
        model=str(args.model),
        params_touched=touched,
        params_total=int(sum(p.numel() for p in model.parameters())),
        time_s=time.perf_counter() - t0,
        extra={"layers": len(mask.layers), "mask_n_selected": mask.n_selected, "alpha": mask.alpha},
    )
    prov = collect_provenance(
        config={"revert": str(mask_dir), "model": args.model, "action": action},
        seeds={},
        checkpoints=[mask_dir / MASK_JSON, mask_dir / MASK_TENSORS],
    )
    out = write_edit(
        args.out,
        EditResult(model=model, record=record),
        prov,
        overwrite=bool(getattr(args, "overwrite", False)),
    )
    if action == "reverted":
        print(
            f"uwm revert: restored {touched:,} weights in {len(mask.layers)} layers "
            f"(alpha={mask.alpha}) to their original values (checksums verified); "
            f"wrote {out} (load it with --model {out / 'merged'})"
        )
    else:
        print(
            f"uwm revert: {args.model} already holds the original weights of all "
            f"{len(mask.layers)} masked layers; wrote it unchanged to {out}"
        )
    return 0
