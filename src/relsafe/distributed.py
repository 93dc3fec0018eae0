"""relsafe's one process-group module: training loops (LoRA methods, pretraining) and the work
split of embedding, gallery indexing and UWM calibration across a launch's processes.

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

Inference work (``relsafe embed``, ``relsafe index``, UWM calibration) is split by whole batches:
:func:`shard_batches` gives each rank a contiguous run of batches, :func:`sharded_rows` computes
this rank's share (cached per share: a killed launch resumes per shard) and gathers them with the
same :func:`gather_rows`; :func:`all_sum` sums tensors over ranks, :func:`barrier` waits, and
:func:`world` / :func:`is_main` are :func:`current`'s rank and size.
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

__all__ = [
    "Dist",
    "all_sum",
    "barrier",
    "current",
    "gather_rows",
    "gather_with_local_grad",
    "is_main",
    "shard_batches",
    "shard_bounds",
    "sharded_rows",
    "world",
]


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
        lo, hi = self.shard_bounds(len(items))
        local = fn(self.shard(items))
        if local.shape[0] != hi - lo:
            raise InputError(
                f"rank {self.rank}: shard has {local.shape[0]} rows, expected {hi - lo}"
            )
        return gather_rows(local)

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


def _comm_device() -> torch.device:
    import torch.distributed as tdist

    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Every rank's rows concatenated in rank order, on every rank: the one gather of relsafe
    (training shards and embedding shares alike). Without a launch it returns ``local``.

    Shards may differ in length or be empty (``local`` None on a rank with no rows; ``dim`` gives
    the row width when no rank has rows). Tensor collectives only (row counts and shapes first,
    then padded rows; nothing is pickled). The other ranks' rows are constants; a local shard
    that requires grad keeps its gradient, scaled by the world size (values unchanged), so every
    rank computes the same global loss and averaging the parameter gradients over ranks
    (:meth:`Dist.all_reduce_grads`) gives exactly that loss's gradient. The result has the local
    shard's dtype and device (CPU float32 on a rank without rows).
    """
    rank, ws = world()
    if ws == 1:
        if local is None:
            return torch.zeros(0, int(dim or 0))
        return local
    import torch.distributed as tdist

    dev = _comm_device()
    shape = [] if local is None else list(local.shape[1:])
    if len(shape) > 6:
        raise InputError(f"gather_rows: rows of {len(shape)} dimensions; at most 6 are supported")
    wide = local is not None and local.dtype == torch.float64
    meta_list = [0 if local is None else int(local.shape[0]), len(shape), int(wide)]
    meta_list += shape + [0] * (6 - len(shape))
    meta = torch.tensor(meta_list, dtype=torch.int64, device=dev)
    metas = [torch.zeros_like(meta) for _ in range(ws)]
    tdist.all_gather(metas, meta)
    counts = [int(m[0]) for m in metas]
    known = [m for m in metas if int(m[0]) > 0] or metas
    row = [int(x) for x in known[0][3 : 3 + int(known[0][1])]]
    if local is None and not any(counts):
        row = [int(dim or 0)]
    if any(int(m[0]) > 0 and [int(x) for x in m[3 : 3 + int(m[1])]] != row for m in metas):
        raise InputError(f"rank {rank}: the ranks' rows have different shapes")
    comm_dtype = torch.float64 if any(int(m[2]) for m in metas) else torch.float32
    buf = torch.zeros(max(counts), *row, dtype=comm_dtype, device=dev)
    if local is not None and counts[rank]:
        buf[: counts[rank]] = local.detach().to(dev, comm_dtype)
    parts = [torch.empty_like(buf) for _ in range(ws)]
    tdist.all_gather(parts, buf)
    out_dtype = torch.float32 if local is None else local.dtype
    out_dev = torch.device("cpu") if local is None else local.device
    rows = [p[:c].to(out_dev, out_dtype) for p, c in zip(parts, counts, strict=True)]
    if local is not None:
        rows[rank] = _local_grad(local, ws)
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


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (:func:`current`; joins the launch's process group
    on first use, ``(0, 1)`` without a launcher)."""
    d = current()
    return d.rank, d.world


def is_main() -> bool:
    """Is this the main process (rank 0, or no launch)?"""
    return current().is_main


def barrier() -> None:
    """Wait for every rank (a no-op without a launch)."""
    current().barrier()


def all_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (a no-op without a launch; UWM's score sums)."""
    if world()[1] == 1:
        return
    import torch.distributed as tdist

    dev = _comm_device()
    for t in tensors:
        moved = t if t.device == dev else t.to(dev)
        tdist.all_reduce(moved)
        if moved is not t:
            t.copy_(moved)


def shard_batches(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank``: a contiguous share of the ``ceil(n / batch_size)``
    whole batches (the first ranks take one more when they do not divide evenly; may be empty),
    so every row is computed in exactly the batch it would be in one process (the gathered
    matrix *is* the one-process matrix, not merely close to it)."""
    n_batches = (n + batch_size - 1) // batch_size
    per, extra = divmod(n_batches, world_size)
    first = rank * per + min(rank, extra)
    count = per + (1 if rank < extra else 0)
    return min(n, first * batch_size), min(n, (first + count) * batch_size)


def sharded_rows(
    n: int,
    batch_size: int,
    compute: Callable[[int, int], torch.Tensor],
    cache: Any = None,
    key: str | None = None,
    what: str = "",
) -> torch.Tensor:
    """``compute(lo, hi)`` on this rank's :func:`shard_batches` share, gathered on every rank
    (CPU float32).

    With an :class:`~relsafe.engine.cache.EmbeddingCache` and the call's ``key``, the share is
    stored under ``key`` plus its row range (and reloaded on a relaunch with the same process
    count and batch size): the per-shard resume."""
    import hashlib

    rank, ws = world()
    lo, hi = shard_batches(n, batch_size, rank, ws)
    local: torch.Tensor | None = None
    if hi > lo:
        skey = None
        if cache is not None and key is not None:
            skey = hashlib.sha256(f"{key}|rows {lo}:{hi} of {n}".encode()).hexdigest()
            local = cache.load(skey, hi - lo)
        if local is None:
            local = compute(lo, hi)
            if skey is not None:
                cache.save(skey, local, {"modality": what, "rows": f"{lo}:{hi}", "n": str(n)})
    return gather_rows(local).to("cpu", torch.float32)
