"""Data-parallel training (relsafe.distributed): 2 CPU processes (gloo, through Accelerate) give the
1-process loss curve and weights, the ranks really synchronise, and checkpoints resume on another
process count.

The processes are started as ``python tests/test_distributed.py worker ...`` with the
``WORLD_SIZE``/``RANK``/``MASTER_*`` environment a launcher sets (what ``accelerate launch`` does),
so the product path under test is exactly the launched one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_runs import TINY_DATA

HERE = Path(__file__).resolve()

# stated tolerance of the 1-vs-N comparison: float summation order differs (shards are gathered,
# gradients all-reduced), nothing else does
CURVE_RTOL = 1e-4
WEIGHT_ATOL = 1e-5


def _config(method: str, steps: int) -> Any:
    if method == "safeclip":
        from relsafe.methods.safeclip import SafeClipConfig

        return SafeClipConfig(
            steps=steps, log_every=1, n_per_pair=2, batch_size=5, size=32, dropout=0.0,
            checkpoint_every=2,
        )  # fmt: skip
    if method == "hysac":
        from relsafe.methods.hysac import HySACConfig

        return HySACConfig(
            steps=steps, log_every=1, n_per_pair=3, batch_size=6, size=32, eval_every=100,
            checkpoint_every=2,
        )  # fmt: skip
    from relsafe.data.edit_sets import SetSizes
    from relsafe.methods.relational_lora import LoraEditConfig

    # odd batch sizes: uneven shards over 2 ranks; both towers: text and image shards
    return LoraEditConfig(
        towers=["text", "vision"], steps=steps, log_every=1, batch_forget=3, batch_retain=5,
        batch_images=3, checkpoint_every=2, data=SetSizes(**TINY_DATA),
    )  # fmt: skip


def _worker(model_dir: str, jobs_json: str, out: str) -> None:
    """One process of a launch: run each job (method, steps, work folder, no-sync?) in turn and
    write this rank's adapter and curve of job ``i`` under ``out/i``."""
    from safetensors.torch import save_file

    import relsafe.methods.hysac as hysac_mod
    import relsafe.methods.relational_lora as rl_mod
    import relsafe.methods.safeclip as sc_mod
    import relsafe.methods.training as training
    from relsafe.distributed import Dist, current
    from relsafe.errors import NotMainProcess
    from relsafe.methods.base import get_method
    from relsafe.models.registry import load_model
    from relsafe.policy import find_policy, load_policy

    torch.set_num_threads(1)
    dist = current()
    policy = load_policy(find_policy("tiny"))
    captured: dict[str, Any] = {}
    real = training.run_loop

    def spy(handle: Any, *a: Any, **k: Any) -> Any:
        res = real(handle, *a, **k)
        captured["state"], captured["curve"] = handle.state_dict(), res.curve
        return res

    for mod in (training, hysac_mod, rl_mod, sc_mod):
        mod.run_loop = spy  # type: ignore[attr-defined]
    for i, job in enumerate(json.loads(jobs_json)):
        if job.get("nosync"):  # the broken variant the sync test must tell apart
            Dist.all_reduce_grads = lambda self, params: None  # type: ignore[method-assign]
        try:
            get_method(job["method"]).fn(
                load_model(model_dir),
                policy,
                _config(job["method"], job["steps"]),
                progress=False,
                workdir=job.get("workdir"),
            )
        except NotMainProcess:
            pass
        o = Path(out) / str(i)
        o.mkdir(parents=True, exist_ok=True)
        save_file(captured["state"], str(o / f"rank{dist.rank}.safetensors"))
        (o / f"rank{dist.rank}.json").write_text(json.dumps(captured["curve"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(world: int, model_dir: Path, jobs: list[dict[str, Any]], out: Path) -> list[Any]:
    """Run ``world`` worker processes as a launcher would; per job, rank -> (curve, state)."""
    from safetensors.torch import load_file

    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k, None)
        if world > 1:
            env.update(
                WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
            )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE), "worker", str(model_dir), json.dumps(jobs), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]

    def read(i: int, r: int) -> Any:
        o = out / str(i)
        return json.loads((o / f"rank{r}.json").read_text()), load_file(
            str(o / f"rank{r}.safetensors")
        )

    return [{r: read(i, r) for r in range(world)} for i in range(len(jobs))]


def _close_curves(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    assert [e["step"] for e in a] == [e["step"] for e in b]
    for ea, eb in zip(a, b, strict=True):
        assert set(ea) == set(eb)
        for k in ea:
            assert eb[k] == pytest.approx(ea[k], rel=CURVE_RTOL, abs=1e-6), (k, ea, eb)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from relsafe.testing import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("dist") / "tiny-clip")


