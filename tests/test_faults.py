"""Fault tests (issue 17, finding 5): kill -9 a training run at random points, including in the
middle of a checkpoint write, rerun it, and get bit-identical adapters and losses.

The child process (``_CHILD`` below) trains a LoRA on the tiny CLIP with :func:`run_loop` and a
work folder, sleeping a little per step so that the kill lands anywhere; with ``SLOW_CKPT`` set, the
checkpoint write is slowed down (a monkeypatched hash of each written file) and the child says when
it is inside one, so the parent can kill it there. Bounded to about a minute.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

_CHILD = r"""
import json, os, random, sys, time
from pathlib import Path
import torch
import relsafe.checkpoints as ck
from relsafe.methods.lora import attach_lora
from relsafe.methods.training import run_loop
from relsafe.models.registry import load_model

model_dir, work, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
sleep = float(os.environ.get("STEP_SLEEP", "0"))
if os.environ.get("SLOW_CKPT"):
    real = ck.sha256_file
    def slow(path):
        print("in-checkpoint-write", flush=True)
        time.sleep(0.3)
        return real(path)
    ck.sha256_file = slow
model = load_model(model_dir)
handle = attach_lora(model, ("text",), r=2, seed=1, dropout=0.1)
texts = ["a child", "a dog eating bread", "an adult", "wine", "a cat on a mat"]

def losses(step, rng):
    time.sleep(sleep)
    batch = rng.sample(texts, 2)
    return {"l": model.forward_text(model.tokenize(batch)).pow(2).mean()}

print("started", flush=True)
res = run_loop(handle, handle.parameters(), losses, {}, steps=STEPS, lr=1e-2, progress=False,
               workdir=work if work != "-" else None, checkpoint_every=3, log_every=1)
from safetensors.torch import save_file
save_file({k: v.contiguous() for k, v in handle.state_dict().items()}, str(out / "adapter.st"))
(out / "curve.json").write_text(json.dumps(res.curve))
"""

STEPS = 12


def _script(tmp: Path) -> Path:
    p = tmp / "child.py"
    p.write_text(_CHILD.replace("STEPS", str(STEPS)))
    return p


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _run(script: Path, model: Path, work: str, out: Path, **env: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(script), str(model), work, str(out)],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _kill(
    script: Path, model: Path, work: Path, out: Path, delay: float, at: str, **env: str
) -> None:
    """Start the child, wait for the line ``at`` on its stdout, sleep ``delay`` s, SIGKILL it."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(model), str(work), str(out)],
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            if line.strip() == at or time.monotonic() > deadline:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)


def _result(out: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter.st")), json.loads((out / "curve.json").read_text())


def test_kill_minus_9_anywhere_then_rerun_is_bit_identical(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    script = _script(tmp_path)
    _run(script, tiny_clip_dir, "-", tmp_path / "ref")
    ref_adapter, ref_curve = _result(tmp_path / "ref")
    assert len(ref_curve) == STEPS
    rng = random.Random(17)
    plans = [
        # (line to wait for, delay after it, env of the killed child)
        ("started", rng.uniform(0.1, 0.6), {"STEP_SLEEP": "0.05"}),
        # inside the second checkpoint write: the first one is complete on disk
        ("in-checkpoint-write", rng.uniform(0.05, 0.25), {"SLOW_CKPT": "1"}),
    ]
    killed_mid_write = False
    for i, (at, delay, env) in enumerate(plans):
        work = tmp_path / f"work{i}"
        _kill(script, tiny_clip_dir, work, tmp_path / f"dead{i}", delay, at, **env)
        assert not (tmp_path / f"dead{i}" / "adapter.st").exists(), "the kill came too late"
        if at == "in-checkpoint-write":
            killed_mid_write = any(p.name.startswith(".checkpoint.") for p in work.iterdir())
        _run(script, tiny_clip_dir, str(work), tmp_path / f"out{i}")
        adapter, curve = _result(tmp_path / f"out{i}")
        assert curve == ref_curve, f"plan {i}: losses differ after kill -9 and rerun"
        assert adapter.keys() == ref_adapter.keys()
        for k, v in ref_adapter.items():
            assert torch.equal(adapter[k], v), f"plan {i}: {k} differs after kill -9 and rerun"
    assert killed_mid_write, "the kill did not land inside a checkpoint write"


@pytest.mark.parametrize("leftover", ["tmp", "old"])
def test_leftovers_of_an_interrupted_checkpoint_write_are_handled(
    tiny_clip_dir: Path, tmp_path: Path, leftover: str
) -> None:
    """A half-written ``.checkpoint.tmp-*`` is never resumed from; a ``.checkpoint.old-*`` with no
    ``checkpoint`` (killed between the two renames) is the complete previous set and is put back."""
    from relsafe.checkpoints import read_meta
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.training import CHECKPOINT_DIR, run_loop
    from relsafe.models.registry import load_model

    model = load_model(str(tiny_clip_dir))
    handle = attach_lora(model, ("text",), r=2, seed=1)
    tok = model.tokenize(["a dog eating bread"])

    def losses(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        if step == 4:
            raise KeyboardInterrupt
        return {"l": model.forward_text(tok).pow(2).mean()}

    kw = dict(steps=6, lr=1e-2, progress=False, workdir=tmp_path, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        run_loop(handle, handle.parameters(), losses, {}, **kw)
    ck = tmp_path / CHECKPOINT_DIR
    if leftover == "tmp":
        (tmp_path / ".checkpoint.tmp-1.dead").mkdir()
        (tmp_path / ".checkpoint.tmp-1.dead" / "tensors.safetensors").write_bytes(b"half")
    else:
        ck.rename(tmp_path / ".checkpoint.old-1.dead")
    assert read_meta(ck)["step"] == 3


def test_method_state_is_saved_inside_the_same_checkpoint_set(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    """HySAC's scalars and early-stopping state travel in run_loop's checkpoint folder (one
    rename), not in separate files a kill could leave one step behind."""
    from relsafe.checkpoints import load_checkpoint
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.training import CHECKPOINT_DIR, ExtraState, run_loop
    from relsafe.models.registry import load_model

    model = load_model(str(tiny_clip_dir))
    handle = attach_lora(model, ("text",), r=2, seed=1)
    tok = model.tokenize(["a dog eating bread"])
    saved: list[int] = []
    loaded: list[tuple[int, object]] = []

    def save(step: int) -> dict[str, object]:
        saved.append(step)
        return {"step": step, "t": torch.full((2,), float(step))}

    def losses(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        if step == 4 and not loaded:
            raise KeyboardInterrupt
        return {"l": model.forward_text(tok).pow(2).mean()}

    extra = ExtraState("toy", save, lambda step, obj: loaded.append((step, obj)))
    kw = dict(steps=6, lr=1e-2, progress=False, workdir=tmp_path, checkpoint_every=3, extra=extra)
    with pytest.raises(KeyboardInterrupt):
        run_loop(handle, handle.parameters(), losses, {}, **kw)
    meta = load_checkpoint(tmp_path / CHECKPOINT_DIR).meta
    assert meta["step"] == 3 and meta["extra"]["step"] == 3
    assert torch.equal(meta["extra"]["t"], torch.full((2,), 3.0))
    run_loop(handle, handle.parameters(), losses, {}, **kw)
    assert [s for s, _ in loaded] == [3]
