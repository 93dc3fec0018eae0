"""The one training-checkpoint format (relsafe.checkpoints) and run_loop's use of it: exact round
trips, bit-identical resumes, clear errors on damaged folders, atomic replacement, never pickle."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from relsafe.checkpoints import (
    STATE_FILE,
    STATE_TENSORS_FILE,
    TENSORS_FILE,
    RngState,
    checkpoint_exists,
    load_checkpoint,
    load_optimizer_state,
    read_meta,
    save_checkpoint,
)
from relsafe.errors import CheckpointError
from relsafe.utils_io import atomic_dir


# ---- a tiny training run that uses every random source -------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.3)  # draws from the global torch generator
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def _setup() -> tuple[_Net, torch.optim.Optimizer, random.Random, np.random.Generator]:
    torch.manual_seed(0)
    net = _Net()
    opt = torch.optim.AdamW(
        [
            {"params": [net.fc1.weight, net.fc2.weight], "weight_decay": 0.1},
            {"params": [net.fc1.bias, net.fc2.bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(0.9, 0.98),
    )
    return net, opt, random.Random(1), np.random.default_rng(2)


def _train(net: _Net, opt: torch.optim.Optimizer, rng: random.Random, gen: np.random.Generator,
           steps: range) -> None:  # fmt: skip
    data = torch.randn(32, 6, generator=torch.Generator().manual_seed(3))
    net.train()
    for _ in steps:
        idx = gen.choice(32, size=8, replace=False)
        scale = rng.uniform(0.5, 1.5)
        loss = net(data[idx] * scale).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _save(folder: Path, net: _Net, opt: torch.optim.Optimizer, rng: random.Random,
          gen: np.random.Generator, step: int) -> None:  # fmt: skip
    save_checkpoint(
        folder,
        net.state_dict(),
        optimizer=opt.state_dict(),
        rng=RngState.capture(python=rng, numpy=gen),
        meta={"step": step, "config_sha256": "abc", "curve": [{"loss": 1.5}]},
    )


def test_save_load_continue_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    net, opt, rng, gen = _setup()
    _train(net, opt, rng, gen, range(10))
    reference = {k: v.clone() for k, v in net.state_dict().items()}

    net, opt, rng, gen = _setup()
    _train(net, opt, rng, gen, range(4))
    _save(tmp_path / "ck", net, opt, rng, gen, 4)
    _train(net, opt, rng, gen, range(4, 6))  # work after the checkpoint is lost

    net, opt, rng, gen = _setup()
    torch.manual_seed(123)  # a fresh process would not share the generator state
    ck = load_checkpoint(tmp_path / "ck", expect=net.state_dict())
    net.load_state_dict(ck.tensors)
    load_optimizer_state(opt, ck.optimizer)
    ck.rng.restore(python=rng, numpy=gen)
    assert ck.meta == {"step": 4, "config_sha256": "abc", "curve": [{"loss": 1.5}]}
    _train(net, opt, rng, gen, range(ck.meta["step"], 10))
    for k, v in reference.items():
        assert torch.equal(net.state_dict()[k], v), k


def test_optimizer_state_round_trips_exactly(tmp_path: Path) -> None:
    net, opt, rng, gen = _setup()
    _train(net, opt, rng, gen, range(3))
    _save(tmp_path / "ck", net, opt, rng, gen, 3)
    ck = load_checkpoint(tmp_path / "ck")
    mine, back = opt.state_dict(), ck.optimizer
    assert back is not None
    assert back["param_groups"] == mine["param_groups"]
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert set(back["state"]) == set(mine["state"])  # integer keys
    for i, entry in mine["state"].items():
        assert set(back["state"][i]) == set(entry)
        for k, v in entry.items():
            assert back["state"][i][k].dtype == v.dtype and torch.equal(back["state"][i][k], v)
    assert back["state"][0]["step"].ndim == 0  # AdamW's step tensors survive as 0-d tensors
    assert ck.rng.python == rng.getstate()
    assert ck.rng.numpy == gen.bit_generator.state
    assert torch.equal(ck.rng.torch, torch.get_rng_state())
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted(
        [TENSORS_FILE, STATE_TENSORS_FILE, STATE_FILE]
    )
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_meta_keeps_tuples_non_finite_floats_and_odd_keys(tmp_path: Path) -> None:
    meta = {"t": (1, (2.5, "x")), "nan": float("inf"), "k": {3: "int key"}, "x": {"__tuple__": 1}}
    save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2)}, meta=meta)
    assert read_meta(tmp_path / "ck") == meta
    assert json.loads((tmp_path / "ck" / STATE_FILE).read_text())["version"] == 1
    with pytest.raises(CheckpointError, match="cannot store a set"):
        save_checkpoint(tmp_path / "bad", {"w": torch.zeros(2)}, meta={"s": {1, 2}})
    assert not (tmp_path / "bad").exists()


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net, opt, rng, gen = _setup()
    _train(net, opt, rng, gen, range(2))
    _save(tmp_path / "ck", net, opt, rng, gen, 2)

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    load_checkpoint(tmp_path / "ck", expect=net.state_dict())


# ---- damaged checkpoints give a CheckpointError naming the file -----------------------------------
@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, _Net, torch.optim.Optimizer]:
    net, opt, rng, gen = _setup()
    _train(net, opt, rng, gen, range(2))
    _save(tmp_path / "ck", net, opt, rng, gen, 2)
    return tmp_path / "ck", net, opt


def test_truncated_file_is_reported(saved: tuple[Path, _Net, torch.optim.Optimizer]) -> None:
    folder, net, _ = saved
    path = folder / TENSORS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{TENSORS_FILE}: truncated"):
        load_checkpoint(folder, expect=net.state_dict())


def test_corrupt_file_is_reported(saved: tuple[Path, _Net, torch.optim.Optimizer]) -> None:
    folder, net, _ = saved
    path = folder / STATE_TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{STATE_TENSORS_FILE}: corrupt"):
        load_checkpoint(folder, expect=net.state_dict())


def test_missing_or_broken_state_file_is_reported(
    saved: tuple[Path, _Net, torch.optim.Optimizer],
) -> None:
    folder, _, _ = saved
    state = folder / STATE_FILE
    text = state.read_text()
    state.write_text(text[:40])
    with pytest.raises(CheckpointError, match=rf"{STATE_FILE}: unreadable or not JSON"):
        load_checkpoint(folder)
    state.unlink()
    with pytest.raises(CheckpointError, match=rf"{STATE_FILE}: missing"):
        load_checkpoint(folder)
    assert checkpoint_exists(folder)  # so a resume reports the damage instead of starting afresh
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        load_checkpoint(folder.parent / "nowhere")


def test_mismatched_model_or_optimizer_is_reported(
    saved: tuple[Path, _Net, torch.optim.Optimizer],
) -> None:
    folder, net, _ = saved
    other = {**net.state_dict(), "fc1.weight": torch.zeros(4, 6)}
    with pytest.raises(CheckpointError, match=r"tensor 'fc1.weight' is torch.float32 \(8, 6\)"):
        load_checkpoint(folder, expect=other)
    with pytest.raises(CheckpointError, match=r"missing \['extra'\]"):
        load_checkpoint(folder, expect={**net.state_dict(), "extra": torch.zeros(1)})
    ck = load_checkpoint(folder)
    one_group = torch.optim.AdamW(net.parameters(), lr=1e-2)
    with pytest.raises(CheckpointError, match="2 parameter groups, this run 1"):
        load_optimizer_state(one_group, ck.optimizer, str(folder))
    with pytest.raises(CheckpointError, match="holds no numpy random-number state"):
        RngState(torch=torch.get_rng_state()).restore(numpy=np.random.default_rng(0))


# ---- atomic replacement ----------------------------------------------------------------------------
def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(folder, {"w": torch.ones(3)}, meta={"step": 1})
    with pytest.raises(RuntimeError, match="killed"), atomic_dir(folder) as tmp:
        (tmp / TENSORS_FILE).write_bytes(b"half")
        raise RuntimeError("killed")
    assert read_meta(folder) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary folder left
    save_checkpoint(folder, {"w": torch.full((3,), 2.0)}, meta={"step": 2})
    assert torch.equal(load_checkpoint(folder).tensors["w"], torch.full((3,), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_a_kill_between_the_two_renames_recovers_the_previous_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(folder, {"w": torch.ones(3)}, meta={"step": 1})
    # what a kill after "move the old folder aside" and before "move the new one in" leaves
    os.replace(folder, tmp_path / ".ck.old-123.abcd")
    (tmp_path / ".ck.tmp-123.abcd").mkdir()
    (tmp_path / ".ck.tmp-123.abcd" / TENSORS_FILE).write_bytes(b"incomplete")
    assert checkpoint_exists(folder)
    assert read_meta(folder) == {"step": 1}
    save_checkpoint(folder, {"w": torch.ones(3)}, meta={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# ---- run_loop writes this format ------------------------------------------------------------------
def test_run_loop_resumes_bit_identically_from_a_safetensors_folder(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.training import CHECKPOINT_DIR, run_loop
    from relsafe.models.registry import load_model

    def make():  # noqa: ANN202
        model = load_model(str(tiny_clip_dir))
        handle = attach_lora(model, ("text",), r=2, seed=1, dropout=0.1)
        texts = ["a child", "a dog eating bread", "an adult", "wine"]

        def losses(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
            batch = rng.sample(texts, 2)
            return {"l": model.forward_text(model.tokenize(batch)).pow(2).mean()}

        return handle, losses

    h1, l1 = make()
    run_loop(h1, h1.parameters(), l1, {}, steps=8, lr=1e-2, progress=False)

    h2, l2 = make()

    def crashing(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        if step == 6:
            raise KeyboardInterrupt
        return l2(step, rng)

    kw = dict(steps=8, lr=1e-2, progress=False, workdir=tmp_path, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        run_loop(h2, h2.parameters(), crashing, {}, **kw)
    assert (tmp_path / CHECKPOINT_DIR / STATE_FILE).is_file()
    assert read_meta(tmp_path / CHECKPOINT_DIR)["step"] == 4
    assert not list(tmp_path.rglob("*.pt"))
    h3, l3 = make()
    res = run_loop(h3, h3.parameters(), l3, {}, **kw)
    assert res.resumed_from == 4
    for k, v in h1.state_dict().items():
        assert torch.equal(v, h3.state_dict()[k]), k


def test_run_loop_refuses_an_old_pickle_or_damaged_checkpoint(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.training import run_loop
    from relsafe.models.registry import load_model

    (tmp_path / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (tmp_path / "state.json").write_text('{"step": 5}')
    model = load_model(str(tiny_clip_dir))
    handle = attach_lora(model, ("text",), r=2)
    tok = model.tokenize(["a b"])
    with pytest.raises(CheckpointError, match=r"earlier format \(optimizer.pt"):
        run_loop(
            handle,
            handle.parameters(),
            lambda step, rng: {"l": model.forward_text(tok).pow(2).mean()},
            {},
            steps=2,
            lr=1e-2,
            progress=False,
            workdir=tmp_path,
        )
    # a damaged checkpoint folder is reported, not silently replaced by a fresh start
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(CheckpointError, match=rf"{STATE_FILE}: missing"):
        run_loop(
            handle,
            handle.parameters(),
            lambda step, rng: {"l": model.forward_text(tok).pow(2).mean()},
            {},
            steps=2,
            lr=1e-2,
            progress=False,
            workdir=tmp_path,
        )
