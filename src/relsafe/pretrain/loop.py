"""The pretraining loop: ``pretrain(config)`` trains relsafe-mini and writes it with its record.

Checkpoints are :mod:`relsafe.checkpoints` folders (``<checkpoint_dir>/checkpoint/``): the
trainable parameters (``param.<name>``) and the image tower's BatchNorm buffers
(``buffer.vision.<name>``), the AdamW state, the torch RNG state and JSON metadata (step, config and
its hash, loss history, elapsed time). ``resume=True`` continues from one made with the same
weight-determining config (:meth:`PretrainConfig.weights_hash`) and repeats the uninterrupted run
bit for bit. The single-file ``checkpoint.safetensors`` of earlier versions is refused.

Under ``accelerate launch`` (:mod:`relsafe.distributed`) every process builds the same batch (a
pure function of the step), runs the image tower on its shard of it and gathers the features
(text features are computed in full on each rank: with MiniLM frozen they are cached lookups),
so every rank evaluates the global-batch loss; gradients are all-reduced before clipping, only the
main process writes checkpoints and outputs, and a checkpoint resumes on any process count.
BatchNorm normalises each shard with its own batch statistics during training (as plain DDP
without SyncBatchNorm does), so the N-process curve is close to, not equal to, the 1-process
one; the final BatchNorm recalibration runs on full batches on every rank. The launcher's bf16
autocast applies (GPU only); gradient accumulation is not supported here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relsafe.checkpoints import (
    RngState,
    checkpoint_exists,
    load_checkpoint,
    load_optimizer_state,
    read_meta,
    save_checkpoint,
)
from relsafe.distributed import Dist
from relsafe.distributed import current as current_dist
from relsafe.errors import CheckpointError
from relsafe.pretrain.config import RESUME_IGNORED_KEYS, PretrainConfig
from relsafe.pretrain.data import TextBank, World, build_text_bank, make_world, sample_batch
from relsafe.pretrain.lora import LoRALinear, inject_lora, remove_lora
from relsafe.pretrain.loss import contrastive_loss
from relsafe.pretrain.quick_check import quick_zeroshot
from relsafe.utils_io import atomic_write_text

log = logging.getLogger("relsafe.pretrain")

CHECKPOINT_NAME = "checkpoint"
"""The checkpoint folder inside ``checkpoint_dir``."""
LEGACY_CHECKPOINT_NAME = "checkpoint.safetensors"
RECORD_NAME = "pretrain.json"


@torch.no_grad()
def recalibrate_batchnorm(model: Any, cfg: PretrainConfig, world: World, bank: TextBank) -> None:
    """Re-estimate BatchNorm statistics as exact averages over fresh training batches.

    The batches are those of steps ``steps, steps + 1, ...`` (never trained on), so the result
    is a pure function of the config like everything else.
    """
    bns = [m for m in model.vision.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns or cfg.bn_recalibration_batches <= 0:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.vision.train()
    for k in range(cfg.bn_recalibration_batches):
        batch = sample_batch(cfg, world, bank, cfg.steps + k)
        model.forward_image(model.preprocess_array(batch["pixels"]))
    for bn in bns:
        bn.momentum = 0.1
    model.vision.eval()


def lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    prog = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))
    )


# ---- checkpoints ---------------------------------------------------------------------------------
def _save(
    folder: Path,
    step: int,
    cfg: PretrainConfig,
    params: dict[str, nn.Parameter],
    opt: torch.optim.Optimizer,
    history: list[dict[str, float]],
    elapsed_s: float,
    buffers: dict[str, torch.Tensor],
) -> None:
    tensors = {f"param.{n}": p for n, p in params.items()}
    tensors.update({f"buffer.{n}": b for n, b in buffers.items()})
    meta = {
        "step": step,
        "config": cfg.to_dict(),
        "weights_hash": cfg.weights_hash(),
        "history": history[-200:],
        "elapsed_s": round(elapsed_s, 3),
    }
    save_checkpoint(folder, tensors, optimizer=opt.state_dict(), rng=RngState.capture(), meta=meta)


def _resume(
    folder: Path,
    cfg: PretrainConfig,
    params: dict[str, nn.Parameter],
    opt: torch.optim.Optimizer,
    buffers: dict[str, torch.Tensor],
) -> tuple[int, list[dict[str, float]], float]:
    """Restore parameters, optimizer, BatchNorm buffers and the torch RNG; return (step, history,
    elapsed seconds so far)."""
    meta = read_meta(folder)
    saved = meta.get("config", {})
    mine = cfg.to_dict()
    diff = sorted(k for k in mine if k not in RESUME_IGNORED_KEYS and saved.get(k) != mine[k])
    if diff or meta.get("weights_hash") != cfg.weights_hash():
        raise CheckpointError(
            f"{folder}: checkpoint was made with a different config (keys {diff}); cannot resume"
        )
    live = {f"param.{n}": p.detach() for n, p in params.items()}
    live.update({f"buffer.{n}": b for n, b in buffers.items()})
    ck = load_checkpoint(folder, expect=live)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ck.tensors[f"param.{n}"])
    load_optimizer_state(opt, ck.optimizer, str(folder))
    with torch.no_grad():
        for n, b in buffers.items():
            b.copy_(ck.tensors[f"buffer.{n}"])
    ck.rng.restore(where=str(folder))
    return int(meta["step"]), list(meta.get("history", [])), float(meta.get("elapsed_s", 0.0))


def _optimizer(
    model: Any, cfg: PretrainConfig
) -> tuple[dict[str, nn.Parameter], torch.optim.Optimizer]:
    """AdamW over the trainable parameters: weight decay on matrices except the LoRA factors.

    The returned name -> parameter dict is in optimizer order (decay group first, then the
    rest), the order checkpoints store them in.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for n, p in params.items() if p.ndim >= 2 and "lora_" not in n]
    no_decay = [p for n, p in params.items() if not (p.ndim >= 2 and "lora_" not in n)]
    order = {id(p): n for n, p in params.items()}
    params = {order[id(p)]: p for p in decay + no_decay}
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    return params, opt


