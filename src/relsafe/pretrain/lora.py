"""The text LoRA used while pretraining (merged into MiniLM's stored factors at the end).

Why not :mod:`relsafe.methods.lora` (PEFT): the bundled relsafe-mini weights must stay
reproducible bit for bit by ``relsafe pretrain``, and PEFT initialises differently: its ``lora_A``
is an ``nn.Linear`` whose construction already draws from the global torch generator before PEFT
re-initialises it, so the draws (and PEFT's target order and parameter names) do not match the
ones below, which take every ``lora_A`` in sorted target order from one generator seeded with
``seed + 1``. PEFT would also freeze the whole model (the image tower trains here) and merge into
the base weights, while relsafe-mini stores the factors (``RelsafeMini.apply_text_lora``).
"""

from __future__ import annotations

import fnmatch
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from relsafe.errors import ConfigError

if TYPE_CHECKING:
    from relsafe.pretrain.config import PretrainConfig


class LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T`` with a frozen base layer."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def inject_lora(encoder: nn.Module, cfg: PretrainConfig) -> dict[str, LoRALinear]:
    """Wrap the linear layers of ``encoder`` that ``cfg.lora_targets`` match (in sorted order)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    names = [
        n
        for n, m in encoder.named_modules()
        if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(n, p) for p in cfg.lora_targets)
    ]
    if not names:
        raise ConfigError(
            f"pretrain: lora_targets {list(cfg.lora_targets)} match no MiniLM linear layer"
        )
    out = {}
    for n in sorted(names):
        parent_name, _, child = n.rpartition(".")
        parent = encoder.get_submodule(parent_name)
        wrapped = LoRALinear(getattr(parent, child), cfg.lora_rank, cfg.lora_alpha, gen)
        setattr(parent, child, wrapped)
        out[n] = wrapped
    return out


def remove_lora(
    encoder: nn.Module, wrapped: dict[str, LoRALinear]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Put the base layers back and return the trained ``(A, B)`` factors by layer name."""
    factors = {}
    for n, w in wrapped.items():
        parent_name, _, child = n.rpartition(".")
        setattr(encoder.get_submodule(parent_name), child, w.base)
        factors[n] = (w.lora_A.detach().clone(), w.lora_B.detach().clone())
    return factors
