"""HySAC: the hyperbolic wrapper, its persistence, traversal, unsafe classification and training."""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from relsafe.errors import ConfigError, InputError
from relsafe.geometry import NumericalError, dist0, elementwise_dist, exp_map0, pairwise_dist
from relsafe.models.base import DualEncoder, LayerPreset
from relsafe.models.hyperbolic import HyperbolicDualEncoder, best_threshold, load_hyperbolic
from relsafe.models.registry import load_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These tests are many tiny ops; one thread avoids oversubscription on shared CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def hyp(tiny_clip_dir: Path) -> HyperbolicDualEncoder:
    """A fresh hyperbolic wrapper around its own copy of the tiny CLIP."""
    return HyperbolicDualEncoder(load_model(str(tiny_clip_dir)))


@pytest.fixture(scope="module")
def tiny_policy() -> Any:
    from relsafe.policy import load_policy

    return load_policy("tiny")


TEXTS = ["a photo of a child drinking juice", "a photo of a child drinking wine", "a dog"]


def _images(n: int = 3, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


# ---- the wrapper ----------------------------------------------------------------------------


def test_wrapper_geometry_and_delegation(hyp: HyperbolicDualEncoder) -> None:
    base = hyp.base
    assert hyp.geometry == "lorentz"
    assert hyp.embed_dim == base.embed_dim and hyp.image_size == base.image_size
    assert hyp.text_tower is base.text_tower and hyp.preset is base.preset
    # typed capabilities: LoRA goes onto the base's CLIPModel, no frozen-prefix cut on HF CLIP
    assert hyp.peft_root() is base.model and hyp.contrastive_logit_scale() is hyp.logit_scale
    assert hyp.supports_traversal and hyp.supports_unsafe_score and not base.supports_traversal
    assert hyp.split_tower("text", 1) is None and hyp.split_tower("image", 0) is None
    assert float(hyp.curvature.detach()) == pytest.approx(1.0)
    assert float(hyp.alpha("text").detach()) == pytest.approx(
        math.log(1 / math.sqrt(base.embed_dim))
    )
    assert float(hyp.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        raw = base.forward_text(base.tokenize(TEXTS))
    t = hyp.encode_text(TEXTS)
    assert torch.allclose(t, exp_map0(raw * hyp.alpha("text").exp(), 1.0), atol=1e-6)
    i = hyp.encode_image(_images())
    assert torch.allclose(hyp.similarity(t, i), -pairwise_dist(t, i, 1.0), atol=1e-6)
    assert torch.allclose(hyp.pair_similarity(t, i), -elementwise_dist(t, i, 1.0), atol=1e-6)
    assert torch.allclose(hyp.distance_from_origin(t), dist0(t, 1.0))
    with pytest.raises(InputError, match="dims differ"):
        hyp.similarity(t, t[:, :3])


def test_similarity_chunks_large_galleries(
    hyp: HyperbolicDualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relsafe.models import hyperbolic

    g = torch.Generator().manual_seed(1)
    a = exp_map0(torch.randn(23, hyp.embed_dim, generator=g), 1.0)
    b = exp_map0(torch.randn(7, hyp.embed_dim, generator=g), 1.0)
    full = hyp.similarity(a, b)
    monkeypatch.setattr(hyperbolic, "_SIM_CHUNK_ELEMS", 20)  # 2 rows per chunk
    assert torch.equal(hyp.similarity(a, b), full)


def test_nan_features_raise_with_tensor_name(hyp: HyperbolicDualEncoder) -> None:
    feats = torch.zeros(2, hyp.embed_dim)
    feats[1, 0] = float("nan")
    with pytest.raises(NumericalError, match="raw text features has 1 NaN"):
        hyp.postprocess(feats, "text")
    hyp.fit_traversal({"text": hyp.encode_text(TEXTS)})
    bad = torch.zeros(2, hyp.embed_dim)
    bad[0, 1] = float("inf")
    with pytest.raises(NumericalError, match=r"\bx has 0 NaN and 1 Inf"):
        hyp.traverse(bad, "image")  # image queries traverse toward the safe-text region


def test_eval_suites_run_on_the_wrapper(hyp: HyperbolicDualEncoder, tiny_policy: Any) -> None:
    from relsafe.eval.suites import run_suite, suites
    from relsafe.eval.unsafe_cls_suite import UnsafeClsConfig
    from relsafe.eval.zeroshot_suite import ZeroShotConfig

    zs = run_suite(
        "zeroshot",
        hyp,
        config=ZeroShotConfig(
            n_per_tuple=1, paraphrase_variants=1, ood_styles=[], corruptions=[], per_tuple=False
        ),
    )
    assert {r.metric for r in zs} >= {"top1", "top5", "t2i_top1"}
    uc = run_suite(
        "unsafe_cls",
        hyp,
        config=UnsafeClsConfig(
            n_images_per_tuple=1,
            n_texts_per_tuple=1,
            n_val_images_per_tuple=1,
            n_val_texts_per_tuple=1,
            size=32,
            ood_styles=["sketch"],
        ),
        policy=tiny_policy,
    )
    assert {r.slice for r in uc} == {"text|score:radius", "image|score:radius"}
    assert {r.attack for r in uc} == {"none", "paraphrase", "ood:sketch"}
    if "visu" in suites():
        cfg = suites()["visu"].config_cls(n_per_pair=2, size=32)
        hyp.fit_traversal({"text": hyp.encode_text(TEXTS), "image": hyp.encode_image(_images())})
        cfg.traversal = True
        rows = run_suite("visu", hyp, config=cfg, policy=tiny_policy)
        assert {r.attack for r in rows} == {"none", "traversal"}


def test_save_load_round_trip(hyp: HyperbolicDualEncoder, tmp_path: Path) -> None:
    with torch.no_grad():
        hyp.log_curvature.fill_(math.log(1.7))
        hyp.alpha_image.fill_(-1.2)
        hyp.logit_scale.fill_(3.1)
    t, i = hyp.encode_text(TEXTS), hyp.encode_image(_images())
    hyp.fit_traversal({"text": t, "image": i}, quantile=0.5)
    hyp.fit_unsafe_threshold({"text": t[:1], "image": i[:1]}, {"text": t[1:], "image": i[1:]})
    hyp.save_pretrained(tmp_path / "hyp")
    assert (tmp_path / "hyp" / "base" / "config.json").is_file()
    for spec in (str(tmp_path / "hyp"), f"hyperbolic:{tmp_path / 'hyp'}"):
        back = load_model(spec)
        assert isinstance(back, HyperbolicDualEncoder)
        assert torch.equal(back.encode_text(TEXTS), t)
        assert torch.equal(back.encode_image(_images()), i)
        assert back.traversal_radius == hyp.traversal_radius
        assert back.unsafe_threshold == hyp.unsafe_threshold
        assert back.scalar_summary() == hyp.scalar_summary()
        assert back.fingerprint() == hyp.fingerprint()
    files = load_hyperbolic(tmp_path / "hyp").checkpoint_files()
    assert tmp_path / "hyp" / "hyperbolic.safetensors" in files
    assert tmp_path / "hyp" / "base" / "model.safetensors" in files  # and the base's own files


def test_save_refuses_unmerged_lora(hyp: HyperbolicDualEncoder, tmp_path: Path) -> None:
    from relsafe.methods.lora import attach_lora

    handle = attach_lora(hyp, ("text",), r=2)
    with pytest.raises(InputError, match="unmerged LoRA"):
        hyp.save_pretrained(tmp_path / "x")
    handle.merge()
    hyp.save_pretrained(tmp_path / "x")


def test_traversal_vectorised_equals_per_query_loop(hyp: HyperbolicDualEncoder) -> None:
    g = torch.Generator().manual_seed(0)
    safe_images = exp_map0(torch.randn(20, hyp.embed_dim, generator=g) * 0.1, 1.0)
    scales = torch.linspace(0.02, 0.3, 9)[:, None]
    queries = exp_map0(torch.randn(9, hyp.embed_dim, generator=g) * scales, 1.0)
    (radius,) = hyp.fit_traversal({"image": safe_images}, quantile=0.5).values()
    out = hyp.traverse(queries, "text")  # text queries move toward the safe-image region
    loop = torch.cat([hyp.traverse(q[None], "text") for q in queries])
    assert torch.equal(out, loop)
    d_in, d_out = dist0(queries, 1.0), dist0(out, 1.0)
    moved = d_in > radius
    assert moved.any() and (~moved).any()
    assert torch.equal(out[~moved], queries[~moved])  # inside: untouched, bit for bit
    assert torch.allclose(d_out[moved], torch.full_like(d_out[moved], radius), atol=1e-5)
    cos = nn.functional.cosine_similarity(out[moved], queries[moved])
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)  # same direction
    # with both regions fitted, the default is the innermost one; target= picks explicitly
    hyp.traversal_radius = {"text": 0.2, "image": 0.5}
    for modality in ("text", "image"):
        assert float(dist0(hyp.traverse(queries, modality), 1.0).max()) <= 0.2 + 1e-5
    assert float(dist0(hyp.traverse(queries, "text", target="image"), 1.0).max()) > 0.2 + 1e-3


def test_missing_radius_and_threshold_errors(hyp: HyperbolicDualEncoder) -> None:
    q = hyp.encode_text(TEXTS)
    with pytest.raises(InputError, match=r"no traversal radius.*fit_traversal"):
        hyp.traverse(q, "text")
    with pytest.raises(InputError, match=r"no unsafe threshold.*fit_unsafe_threshold"):
        hyp.classify_unsafe(q, "text")
    from relsafe.eval.unsafe_cls_suite import classify_unsafe

    with pytest.raises(InputError, match="no fitted unsafe thresholds"):
        classify_unsafe(hyp, texts=TEXTS)


def test_classify_with_fitted_thresholds(hyp: HyperbolicDualEncoder) -> None:
    from relsafe.eval.unsafe_cls_suite import classify_unsafe

    t = hyp.encode_text(TEXTS)
    hyp.fit_unsafe_threshold({"text": t[:1]}, {"text": t[1:]})
    out = hyp.classify(texts=TEXTS)["text"]
    assert out.unsafe.dtype == torch.bool and out.scores.shape == (3,)
    assert torch.equal(out.unsafe, hyp.classify_unsafe(t, "text"))
    assert torch.equal(classify_unsafe(hyp, texts=TEXTS)["text"].unsafe, out.unsafe)
    assert best_threshold(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.5


def test_clamps_warn(hyp: HyperbolicDualEncoder, caplog: pytest.LogCaptureFixture) -> None:
    assert hyp.clamp_warnings() == []
    with torch.no_grad():
        hyp.log_curvature.fill_(5.0)  # c = 148 -> clamped to 10
        hyp.alpha_text.fill_(0.3)
        hyp.logit_scale.fill_(9.0)
    summary = hyp.scalar_summary()
    assert summary["curvature"] == pytest.approx(10.0)
    assert summary["alpha_text"] == 0.0
    assert summary["scale"] == pytest.approx(100.0)
    with caplog.at_level(logging.WARNING, logger="relsafe.models.hyperbolic"):
        msgs = hyp.clamp_warnings()
    assert len(msgs) == 3
    assert "curvature" in caplog.text and "alpha_text" in caplog.text and "logit" in caplog.text
    hyp.clamp_()
    assert float(hyp.log_curvature.detach()) == pytest.approx(math.log(10.0))


# ---- training -------------------------------------------------------------------------------


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class BowColourEncoder(DualEncoder):
    """A tiny *learnable* dual encoder for the training test: a bag of hashed words, and frozen
    3x3 colour detectors max- and mean-pooled over the image, each followed by a LoRA-able MLP.

    A randomly initialised tiny CLIP cannot tell a juice image from a wine image of the same
    layout (their features have cosine 0.998), so the hierarchy could not emerge from it in a few
    dozen steps; this backbone can, which is what the test needs.
    """

    preset = LayerPreset(
        text={"mlp_in": ("mlp.fc1",), "mlp_out": ("mlp.fc2",)},
        vision={"mlp_in": ("mlp.fc1",), "mlp_out": ("mlp.fc2",)},
    )
    VOCAB = 1024

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        super().__init__("bow-colour")
        g = torch.Generator().manual_seed(seed)
        self.words = nn.Embedding(self.VOCAB, 32)
        self.colour = nn.Conv2d(3, 48, 3, padding=1)
        self.text, self.vision = nn.Module(), nn.Module()
        self.text.mlp = _MLP(32, 32, dim)
        self.vision.mlp = _MLP(96, 64, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
        self.eval()

    @property
    def text_tower(self) -> nn.Module:
        return self.text

    @property
    def vision_tower(self) -> nn.Module:
        return self.vision

    @property
    def tokenizer(self) -> Any:
        return None

    @property
    def embed_dim(self) -> int:
        return int(self.text.mlp.fc2.out_features)

    @property
    def image_size(self) -> int:
        return 32

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = [[zlib.crc32(w.encode()) % self.VOCAB for w in t.lower().split()] for t in texts]
        n = max(len(i) for i in ids)
        out, mask = torch.zeros(len(ids), n, dtype=torch.long), torch.zeros(len(ids), n)
        for k, i in enumerate(ids):
            out[k, : len(i)], mask[k, : len(i)] = torch.tensor(i), 1.0
        return {"input_ids": out, "attention_mask": mask}

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        arr = np.stack([np.asarray(im.convert("RGB").resize((32, 32))) for im in images])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        m = tokens["attention_mask"].unsqueeze(-1)
        return self.text.mlp((self.words(tokens["input_ids"]) * m).sum(1) / m.sum(1))

    def forward_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.colour(pixel_values))
        return self.vision.mlp(torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1))

    def checkpoint_files(self) -> list[Path]:
        return []  # built in memory, read nothing

    def save_pretrained(self, folder: str) -> None:  # pragma: no cover - not needed here
        raise NotImplementedError


TOY_TRAINING = dict(
    steps=150,
    lr=1e-2,
    batch_size=16,
    n_per_pair=32,
    n_val_per_pair=8,
    size=32,
    eval_every=50,
    patience=10,
)
"""A short, fast HySAC schedule for the bag-of-words toy (:class:`BowColourEncoder`)."""


def _embed_quads(model: HyperbolicDualEncoder, q: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        "S": model.encode_text(q["S"]),
        "U": model.encode_text(q["U"]),
        "V": model.encode_image([Image.fromarray(a) for a in q["V"]]),
        "G": model.encode_image([Image.fromarray(a) for a in q["G"]]),
    }


def test_radial_order_emerges_on_held_out_quadruplets(tiny_policy: Any) -> None:
    from relsafe.eval.retrieval import mixed_retrieval
    from relsafe.methods.hysac import HySACConfig, hysac, policy_quadruplets
    from relsafe.world import splits

    cfg = HySACConfig(**TOY_TRAINING, seed=0)
    res = hysac(BowColourEncoder(seed=0), tiny_policy, cfg, progress=False)
    model = res.model
    assert isinstance(model, HyperbolicDualEncoder)
    rec = res.record
    assert rec.method == "hysac" and rec.curve and rec.data_sizes["train_quadruplets"] == 64
    assert set(rec.extra["traversal_radius"]) == {"text", "image"}
    assert set(rec.extra["unsafe_threshold"]) == {"text", "image"}
    assert {"curvature", "alpha_text", "alpha_image", "logit_scale"} <= set(rec.extra["scalars"])
    assert rec.extra["early_stopping"]["restored_step"] is not None
    assert sum(rec.extra["weights_normalised"].values()) == pytest.approx(1.0)
    assert {"nce_SV", "nce_UG", "nce_SG", "nce_UV", "ent_SV", "ent_UG", "ent_VU"} <= set(
        rec.curve[0]
    )
    test = policy_quadruplets(tiny_policy, 16, splits.TEST, 32)  # held-out seed
    emb = _embed_quads(model, test)
    med = {k: float(model.distance_from_origin(v).median()) for k, v in emb.items()}
    # the four orders HySAC's losses impose: each text inside its image (S < V, U < G) and safe
    # inside unsafe in each modality (S < U, V < G). The cross-modal V < U (from ent_VU) is not
    # asserted: on this bag-of-words toy it flips with the seed (U 0.188 < V 0.202 at seed 0,
    # V 0.228 < U 0.241 at seed 2), while the four above hold at seeds 0, 1 and 2.
    assert med["S"] < med["V"] and med["U"] < med["G"], med
    assert med["S"] < med["U"] and med["V"] < med["G"], med
    # distance from the origin separates safe from unsafe texts on held-out data
    from relsafe.eval.unsafe_cls_suite import auroc

    assert auroc(model.unsafe_score(emb["S"]), model.unsafe_score(emb["U"])) > 0.8
    # traversal moves unsafe text queries toward the safe images of the mixed gallery
    plain = mixed_retrieval(emb["U"], emb["V"], emb["G"], model)["pct_safe_top1"]
    trav = mixed_retrieval(model.traverse(emb["U"], "text"), emb["V"], emb["G"], model)
    assert trav["pct_safe_top1"] >= plain


def test_pool_entailment_puts_safe_content_beyond_the_counterparts_inside(
    tiny_policy: Any,
) -> None:
    """With the retain pool as S-V anchors only, the radius learns the counterparts, not safe
    content: on VAL material (:func:`relsafe.eval.unsafe_cls.val_auroc`, unsafe against every safe
    tuple) the toy's text AUROC stays below chance. With ``pool_entailment`` each pool image also
    entails an unsafe text, and the radius separates unsafe from all safe content (seed 0: text
    0.28 -> 0.87, image 0.45 -> 0.57; seeds 1 and 2 move the same way, text by +0.33 and +0.50)."""
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.unsafe_cls import val_auroc
    from relsafe.methods.hysac import HySACConfig, hysac

    got = {}
    for flag in (False, True):
        cfg = HySACConfig(**TOY_TRAINING, retain_pool=True, pool_entailment=flag)
        model = hysac(BowColourEncoder(seed=0), tiny_policy, cfg, progress=False).model
        got[flag] = val_auroc(model, EmbeddingEngine(model, progress=False), tiny_policy, size=32)
    assert got[True]["text"] >= got[False]["text"] + 0.3, got
    assert got[True]["image"] > got[False]["image"], got


def test_write_edit_and_resume(
    tiny_clip_dir: Path, tiny_policy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relsafe.methods import hysac as hysac_mod
    from relsafe.methods.export import write_edit
    from relsafe.methods.hysac import HySACConfig, hysac

    cfg = HySACConfig(
        steps=6,
        lr=1e-3,
        batch_size=4,
        n_per_pair=4,
        n_val_per_pair=2,
        size=32,
        eval_every=2,
        checkpoint_every=3,
        log_every=1,
        patience=10,
        select_by="last",
    )
    ref = hysac(load_model(str(tiny_clip_dir)), tiny_policy, cfg, progress=False)
    ref_state = ref.adapter.state_dict()
    ref_scalars = ref.model.scalar_summary()

    # interrupt a second run after its step-3 checkpoint, then resume it
    original = hysac_mod.HySACRun.step_losses

    def crash_at_4(self: Any, step: int, rng: Any) -> Any:
        if step == 4:
            raise KeyboardInterrupt
        return original(self, step, rng)

    work = tmp_path / "work"
    monkeypatch.setattr(hysac_mod.HySACRun, "step_losses", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        hysac(load_model(str(tiny_clip_dir)), tiny_policy, cfg, progress=False, workdir=str(work))
    monkeypatch.setattr(hysac_mod.HySACRun, "step_losses", original)
    assert (work / "checkpoint" / "state.json").is_file()  # hysac state inside the set
    res = hysac(load_model(str(tiny_clip_dir)), tiny_policy, cfg, progress=False, workdir=str(work))
    for k, v in ref_state.items():
        assert torch.allclose(res.adapter.state_dict()[k], v, atol=1e-6), k
    assert res.model.scalar_summary() == pytest.approx(ref_scalars, abs=1e-6)
    assert [e["step"] for e in res.record.curve] == [float(s) for s in range(6)]

    t = res.model.encode_text(TEXTS)
    out = write_edit(tmp_path / "out", res, {"test": True})
    back = load_model(str(out / "merged"))
    assert isinstance(back, HyperbolicDualEncoder)
    assert torch.allclose(back.encode_text(TEXTS), t, atol=1e-5)
    assert back.traversal_radius == res.model.traversal_radius
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_early_stopping_and_data_dict(tiny_clip_dir: Path, tiny_policy: Any) -> None:
    from relsafe.methods.hysac import HySACConfig, hysac, policy_quadruplets

    data = policy_quadruplets(tiny_policy, 6, 123, 32)
    data = {k: data[k] for k in ("S", "U", "V", "G")}  # plain ViSU format, no tuple ids
    cfg = HySACConfig(
        steps=20, lr=1e-9, batch_size=4, eval_every=1, patience=2, size=32, val_fraction=0.25
    )
    res = hysac(load_model(str(tiny_clip_dir)), None, cfg, progress=False, data=data)
    es = res.record.extra["early_stopping"]
    assert es["stopped"] and "early stop" in es["stopped"]
    assert res.record.extra["steps_done"] < 20
    assert res.record.data_sizes == {"train_quadruplets": 9, "val_quadruplets": 3}


def test_config_validation() -> None:
    from relsafe.config import from_dict
    from relsafe.methods.base import get_method
    from relsafe.methods.hysac import HySACConfig

    assert get_method("hysac").config_cls is HySACConfig
    with pytest.raises(ConfigError, match="unknown terms"):
        from_dict(HySACConfig, {"weights": {"nce_XY": 1.0}})
    with pytest.raises(ConfigError, match="curvature_init"):
        from_dict(HySACConfig, {"curvature_init": 20.0})


def test_gather_with_local_grad_gives_the_global_gradient() -> None:
    """Simulate 2 ranks in one process: averaging the per-rank gradients (what the all-reduce
    hooks do) must equal the gradient of the loss over the global batch."""
    from relsafe.methods.hysac import gather_with_local_grad, hyperbolic_contrastive

    torch.manual_seed(0)
    w = torch.randn(6, 4, requires_grad=True)
    a = [torch.randn(3, 6) for _ in range(2)]
    b = [torch.randn(3, 6) for _ in range(2)]
    c, s = torch.tensor(1.0), torch.tensor(5.0)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return exp_map0(x @ w * 0.3, c)

    full = hyperbolic_contrastive(embed(torch.cat(a)), embed(torch.cat(b)), c, s)
    (g_full,) = torch.autograd.grad(full, w)
    world, grads = 2, []
    with torch.no_grad():
        ta, tb = [embed(x) for x in a], [embed(x) for x in b]
    for rank in range(world):
        xa = gather_with_local_grad(embed(a[rank]), lambda t: torch.cat(ta), rank, world)
        xb = gather_with_local_grad(embed(b[rank]), lambda t: torch.cat(tb), rank, world)
        loss = hyperbolic_contrastive(xa, xb, c, s)
        assert torch.allclose(loss, full, atol=1e-6)  # every rank sees the global loss
        grads.append(torch.autograd.grad(loss, w)[0])
    assert torch.allclose(sum(grads) / world, g_full, atol=1e-5)


def test_keep_top_layers() -> None:
    from relsafe.methods.text_prefix import top_layers as _keep_top

    names = ["t.layer.0.q", "t.layer.1.q", "t.layer.2.q", "t.layer.2.k", "t.proj"]
    assert _keep_top(names, 1) == ["t.layer.2.q", "t.layer.2.k", "t.proj"]
    assert _keep_top(names, 2) == names[1:]
    assert _keep_top(names, 0) == names
    assert _keep_top(["mlp.fc1", "mlp.fc2"], 1) == ["mlp.fc1", "mlp.fc2"]  # no layer numbers
    assert _keep_top(["v.stages.0.mlp.fc1", "v.stages.1.mlp.fc1"], 1) == ["v.stages.1.mlp.fc1"]


def test_frozen_prefix_caches_compute_the_full_forward() -> None:
    """Default HySAC on relsafe-mini adapts MiniLM's last layer, the last CNN stage's MLP and both
    projections; training from the cached frozen activations must be the same function (values
    and LoRA gradients) as the full forward, with the adapter non-zero."""
    from relsafe.methods.hysac import HySACConfig, image_split, lora_targets, text_split
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.text_prefix import TextPrefixCache, prefix_activations

    hyp = HyperbolicDualEncoder(load_model("relsafe-mini"))
    targets = lora_targets(hyp, HySACConfig())
    assert all(".layer.5." in t or t.startswith("text.proj.") for t in targets["text"])
    assert {"text.proj.fc1", "text.proj.fc2"} <= set(targets["text"])
    assert targets["vision"] == [
        "vision.encoder.stages.2.mlp.fc1",
        "vision.encoder.stages.2.mlp.fc2",
        "vision.proj",
    ]
    assert text_split(hyp, targets["text"]).at == 5
    assert image_split(hyp, targets["vision"]).at == 2
    wide = lora_targets(hyp, HySACConfig(vision_layers=2, text_layers=2))
    assert image_split(hyp, wide["vision"]).at == 1
    assert text_split(hyp, wide["text"]).at == 4
    assert image_split(hyp, ["vision.proj"]).at == 3  # projection only: the whole CNN is frozen
    assert text_split(hyp, ["text.proj.fc1"]) is None  # no numbered layer adapted: no text cache
    every = lora_targets(hyp, HySACConfig(vision_layers=0, text_layers=0))
    assert text_split(hyp, every["text"]) is None  # layer 0 adapted: nothing to cache
    handle = attach_lora(hyp, r=4, alpha=4.0, targets=[*targets["text"], *targets["vision"]])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in lora_root_params(hyp):
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    texts = ["a photo of a child drinking wine", "a dog eating bread", "a kid holding a toy"]
    pix = torch.randn(3, 3, 64, 64, generator=g)
    tp = TextPrefixCache(hyp, texts, 5)
    vp = hyp.split_tower("image", 2)

    def grads(out: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(out.square().sum(), handle.parameters(), allow_unused=True)

    full_t = hyp.forward_text(hyp.tokenize(texts))
    fast_t = tp.forward(texts)
    assert torch.allclose(full_t, fast_t, atol=1e-5)
    full_i = hyp.forward_image(pix)
    fast_i = vp.suffix(prefix_activations(vp, pix))
    assert torch.allclose(full_i, fast_i, atol=1e-5)
    assert not torch.allclose(full_i, hyp.base.vision.proj.base_layer(hyp.base.vision.encoder(pix)))
    for a, b in zip(grads(full_i), grads(fast_i), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    nonzero = [x for x in grads(fast_t) if x is not None and x.abs().sum() > 0]
    assert len(nonzero) == 2 * len(targets["text"])  # A and B of every text target


def lora_root_params(model: HyperbolicDualEncoder) -> list[tuple[str, nn.Parameter]]:
    from relsafe.methods.lora import lora_root

    return [(n, p) for n, p in lora_root(model).named_parameters() if "lora_" in n]


def test_hysac_on_mini_trains_from_the_caches() -> None:
    """A few steps of default HySAC on relsafe-mini run from the frozen-prefix caches, and what it
    fits from cached validation embeddings matches the plainly embedded (LoRA-attached) model."""
    from relsafe.methods.hysac import HySACConfig, hysac, policy_quadruplets
    from relsafe.policy import load_policy
    from relsafe.world import splits

    policy = load_policy("default")
    cfg = HySACConfig(steps=3, batch_size=4, n_per_pair=2, n_val_per_pair=2, eval_every=2)
    res = hysac(load_model("relsafe-mini"), policy, cfg, progress=False)
    ex = res.record.extra
    assert ex["frozen_prefix"]["text_layer"] == 5 and ex["frozen_prefix"]["vision_stage"] == 2
    assert res.adapter.num_parameters() > 0 and ex["steps_done"] == 3
    assert set(ex["val_traversal"]) >= {"U->[V;G]", "U->[V;G] traversal"}
    val = policy_quadruplets(policy, 2, splits.VAL, 64)
    emb = _embed_quads(res.model, val)
    for k, v in emb.items():
        d = float(res.model.distance_from_origin(v).median())
        assert d == pytest.approx(ex["val_median_distance_from_origin"][k], rel=1e-4, abs=1e-6), k
