"""Work split across the processes of a launch (``accelerate launch`` / ``torchrun``).

A launch sets ``WORLD_SIZE`` > 1; :func:`world` then reuses the process group (one that
Accelerate or a training loop started) or starts one with ``torch.distributed`` (gloo on CPU, NCCL
on CUDA; Accelerate's ``PartialState`` adopts it later) and returns ``(rank, world_size)``. Without a launcher it is ``(0, 1)`` and nothing
here changes behaviour.

* :func:`shard_batches` gives each rank a contiguous run of whole batches, so every row is
  computed in exactly the batch it would be in a one-process run (the gathered matrix is the
  one-process matrix, not merely close to it);
* :func:`gather_rows` concatenates each rank's rows in rank order on every rank, with tensor
  collectives (sizes first, then padded rows): nothing is pickled;
* :func:`all_sum` sums tensors over ranks in place (UWM's score sums); :func:`barrier` waits.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "all_sum",
    "barrier",
    "gather_rows",
    "is_main",
    "shard_batches",
    "sharded_rows",
    "world",
]


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; joins the launch's process group on first use."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if _env_world() <= 1 or not dist.is_available():
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Is this the main process (rank 0, or no launch)?"""
    return world()[0] == 0


def shard_batches(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank``: a contiguous share of the ``ceil(n / batch_size)``
    batches (the first ranks take one more when they do not divide evenly); may be empty."""
    n_batches = (n + batch_size - 1) // batch_size
    per, extra = divmod(n_batches, world_size)
    first = rank * per + min(rank, extra)
    count = per + (1 if rank < extra else 0)
    return min(n, first * batch_size), min(n, (first + count) * batch_size)


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Every rank's rows ``(n_r, D)``, concatenated in rank order, on every rank (CPU float32).

    ``local`` may be None on a rank with no rows; ``dim`` is then taken from the others."""
    import torch.distributed as dist

    _, ws = world()
    if ws == 1:
        assert local is not None
        return local
    dev = _comm_device()
    rows = 0 if local is None else int(local.shape[0])
    d = int(local.shape[1]) if local is not None else int(dim or 0)
    meta = torch.tensor([rows, d], dtype=torch.int64, device=dev)
    metas = [torch.zeros_like(meta) for _ in range(ws)]
    dist.all_gather(metas, meta)
    counts = [int(m[0]) for m in metas]
    d = max(int(m[1]) for m in metas)
    most = max(counts)
    buf = torch.zeros(most, d, dtype=torch.float32, device=dev)
    if local is not None and rows:
        buf[:rows] = local.to(dev, torch.float32)
    parts = [torch.empty_like(buf) for _ in range(ws)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to("cpu")


def all_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (a no-op without a launch)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return
    dev = _comm_device()
    for t in tensors:
        if t.device == dev:
            dist.all_reduce(t)
        else:
            moved = t.to(dev)
            dist.all_reduce(moved)
            t.copy_(moved)


def barrier() -> None:
    """Wait for every rank (a no-op without a launch)."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def sharded_rows(
    n: int,
    batch_size: int,
    compute: Callable[[int, int], torch.Tensor],
    cache: Any = None,
    key: str | None = None,
    what: str = "",
) -> torch.Tensor:
    """``compute(lo, hi)`` on this rank's :func:`shard_batches` share, gathered on every rank.

    With an :class:`~relsafe.engine.cache.EmbeddingCache` and the call's ``key``, the share is
    stored under ``key`` plus its row range (and reloaded on a relaunch with the same process
    count and batch size): the per-shard resume."""
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
    return gather_rows(local)