def test_shard_bounds_cover_every_row_once() -> None:
    from relsafe.distributed import shard_bounds

    for n in range(0, 9):
        for world in (1, 2, 3):
            b = shard_bounds(n, world)
            rows = [i for lo, hi in b for i in range(lo, hi)]
            assert rows == list(range(n))
            assert max(hi - lo for lo, hi in b) - min(hi - lo for lo, hi in b) <= 1


def test_one_process_imports_no_accelerate() -> None:
    code = (
        "import sys; from relsafe.distributed import current; d = current(); "
        "assert d.world == 1 and d.rank == 0; assert 'accelerate' not in sys.modules; "
        "x = [1, 2, 3]; assert d.shard(x) is x"
    )
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_multi_process_launch_without_accelerate_is_a_clear_error() -> None:
    code = (
        "import sys; sys.modules['accelerate'] = None\n"
        "from relsafe.distributed import current\nfrom relsafe.errors import ConfigError\n"
        "try:\n    current()\nexcept ConfigError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, timeout=120, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERR a 2-process launch needs Hugging Face Accelerate" in out.stdout


@pytest.fixture(scope="module")
def runs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three launches (1, 2, then 1 process), each running several jobs, so the processes start
    three times in all: fresh runs of each method, resumes across process counts, no-sync."""
    tmp = tmp_path_factory.mktemp("runs")
    w1, w2, r1, r2 = (str(tmp / n) for n in ("w1", "w2", "r1", "r2"))
    rl = {"method": "relational-lora", "steps": 4}
    one = _launch(
        1,
        model_dir,
        [
            {**rl, "workdir": w1},
            {"method": "safeclip", "steps": 3},
            {"method": "hysac", "steps": 3},
        ],
        tmp / "one",
    )
    shutil.copytree(w1, r2)  # the 1-process step-2 checkpoint, to be resumed on 2
    two = _launch(
        2,
        model_dir,
        [
            {**rl, "workdir": w2},
            {**rl, "workdir": r2},
            {"method": "safeclip", "steps": 3},
            {"method": "hysac", "steps": 3},
            {**rl, "steps": 2, "nosync": True},  # last: it switches the all-reduce off
        ],
        tmp / "two",
    )
    shutil.copytree(w2, r1)  # the 2-process step-2 checkpoint, to be resumed on 1
    back = _launch(1, model_dir, [{**rl, "workdir": r1}], tmp / "back")
    return {
        "rl": (one[0], two[0]),
        "resume_on_2": (two[1], one[0]),
        "resume_on_1": (back[0], two[0]),
        "safeclip": (one[1], two[2]),
        "hysac": (one[2], two[3]),
        "nosync": two[4],
    }


@pytest.mark.parametrize("which", ["rl", "safeclip", "hysac"])
def test_two_processes_match_one(runs: dict[str, Any], which: str) -> None:
    """relational-lora (both towers, uneven shards), safeclip and hysac (contrastive: negatives
    across the shards): 1 vs 2 processes on the same global batch give the same curve and
    weights; every rank computed the same loss and holds identical weights."""
    one, two = runs[which]
    _close_curves(one[0][0], two[0][0])
    assert two[0][0] == two[1][0]
    assert _max_diff(two[0][1], two[1][1]) == 0.0  # synchronised: identical on both ranks
    assert _max_diff(one[0][1], two[0][1]) < WEIGHT_ATOL


@pytest.mark.parametrize("which", ["resume_on_2", "resume_on_1"])
def test_checkpoint_resumes_on_another_process_count(runs: dict[str, Any], which: str) -> None:
    """A step-2 checkpoint made by 1 process resumes on 2 (and vice versa) to the uninterrupted
    result; the curve's first two entries come from the checkpoint."""
    res, ref = runs[which]
    assert [e["step"] for e in res[0][0]] == [0.0, 1.0, 2.0, 3.0]
    _close_curves(res[0][0], ref[0][0])
    assert _max_diff(res[0][1], ref[0][1]) < WEIGHT_ATOL


def test_without_gradient_sync_the_ranks_diverge(runs: dict[str, Any]) -> None:
    """The sync check can fail: with the all-reduce removed (each rank stepping on its own
    shard's gradient, as the HySAC reference's wrapper did) the ranks' adapters differ."""
    two = runs["nosync"]
    assert _max_diff(two[0][1], two[1][1]) > 1e-4


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    _worker(sys.argv[2], sys.argv[3], sys.argv[4])
