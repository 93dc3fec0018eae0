"""The process-group plumbing every training loop shares (LoRA methods and pretraining).

One process (the default, and every run not started by ``accelerate launch`` / ``torchrun``) needs
nothing from here beyond :func:`current`, which then returns a world of one: no process group, no
Accelerate import, and every helper is the identity, so a single-process run computes exactly what
it computed before this module existed.

Under a launcher (``WORLD_SIZE > 1``) :func:`current` initialises the process group through
Hugging Face Accelerate (gloo on CPU, NCCL on GPU) once per process, and training is data-parallel
over a **global batch**:

* every rank draws the same global batch (the methods' Python RNG is seeded identically on every
  rank), computes its contiguous shard of each batched forward pass (:meth:`Dist.shard_rows`) and
  gathers the shards (:func:`gather_rows`: the other ranks' rows as constants, its own rows with
  their gradient scaled by the world size), so every rank evaluates the same global-batch loss;
* after ``backward`` the trainable gradients are averaged with one explicit ``all_reduce`` per
  parameter (:meth:`Dist.all_reduce_grads`). With the scaling above this is exactly the gradient
  of the global-batch loss, so the same config gives the same curve on any process count (up to
  float summation order). This is an explicit all-reduce rather than DDP: the models have several
  forward entry points (text, image, cached prefixes) that one DDP wrapper cannot see;
* only the main process writes (checkpoints, outputs); checkpoints hold global state only, so a
  run resumes on any process count;
* torch's global generator is seeded ``seed + rank`` (dropout masks differ per rank; rank 0 keeps
  the single-process seed).

Gradient accumulation and mixed precision come from the launcher's settings
(``accelerate launch --gradient_accumulation_steps K --mixed_precision bf16``, read from the
``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` / ``ACCELERATE_MIXED_PRECISION`` environment) or the
same variables set by hand; bf16 autocast is used on CUDA only (on CPU it is refused with a
warning and training stays float32).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from relsafe.errors import ConfigError, InputError

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["Dist", "current", "gather_rows", "gather_with_local_grad", "shard_bounds"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


@dataclass
class Dist:
    """This process's place in the run: rank, world size, device, accumulation and precision."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    accumulate: int = 1
    mixed_precision: str = "no"  # "no" or "bf16" (CUDA only)
    accelerator: Any = None  # the Accelerate state of a multi-process run

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard_bounds(self, n: int) -> tuple[int, int]:
        """``[lo, hi)`` of this rank's contiguous shard of ``n`` rows."""
        return shard_bounds(n, self.world)[self.rank]

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's contiguous shard of a global batch (the whole batch in one process)."""
        if self.world == 1:
            return items
        lo, hi = self.shard_bounds(len(items))
        return items[lo:hi]

    def shard_rows(self, fn: Callable[[Any], torch.Tensor], items: Any) -> torch.Tensor:
        """``fn(items)`` computed on this rank's shard of ``items`` (a list or a tensor batch) and
        gathered into the global ``(len(items), ...)`` result, with gradients for the local rows
        only (see :func:`gather_rows`). In one process it is exactly ``fn(items)``."""
        if self.world == 1:
            return fn(items)
        n = len(items)
        local = fn(self.shard(items))
        return gather_rows(local, n, self.rank, self.world)

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over ranks (a parameter without a gradient on this
        rank contributes zeros, so every rank takes part in every reduction)."""
        if self.world == 1:
            return
        import torch.distributed as tdist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            tdist.all_reduce(p.grad)
            p.grad.div_(self.world)

    def mean(self, value: float) -> float:
        """The mean of a float over ranks (logging of per-rank quantities)."""
        if self.world == 1:
            return value
        import torch.distributed as tdist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return float(t.item()) / self.world

    def finish(self, what: str) -> None:
        """After training: the non-main ranks wait for the main one and raise
        :class:`~relsafe.errors.NotMainProcess` (the command line exits 0 on it), so only the
        main process writes outputs. A no-op in one process."""
        if self.world == 1:
            return
        from relsafe.errors import NotMainProcess

        self.barrier()
        if not self.is_main:
            raise NotMainProcess(f"{what}: rank {self.rank} done; the main process writes outputs")

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA when mixed precision is on; a no-op otherwise."""
        if self.mixed_precision == "bf16" and self.device is not None:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def seed_torch(self, seed: int) -> None:
        """Per-rank torch seed: ``seed + rank`` (rank 0 keeps ``seed``)."""
        torch.manual_seed(seed + self.rank)


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` shards of ``n`` rows over ``world`` ranks, the first ``n % world``
    one row longer (every row in exactly one shard)."""
    base, extra = divmod(n, world)
    out, lo = [], 0
    for r in range(world):
        hi = lo + base + (1 if r < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def gather_rows(local: torch.Tensor, n: int, rank: int, world: int) -> torch.Tensor:
    """Concatenate every rank's shard (rank ``r`` holds rows ``shard_bounds(n, world)[r]``) into the
    global ``(n, ...)`` tensor on every rank.

    The other ranks' rows are constants; the local rows keep their gradient, scaled by ``world``
    (the values are unchanged). Every rank then computes the same global loss, and averaging the
    parameter gradients over ranks (:meth:`Dist.all_reduce_grads`) gives exactly the gradient of
    that loss. Unequal shards are padded for the collective and trimmed after.
    """
    if world == 1:
        return local
    import torch.distributed as tdist

    bounds = shard_bounds(n, world)
    lo, hi = bounds[rank]
    if local.shape[0] != hi - lo:
        raise InputError(f"rank {rank}: shard has {local.shape[0]} rows, expected {hi - lo}")
    width = max(b - a for a, b in bounds)
    pad = local.detach()
    if pad.shape[0] < width:
        pad = torch.cat([pad, pad.new_zeros((width - pad.shape[0], *pad.shape[1:]))])
    parts = [torch.empty_like(pad) for _ in range(world)]
    tdist.all_gather(parts, pad.contiguous())
    rows = [parts[r][: b - a] for r, (a, b) in enumerate(bounds)]
    rows[rank] = _local_grad(local, world)
    return torch.cat(rows)


def _local_grad(x: torch.Tensor, world: int) -> torch.Tensor:
    """``x`` with its value unchanged and its gradient scaled by ``world``."""
    if not x.is_floating_point() or not x.requires_grad:
        return x.detach()
    return x * world - x.detach() * (world - 1)


def gather_with_local_grad(
    x: torch.Tensor, all_gather: Callable[[torch.Tensor], torch.Tensor], rank: int, world: int
) -> torch.Tensor:
    """:func:`gather_rows` for equal shards through a given ``all_gather`` (e.g.
    ``accelerator.gather``, or a stand-in in tests): every rank's ``(B, D)`` batch concatenated
    into ``(world*B, D)``, the local shard keeping its gradient scaled by ``world``."""
    if world == 1:
        return x
    full = all_gather(x.detach())
    b = x.shape[0]
    if full.shape[0] != world * b:
        raise InputError(f"all_gather returned {full.shape[0]} rows, expected {world} x {b}")
    return torch.cat([full[: rank * b], _local_grad(x, world), full[(rank + 1) * b :]])


_CURRENT: Dist | None = None


def current() -> Dist:
    """This process's :class:`Dist` (created once). One process without a launcher: a world of one
    that imports nothing. ``WORLD_SIZE > 1``: the process group through Accelerate (a
    :class:`ConfigError` when Accelerate is not installed)."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = _env_int("WORLD_SIZE", 1)
    accumulate = _env_int("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", 1)
    if accumulate < 1:
        raise ConfigError(f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS must be >= 1, got {accumulate}")
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower() or "no"
    if mp not in ("no", "bf16"):
        raise ConfigError(f"mixed precision {mp!r} is not supported; use 'no' or 'bf16'")
    if world <= 1:
        device = None
        if mp == "bf16":
            if torch.cuda.is_available():
                device = torch.device("cuda")
            else:
                log.warning("bf16 mixed precision is for GPUs; training on the CPU in float32")
                mp = "no"
        _CURRENT = Dist(accumulate=accumulate, mixed_precision=mp, device=device)
        return _CURRENT
    try:
        from accelerate import PartialState  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            f"a {world}-process launch needs Hugging Face Accelerate "
            "(pip install 'relsafe[distributed]'); or run a single process"
        ) from None
    state = PartialState(cpu=not torch.cuda.is_available())
    device = torch.device(state.device)
    if mp == "bf16" and device.type != "cuda":
        log.warning("bf16 mixed precision is for GPUs; training on the CPU in float32")
        mp = "no"
    _CURRENT = Dist(
        rank=int(state.process_index),
        world=int(state.num_processes),
        device=device,
        accumulate=accumulate,
        mixed_precision=mp,
        accelerator=state,
    )
    log.info("distributed: rank %d of %d on %s", _CURRENT.rank, _CURRENT.world, device)
    return _CURRENT
