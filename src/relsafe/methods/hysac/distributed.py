"""HySAC's multi-process path (``distributed: true``), through Hugging Face Accelerate.

Each process draws its own disjoint slice of a global batch (``batch_size`` per process); text and
image embeddings are gathered from every process (:func:`gather_with_local_grad`: the other ranks'
embeddings as constants, the local shard with its gradient scaled by the world size) so every
contrastive loss sees the negatives of the whole global batch; LoRA and scalar gradients are
all-reduced (mean) after each backward pass by hooks (:func:`install_grad_allreduce`), which makes
the update exactly the gradient of the global-batch loss. After training the non-main processes
wait for the main one and raise :class:`~relsafe.errors.NotMainProcess`, so only the main process
writes the output folder (the command line exits 0 on it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from relsafe.errors import ConfigError, InputError
from relsafe.methods.hysac.config import HySACConfig

log = logging.getLogger(__name__)

__all__ = ["Dist", "gather_with_local_grad", "install_grad_allreduce", "setup_distributed"]


@dataclass
class Dist:
    """The Accelerate handle of a multi-process run, with this process's rank and the world size."""

    accelerator: Any
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: HySACConfig) -> Dist | None:
    """An :class:`Dist` for ``distributed: true`` (None otherwise, or in one process without
    Accelerate installed); a multi-process launch without Accelerate is a :class:`ConfigError`."""
    if not cfg.distributed:
        return None
    try:
        from accelerate import Accelerator  # type: ignore[import-not-found]
    except ImportError:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                "distributed: true under a multi-process launch needs Hugging Face Accelerate "
                "(pip install accelerate); launch with `accelerate launch -m relsafe.cli edit ...`"
            ) from None
        log.warning("distributed: true but accelerate is not installed; training in one process")
        return None
    acc = Accelerator()
    return Dist(acc, int(acc.process_index), int(acc.num_processes))


def install_grad_allreduce(params: list[nn.Parameter], world: int) -> list[Any]:
    """Average each parameter's gradient across ranks right after it is accumulated; returns the
    hook handles (``.remove()`` them after training)."""
    import torch.distributed as tdist

    def hook(p: torch.Tensor) -> None:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad.div_(world)

    return [p.register_post_accumulate_grad_hook(hook) for p in params]


def gather_with_local_grad(
    x: torch.Tensor, all_gather: Callable[[torch.Tensor], torch.Tensor], rank: int, world: int
) -> torch.Tensor:
    """Concatenate every rank's ``(B, D)`` batch into ``(world*B, D)``, keeping gradients for the
    local shard only, scaled by ``world``.

    Every rank computes the same global loss; its gradient reaches rank ``r``'s parameters only
    through rank ``r``'s shard. Scaling that shard's gradient by ``world`` (the forward value is
    unchanged) and then averaging parameter gradients across ranks gives exactly the gradient of
    the global loss. ``all_gather`` is e.g. ``accelerator.gather`` (equal ``B`` on every rank).
    """
    if world == 1:
        return x
    if not x.is_floating_point() or not x.requires_grad:
        return all_gather(x.detach())
    full = all_gather(x.detach())
    b = x.shape[0]
    if full.shape[0] != world * b:
        raise InputError(f"all_gather returned {full.shape[0]} rows, expected {world} x {b}")
    local = x * world - x.detach() * (world - 1)
    return torch.cat([full[: rank * b], local, full[(rank + 1) * b :]])
