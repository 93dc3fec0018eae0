"""A toy method from outside relsafe, built from the shared pieces (docs/extending.md, "Add a
method"): LoRA on the text tower, trained so that each unsafe tuple's caption embeds where its
counterpart's caption did, while the counterpart's caption stays put."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from relsafe.config import ConfigError
from relsafe.methods.base import EditRecord, EditResult, register_method
from relsafe.methods.lora import attach_lora
from relsafe.methods.training import run_loop
from relsafe.world.captions import canonical_caption


@dataclass
class CaptionRedirectConfig:
    steps: int = 20
    lr: float = 1e-3
    rank: int = 4
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 0 or self.rank <= 0 or not self.lr > 0:
            raise ConfigError("steps must be >= 0, rank and lr positive")


def _embed(model: Any, texts: list[str]) -> torch.Tensor:
    tokens = {k: v.to(model.device) for k, v in model.tokenize(texts).items()}
    return model.postprocess(model.forward_text(tokens), "text")


@register_method(
    "caption-redirect",
    "toy plugin: LoRA moving each unsafe caption onto its counterpart's caption",
    CaptionRedirectConfig,
)
def caption_redirect(
    model: Any, policy: Any, cfg: CaptionRedirectConfig, *, progress: bool = True, workdir=None
) -> EditResult:
    t0 = time.perf_counter()
    unsafe = [canonical_caption(u) for u, _ in policy.pairs()]
    safe = [canonical_caption(c) for _, c in policy.pairs()]
    with torch.no_grad():  # the frozen targets, computed before the adapter exists
        target = _embed(model, safe).detach()
    handle = attach_lora(model, towers=("text",), r=cfg.rank, alpha=cfg.rank, seed=cfg.seed)

    def losses(step: int, rng: Any) -> dict[str, torch.Tensor]:
        del step, rng
        moved = _embed(model, unsafe)
        kept = _embed(model, safe)
        return {
            "redirect": (1 - (moved * target).sum(-1)).mean(),
            "keep": (1 - (kept * target).sum(-1)).mean(),
        }

    loop = run_loop(
        handle,
        handle.parameters(),
        losses,
        {"redirect": 1.0, "keep": 1.0},
        steps=cfg.steps,
        lr=cfg.lr,
        seed=cfg.seed,
        progress=progress,
        desc="caption-redirect",
        workdir=workdir,
    )
    record = EditRecord(
        method="caption-redirect",
        config={"steps": cfg.steps, "lr": cfg.lr, "rank": cfg.rank, "seed": cfg.seed},
        model=str(model.spec),
        data_sizes={"pairs": len(unsafe)},
        curve=loop.curve,
        params_touched=handle.num_parameters(),
        params_total=sum(p.numel() for p in model.parameters()),
        time_s=time.perf_counter() - t0,
        warnings=[loop.stopped_early] if loop.stopped_early else [],
    )
    return EditResult(model=model, record=record, adapter=handle)