class _ShardedImages:
    """The model as the loss sees it, with ``forward_image`` run on this rank's shard of the batch
    and gathered (:meth:`relsafe.distributed.Dist.shard_rows`); everything else is the model."""

    def __init__(self, model: Any, dist: Dist) -> None:
        self._model, self._dist = model, dist

    def forward_image(self, pix: torch.Tensor) -> torch.Tensor:
        return self._dist.shard_rows(self._model.forward_image, pix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


# ---- the loop ------------------------------------------------------------------------------------
def pretrain(config: PretrainConfig | None = None, progress: bool = True) -> Any:
    """Train relsafe-mini from ``config.seed`` and save it to ``config.out_dir``; return the model."""
    from relsafe.models.mini import RelsafeMini

    cfg = config or PretrainConfig()
    cfg.validate()
    dist = current_dist()  # a world of one unless started by `accelerate launch`
    if dist.accumulate > 1:
        from relsafe.errors import ConfigError

        raise ConfigError("pretrain: gradient accumulation is not supported; raise batch_size")
    torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else out_dir / "checkpoints"
    ckpt_path = ckpt_dir / CHECKPOINT_NAME
    if cfg.resume and (ckpt_dir / LEGACY_CHECKPOINT_NAME).is_file():
        raise CheckpointError(
            f"{ckpt_dir / LEGACY_CHECKPOINT_NAME}: a single-file checkpoint of an earlier relsafe "
            f"version, which this one cannot resume; delete it and start again without resume"
        )
    t0 = time.time()

    model = RelsafeMini(cfg.model_config(), seed=cfg.seed)
    world = make_world()
    for p in model.text.encoder.parameters():
        p.requires_grad_(False)
    wrapped: dict[str, LoRALinear] = {}
    if cfg.lora_rank > 0:
        wrapped = inject_lora(model.text.encoder, cfg)
    bank = build_text_bank(model, world.tuples, world.subjects, world.objects, cfg)
    if cfg.lora_rank > 0:
        bank.tokens = model.tokenize(bank.texts)
    log.info("text bank: %d captions (%.1fs)", len(bank.texts), time.time() - t0)

    params, opt = _optimizer(model, cfg)
    buffers = {f"vision.{n}": b for n, b in model.vision.named_buffers()}
    start, history, prior_s = 0, [], 0.0
    if cfg.resume and checkpoint_exists(ckpt_path):
        start, history, prior_s = _resume(ckpt_path, cfg, params, opt, buffers)
        log.info("resumed from %s at step %d", ckpt_path, start)
    elif cfg.resume:
        log.info("no checkpoint at %s; starting from scratch", ckpt_path)

    model.train()
    show = progress and dist.is_main and os.environ.get("CI", "").lower() not in ("1", "true")
    loss_model = _ShardedImages(model, dist) if dist.enabled else model
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, disable=not show, desc="pretrain relsafe-mini")
    running: dict[str, float] = {}
    for step in range(start, cfg.steps):
        batch = sample_batch(cfg, world, bank, step)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        with dist.autocast():
            loss, stats = contrastive_loss(loss_model, cfg, world, bank, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.all_reduce_grads(list(params.values()))
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, cfg.model_config().max_logit_scale)
        stats["loss"] = loss.item()
        for k, v in stats.items():
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        bar.update(1)
        bar.set_postfix(loss=f"{running['loss']:.3f}", scale=f"{stats['scale']:.1f}")
        if (step + 1) % cfg.log_every == 0:
            history.append({"step": step + 1, **{k: round(v, 5) for k, v in running.items()}})
            log.info("step %d %s", step + 1, history[-1])
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            elapsed = prior_s + time.time() - t0
            if dist.is_main:  # parameters and optimiser state are identical on every rank
                _save(ckpt_path, step + 1, cfg, params, opt, history, elapsed, buffers)
            dist.barrier()
    bar.close()
    recalibrate_batchnorm(model, cfg, world, bank)
    model.fold_vision_batchnorm()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    if wrapped:
        model.apply_text_lora(remove_lora(model.text.encoder, wrapped))
    train_s = prior_s + time.time() - t0  # includes the text bank; a resumed run adds its past
    if not dist.is_main:  # only the main process writes
        dist.barrier()
        return model
    model.save_pretrained(out_dir)
    record: dict[str, Any] = {
        "config": cfg.to_dict(),
        "wall_time_s": round(train_s, 1),
        "torch": torch.__version__,
        "threads": cfg.threads,
        "history": history,
        "fingerprint": model.fingerprint(),
    }
    if cfg.eval_per_tuple > 0:
        record["quick_zeroshot"] = quick_zeroshot(model, n_per_tuple=cfg.eval_per_tuple)
        log.info("quick zero-shot: %s", json.dumps(record["quick_zeroshot"]))
    atomic_write_text(out_dir / RECORD_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
    if not cfg.keep_checkpoints and ckpt_dir.is_dir() and ckpt_path.is_dir():
        shutil.rmtree(ckpt_path)
        if not any(ckpt_dir.iterdir()):
            shutil.rmtree(ckpt_dir)
    dist.barrier()
    return model
