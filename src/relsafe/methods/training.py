"""The training loop every LoRA method shares: optimiser, progress, logging, NaN guard, resume.

A method supplies ``step_losses(step, rng) -> dict[str, Tensor]`` (each term already weighted or
not, see ``weights``) and the loop does the rest:

* the total is ``sum(weights[k] * term[k])``; each term is logged separately into the record's curve;
* a non-finite loss stops training, restores the last good adapter state and says so (in the
  record's warnings and the log), never silently continues;
* with ``workdir`` set, a checkpoint (adapter weights, optimiser state, step, RNG states, curve) is
  written every ``checkpoint_every`` steps as one :mod:`relsafe.checkpoints` folder
  (``<workdir>/checkpoint/``, safetensors + JSON, replaced whole), and a later call with the same
  workdir resumes from it and continues bit-identically;
* under ``accelerate launch`` (:mod:`relsafe.distributed`) the trainable gradients are averaged
  over processes after each backward pass, only the main process writes checkpoints (global
  state: they resume on any process count), torch is seeded ``seed + rank``, and the launcher's
  gradient accumulation (``step_losses`` is called that many times per optimiser step, each call
  a fresh batch, the losses divided by the count) and bf16 autocast (GPU only) apply. The method
  shards its batches through ``relsafe.distributed.current().shard_rows``. In one process none of
  this changes a single operation.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from relsafe.checkpoints import (
    RngState,
    checkpoint_exists,
    load_optimizer_state,
    read_meta,
)
from relsafe.checkpoints import load_checkpoint as load_training_checkpoint
from relsafe.checkpoints import save_checkpoint as save_training_checkpoint
from relsafe.distributed import current as current_dist
from relsafe.engine.embed import progress_enabled
from relsafe.errors import CheckpointError
from relsafe.methods.lora import LoraHandle

log = logging.getLogger(__name__)


@dataclass
class LoopResult:
    curve: list[dict[str, float]]
    steps_done: int
    stopped_early: str | None = None  # a reason, e.g. "non-finite loss at step 17"
    resumed_from: int = 0


@dataclass
class ExtraState:
    """A method's resumable state beyond the adapter and optimiser (HySAC's scalars, best state
    and early-stopping history). ``save(step)`` returns a checkpoint-``meta``-able object (tensors,
    numbers, strings, lists, dicts); ``load(step, obj)`` puts it back."""

    name: str
    save: Callable[[int], Any]
    load: Callable[[int, Any], None]


CHECKPOINT_DIR = "checkpoint"
"""The checkpoint folder inside ``workdir`` (a :mod:`relsafe.checkpoints` folder)."""
_LEGACY_FILES = ("optimizer.pt", "adapter.safetensors", "state.json")


def save_checkpoint(
    workdir: Path,
    handle: LoraHandle,
    opt: torch.optim.Optimizer,
    step: int,
    curve: list[dict[str, float]],
    rng: random.Random,
    fingerprint: str,
    extra: ExtraState | None = None,
) -> None:
    """Write adapter, optimiser, RNG states, loop state and the method's ``extra`` state as one
    folder, replaced whole (a kill leaves either the previous complete set or the new one)."""
    meta: dict[str, Any] = {"step": step, "curve": curve, "fingerprint": fingerprint}
    if extra is not None:
        meta["extra"] = extra.save(step)
    save_training_checkpoint(
        Path(workdir) / CHECKPOINT_DIR,
        handle.state_dict(),
        optimizer=opt.state_dict(),
        rng=RngState.capture(python=rng),
        meta=meta,
    )


def checkpoint_key(method: str, cfg: Any, model_fingerprint: str, *data: Any) -> str:
    """The key a training checkpoint resumes under (:func:`run_loop`'s ``fingerprint``): the
    method and its registered ``version``, its config, the model's weights (its fingerprint) and a
    digest of every text, label and image it trains on (:func:`relsafe.data.digest.data_digest`
    of ``data``), so a re-run with anything else starts afresh."""
    import hashlib
    import json

    from relsafe.config import to_dict
    from relsafe.data.digest import data_digest
    from relsafe.methods.base import get_method

    key = {
        "method": method,
        "version": get_method(method).version,
        "cfg": to_dict(cfg),
        "model": model_fingerprint,
        "data": data_digest(*data),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_checkpoint(
    workdir: Path,
    handle: LoraHandle,
    opt: torch.optim.Optimizer,
    rng: random.Random,
    fingerprint: str,
    extra: ExtraState | None = None,
) -> tuple[int, list[dict[str, float]]] | None:
    """Restore a checkpoint written by :func:`save_checkpoint`; None when there is none.

    A checkpoint made with another config or model (``fingerprint``) is ignored with a warning;
    one in the earlier pickle-based layout (``optimizer.pt``) is refused.
    """
    folder = Path(workdir) / CHECKPOINT_DIR
    if not checkpoint_exists(folder):
        legacy = [n for n in _LEGACY_FILES if (Path(workdir) / n).is_file()]
        if legacy:
            raise CheckpointError(
                f"{workdir}: holds a checkpoint in the earlier format ({', '.join(legacy)}), "
                "which this relsafe cannot resume; delete those files to start afresh"
            )
        return None
    if read_meta(folder, keys=("fingerprint",)).get("fingerprint") != fingerprint:
        log.warning(
            "checkpoint in %s was made with another method version, config, model or training "
            "data; starting afresh",
            workdir,
        )
        return None
    ck = load_training_checkpoint(folder, expect=handle.state_dict())
    handle.load_state_dict(ck.tensors)
    load_optimizer_state(opt, ck.optimizer, str(folder))
    ck.rng.restore(python=rng, where=str(folder))
    step = ck.meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{folder}: state.json holds no valid step counter ({step!r})")
    if extra is not None:
        if "extra" not in ck.meta:
            raise CheckpointError(
                f"{folder}: holds no {extra.name} state (an earlier layout); "
                "delete the work folder to start afresh"
            )
        extra.load(step, ck.meta["extra"])
    return step, list(ck.meta["curve"])


def _snapshot(handle: LoraHandle) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in handle.state_dict().items()}


def _non_finite(total: Any, dist: Any) -> bool:
    """Whether the loss is non-finite, agreed by every rank (so all stop together)."""
    bad = not torch.is_tensor(total) or not bool(torch.isfinite(total))
    return dist.mean(float(bad)) > 0 if dist.enabled else bad


def run_loop(
    handle: LoraHandle,
    params: list[torch.nn.Parameter],
    step_losses: Callable[[int, random.Random], dict[str, torch.Tensor]],
    weights: dict[str, float],
    *,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    seed: int = 0,
    log_every: int = 10,
    progress: bool = True,
    desc: str = "edit",
    workdir: str | Path | None = None,
    checkpoint_every: int = 50,
    fingerprint: str = "",
    optimizer: str = "adamw",
    extra_param_groups: list[dict[str, Any]] | None = None,
    extra: ExtraState | None = None,
    fused: bool | None = None,
) -> LoopResult:
    """Optimise ``params`` for ``steps`` steps on the weighted sum of ``step_losses``.

    ``fused``: the fused (single-kernel) Adam/AdamW update; None uses it when every trainable
    parameter is a floating-point CUDA tensor (the same update, fewer kernel launches), False
    never (``benchmarks/train_step.py``'s reference style).

    ``extra``: a method's own resumable state (:class:`ExtraState`), saved inside the same
    checkpoint folder as the adapter and optimiser, so the set is always complete.

    After a non-finite loss at step ``s`` the adapter is restored to the weights of step ``s - 1``
    (the last ones whose loss was computed and finite), or the initial ones when ``s`` is the first.
    """
    from tqdm.auto import tqdm

    from relsafe.validate import MAX_EVERY, MAX_STEPS, check_number

    check_number(desc, "steps", steps, lo=0, hi=MAX_STEPS, integer=True)
    check_number(desc, "lr", lr, lo=0, lo_open=True)
    for name, v in (("log_every", log_every), ("checkpoint_every", checkpoint_every)):
        check_number(desc, name, v, lo=1, hi=MAX_EVERY, integer=True)
    groups: list[dict[str, Any]] = [{"params": params, "weight_decay": weight_decay}]
    groups += extra_param_groups or []
    if fused is None:
        every = [p for g in groups for p in g["params"]]
        fused = bool(every) and all(p.is_cuda and p.is_floating_point() for p in every)
    kind = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    opt: torch.optim.Optimizer = kind(groups, lr=lr, fused=True) if fused else kind(groups, lr=lr)
    dist = current_dist()
    rng = random.Random(seed)  # the same stream on every rank: the same global batches
    dist.seed_torch(seed)
    trainable = [p for g in groups for p in g["params"]]
    curve: list[dict[str, float]] = []
    start = 0
    wd = Path(workdir) if workdir else None
    if wd is not None:
        restored = load_checkpoint(wd, handle, opt, rng, fingerprint, extra)
        if restored is not None:
            start, curve = restored
            log.info("resuming %s from step %d (%s)", desc, start, wd)
    # the last adapter whose loss was computed and finite: a step's weights become "good" only
    # once the next step's loss on them is finite (never right after opt.step())
    good_state = _snapshot(handle)
    stopped = None
    handle.train_mode(True)
    bar = tqdm(
        total=steps,
        initial=start,
        desc=desc,
        disable=not (progress_enabled(progress) and dist.is_main),
        leave=False,
    )
    step = start
    try:
        for step in range(start, steps):
            with dist.autocast():
                terms = step_losses(step, rng)
            total = sum(weights.get(k, 1.0) * v for k, v in terms.items())
            if _non_finite(total, dist):
                bad = [k for k, v in terms.items() if not torch.isfinite(v)]
                stopped = f"non-finite loss at step {step} (terms {bad or ['total']}); restored the last good adapter"
                log.error("%s: %s", desc, stopped)
                handle.load_state_dict(good_state)
                break
            good_state = _snapshot(handle)
            opt.zero_grad(set_to_none=True)
            if dist.accumulate == 1:
                total.backward()
            else:  # the launcher's gradient accumulation: more batches per optimiser step
                (total / dist.accumulate).backward()
                for _ in range(dist.accumulate - 1):
                    with dist.autocast():
                        more = step_losses(step, rng)
                    extra_total = sum(weights.get(k, 1.0) * v for k, v in more.items())
                    (extra_total / dist.accumulate).backward()
            dist.all_reduce_grads(trainable)
            opt.step()
            if step % log_every == 0 or step == steps - 1:
                entry = {"step": float(step), "loss": float(total.detach())}
                entry.update({k: float(v.detach()) for k, v in terms.items()})
                curve.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
            if wd is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                if dist.is_main:  # the state is global: identical on every rank
                    save_checkpoint(wd, handle, opt, step + 1, curve, rng, fingerprint, extra)
                dist.barrier()
            bar.update(1)
        else:
            step = steps
    finally:
        bar.close()
        handle.train_mode(False)
    if stopped is None and any(not math.isfinite(v) for e in curve for v in e.values()):
        stopped = "non-finite value in the logged curve"
    return LoopResult(
        curve=curve,
        steps_done=step if stopped else steps,
        stopped_early=stopped,
        resumed_from=start,
    )
