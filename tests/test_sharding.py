"""Sharded embedding, gallery indexing and UWM calibration across 2 CPU processes (gloo).

One ``torchrun --nproc_per_node 2`` launch of this file's worker embeds texts and images with a
``distributed`` engine, builds a gallery index and calibrates UWM on the tiny CLIP; the main rank
saves what every rank ended with. The test computes the same in this (one) process and requires
the gathered matrices to equal the one-process ones, the non-main rank to hold them too, and the
per-shard cache entries to exist (a relaunch resumes from them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from relsafe.distributed import shard_batches

TEXTS = [f"a photo of thing number {i}" for i in range(11)]
N_IMAGES = 7


def _pixels(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(N_IMAGES, 3, size, size, generator=g) * 2 - 1


def _safety(model: Any, engine: Any) -> Any:
    from relsafe.eval.unsafe_cls import UnsafeClassifier
    from relsafe.safety import SafetyModel

    params = {
        "unsafe": engine.embed_texts(["wine", "beer drinking"]),
        "safe": engine.embed_texts(["juice", "toy"]),
    }
    clf = UnsafeClassifier("prompt", {"text": 0.0}, params)
    return SafetyModel(model, clf, None, engine=engine, spec="tiny")


def _calibration() -> Any:
    from relsafe.data.visu import VisuData
    from relsafe.methods.uwm.data import CalibrationData
    from relsafe.policy import load_policy
    from relsafe.world import splits

    d = VisuData.from_relworld(load_policy("tiny"), 3, splits.EDIT, size=32, caption_split="edit")
    c = d.as_dict()
    return CalibrationData(c["S"], c["U"], c["V"], c["G"])


def run_all(model_dir: str, out: Path, distributed: bool) -> dict[str, torch.Tensor]:
    """Embed, index and calibrate; returns every result tensor by name."""
    from relsafe.engine import EmbeddingEngine
    from relsafe.gallery import build_index
    from relsafe.methods.uwm.calibrate import compute_scores
    from relsafe.methods.uwm.config import UWMConfig
    from relsafe.models.registry import load_model

    model = load_model(model_dir)
    engine = EmbeddingEngine(
        model,
        device="cpu",
        batch_size=3,
        num_workers=0,
        progress=False,
        cache_dir=out / "cache",
        distributed=distributed,
    )
    res = {
        "text": engine.embed_texts(TEXTS),
        "image": engine.embed_images(_pixels(int(model.image_size))),
    }
    plain = EmbeddingEngine(model, device="cpu", batch_size=3, num_workers=0, progress=False)
    index = build_index(
        _safety(model, plain),
        texts=TEXTS,
        out=out / "index",
        shard_size=4,
        faiss="none",
        progress=False,
        distributed=distributed,
    )
    res["index_vectors"] = index.vectors
    cal = compute_scores(model, _calibration(), UWMConfig(batch_size=2), distributed=distributed)
    for k, v in cal.scores.items():
        res[f"uwm/{k}"] = v
    return res


def _worker(model_dir: str, out: str) -> None:
    from safetensors.torch import save_file

    from relsafe.distributed import gather_rows, world

    rank, ws = world()
    assert ws == 2, ws
    res = run_all(model_dir, Path(out), distributed=True)
    save_file({k: v.contiguous() for k, v in res.items()}, str(Path(out) / f"rank{rank}.st"))
    # a rank with no rows (None) still takes part and receives the others' rows
    mine = torch.arange(6.0).reshape(2, 3) if rank == 0 else None
    save_file({"g": gather_rows(mine).contiguous()}, str(Path(out) / f"empty{rank}.st"))
    # leave together and close the group: a rank that exits while its peer's last messages are
    # in flight can take gloo down with SIGABRT (seen once in CI)
    import torch.distributed as tdist

    tdist.barrier()
    tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shard_batches_cover_whole_batches_in_order() -> None:
    for n, bs, ws in [(11, 3, 2), (7, 3, 2), (1, 4, 3), (100, 7, 4), (9, 3, 3)]:
        parts = [shard_batches(n, bs, r, ws) for r in range(ws)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        for (_, hi), (lo, _) in zip(parts, parts[1:], strict=False):
            assert hi == lo  # contiguous, no gap, no overlap
        for lo, hi in parts:
            assert lo in (n, hi) or lo % bs == 0  # starts on a batch boundary (or empty)
            assert hi == n or hi % bs == 0  # whole batches only
        sizes = [(hi - lo + bs - 1) // bs for lo, hi in parts]
        assert max(sizes) - min(sizes) <= 1  # balanced in batches


def test_two_processes_equal_one(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
    }
    dist_out = tmp_path / "dist"
    dist_out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        __file__,
        "worker",
        str(tiny_clip_dir),
        str(dist_out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one_out = tmp_path / "one"
    one_out.mkdir()
    one = run_all(str(tiny_clip_dir), one_out, distributed=False)
    for rank in (0, 1):
        got = load_file(str(dist_out / f"rank{rank}.st"))
        assert set(got) == set(one)
        for k, v in one.items():
            assert got[k].shape == v.shape, k
            assert torch.equal(got[k], v), f"{k} on rank {rank} differs from one process"
    for rank in (0, 1):
        g = load_file(str(dist_out / f"empty{rank}.st"))["g"]
        assert torch.equal(g, torch.arange(6.0).reshape(2, 3)), (rank, g)
    # each rank's share is its own cache entry (resume per shard), plus the gathered whole
    assert len(list((dist_out / "cache").rglob("*.safetensors"))) == 2 * 2 + 2
    assert (dist_out / "index" / "index.json").is_file()
    assert not (dist_out / "index" / "shards").exists()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CI", "true")
    _worker(sys.argv[2], sys.argv[3])
