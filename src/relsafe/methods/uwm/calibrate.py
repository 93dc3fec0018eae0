"""UWM calibration: forward pre-hooks record per-sample input statistics, scores accumulate as
``R^T C`` batch by batch (:func:`compute_scores`).

Under a launcher (``accelerate launch`` / ``torchrun``, ``WORLD_SIZE`` > 1) each process scores a
contiguous share of whole batches and the score sums are all-reduced before the division by the
pair count, so every process ends with the scores of the one-process run (up to float summation
order)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from relsafe.data.images import to_pil
from relsafe.errors import InputError
from relsafe.methods.uwm.config import UWMConfig
from relsafe.methods.uwm.data import CalibrationData, check_pairs
from relsafe.methods.uwm.layers import target_layers
from relsafe.methods.uwm.scores import pair_factors, token_stats

__all__ = ["Calibration", "compute_scores"]


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


def sync(device: torch.device) -> None:
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
    model: Any,
    data: CalibrationData,
    tower: str,
    n: int,
    bs: int,
    workers: int,
    start: int = 0,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(lo, inputs)`` in order while worker threads tokenise / decode and preprocess
    the next batches (PIL and the tokenizers release the GIL); at most ``workers + 1`` ahead.
    Batches start at ``start`` and end at pair ``n``."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    starts = iter(range(start, n, bs))
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
    distributed: bool | None = None,
) -> Calibration:
    """Score every targeted weight of every tower in ``cfg.towers`` (no gradients).

    Per batch of ``B`` pairs: one forward of the ``2B`` inputs ``[safe; unsafe]``, hooks keep
    ``a, sig (2B, d_in)`` per layer, then per layer ``R (B, d_out)``, ``C (B, d_in)`` and
    ``score_sum += R^T C``. Finally ``score = score_sum / N`` times ``|W|`` where the tower's prior
    is on. Inputs are tokenised / preprocessed by worker threads ahead of the forward loop.
    Timings: ``forward_s`` (forward passes incl. the hooks' per-sample reductions), ``scoring_s``
    (factor matmuls and priors), ``input_wait_s`` (time the loop waited for prepared inputs).
    ``distributed``: shard the batches across a launch's processes (see the module docs); None
    does so whenever ``WORLD_SIZE`` > 1, False never (a process calling this alone).
    """
    from tqdm.auto import tqdm

    from relsafe.distributed import all_sum, shard_batches, world
    from relsafe.engine.embed import progress_enabled, resolve_dtype

    if distributed is None:
        distributed = _launched()
    rank, ws = world() if distributed else (0, 1)

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
            n = check_pairs(data, tower)
            globs = cfg.text_layers if tower == "text" else cfg.vision_layers
            layers = target_layers(model, tower, globs)
            rec = _Recorder(layers, use_mask=(tower == "text"))
            sums = {
                name: torch.zeros(mod.weight.shape, dtype=torch.float32, device=mod.weight.device)
                for name, mod in layers.items()
            }
            bs = cfg.batch_size
            lo_r, hi_r = shard_batches(n, bs, rank, ws)  # all of it in one process
            bar = tqdm(
                total=hi_r - lo_r,
                desc=f"uwm calibrate {tower}",
                unit="pair",
                disable=not progress_enabled(progress),
                leave=False,
            )
            with rec.attached(), torch.no_grad():
                # one tokenising thread: a fast tokenizer must not be called concurrently
                n_workers = 1 if tower == "text" else workers
                batches = _prepared(model, data, tower, hi_r, bs, n_workers, start=lo_r)
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
                        sync(device)
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
                        sync(device)
                        t_fwd += t1 - t0
                        t_score += time.perf_counter() - t1
                        bar.update(b)
                finally:
                    batches.close()
            bar.close()
            t0 = time.perf_counter()
            all_sum(list(sums.values()))  # every rank's share (a no-op in one process)
            prior = cfg.text_prior if tower == "text" else cfg.vision_prior
            for name, mod in layers.items():
                score = sums.pop(name).div_(n)
                if prior:
                    score.mul_(mod.weight.detach().float().abs())
                out.scores[f"{tower}:{name}"] = score
                out.score_bytes += score.numel() * score.element_size()
            sync(device)
            t_score += time.perf_counter() - t0
            out.n_pairs[tower] = n
    finally:
        model.train(was_training)
    out.timings = {"forward_s": t_fwd, "scoring_s": t_score, "input_wait_s": waits[0]}
    return out


def _launched() -> bool:
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def min_contrast(cals: Mapping[str, Calibration]) -> Calibration:
    """One calibration from several of the same unsafe side against different safe sides
    (``contrast: neighbours``): per weight the minimum of their scores, so a weight counts as
    unsafe-specific only if it is against every contrast. ``n_pairs`` and timings are summed; a
    single calibration passes through unchanged."""
    if not cals:
        raise InputError("min_contrast needs at least one calibration")
    if len(cals) == 1:
        return next(iter(cals.values()))
    parts = list(cals.values())
    keys = set(parts[0].scores)
    if any(set(c.scores) != keys for c in parts):
        raise InputError("the calibrations to combine scored different layers")
    scores = {k: torch.stack([c.scores[k] for c in parts]).amin(dim=0) for k in parts[0].scores}
    n_pairs: dict[str, int] = {}
    timings: dict[str, float] = {}
    for c in parts:
        for t, n in c.n_pairs.items():
            n_pairs[t] = n_pairs.get(t, 0) + n
        for name, v in c.timings.items():
            timings[name] = timings.get(name, 0.0) + v
    return Calibration(
        scores=scores,
        n_pairs=n_pairs,
        timings=timings,
        stats_peak_bytes=max(c.stats_peak_bytes for c in parts),
        score_bytes=sum(c.score_bytes for c in parts),
        factor_shapes=parts[0].factor_shapes,
    )
