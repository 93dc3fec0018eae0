"""UWM on a tiny random CLIP: the score is the paper's (checked against brute force), the selection
takes exactly what it should, the edit touches exactly the mask, and revert is bit-exact. On a
hand-built encoder with a planted unsafe unit: UWM finds exactly the weights that read it, negates
them, and turns the unsafe SafeGround preferences on held-out data, where negating as many random
or largest-|W| weights does not."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from relsafe.errors import ConfigError, InputError
from relsafe.methods.base import get_method
from relsafe.methods.export import write_edit
from relsafe.methods.uwm import (
    STD_EPS,
    CalibrationData,
    UWMConfig,
    UWMMask,
    apply_selection,
    compute_scores,
    factorised_score,
    mask_state,
    revert,
    revert_edit,
    select_weights,
    target_layers,
    token_stats,
    top_mass_indices,
    uwm,
)
from relsafe.models.base import DualEncoder, LayerPreset
from relsafe.models.registry import load_model
from relsafe.policy import load_policy


@pytest.fixture(scope="module")
def calib() -> dict:
    """Six RelWorld quadruplets (tiny policy, 3 per pair, 32 px, edit captions) as calibration data."""
    from relsafe.data.visu import VisuData
    from relsafe.world import splits

    d = VisuData.from_relworld(load_policy("tiny"), 3, splits.EDIT, size=32, caption_split="edit")
    return d.as_dict()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _small(**kw) -> UWMConfig:
    return UWMConfig(**{"batch_size": 4, **kw})


# ---- config validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"tau": 0.0},
        {"tau": 1.0},
        {"tau": -0.1},
        {"fraction": 0.0},
        {"fraction": 1.0},
        {"fraction": 2.0},
        {"alpha": float("nan")},
        {"alpha": float("inf")},
        {"towers": []},
        {"towers": ["audio"]},
        {"towers": ["text", "text"]},
        {"batch_size": 0},
        {"selection": "random"},
        {"text_layers": "encoder.*"},
    ],
)
def test_config_rejects_bad_values(kw: dict, tiny_clip) -> None:
    cfg = UWMConfig(**kw)
    with pytest.raises(ConfigError):
        cfg.validate()
    with pytest.raises(InputError):
        uwm(tiny_clip, None, cfg, progress=False, data={"S": ["a"], "U": ["b"]})


def test_config_loads_from_yaml_keys() -> None:
    from relsafe.config import from_dict

    cfg = from_dict(UWMConfig, {"towers": ["vision"], "tau": 0.085, "scope": "global"})
    assert cfg.towers == ["vision"] and cfg.tau == 0.085 and cfg.scope == "global"
    with pytest.raises(ConfigError):
        from_dict(UWMConfig, {"tau": 1.5})


def test_registered() -> None:
    m = get_method("uwm")
    assert m.config_cls is UWMConfig and m.fn is uwm


# ---- statistics and the score -------------------------------------------------------------


def test_token_stats_use_real_tokens_only() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=g)
    lengths = [7, 4, 1]
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    a, sig = token_stats(x, mask)
    assert a.shape == sig.shape == (3, 5)
    for b, n in enumerate(lengths):
        xb = x[b, :n]
        torch.testing.assert_close(a[b], xb.norm(dim=0))
        want = xb.std(dim=0) if n > 1 else torch.zeros(5)
        torch.testing.assert_close(sig[b], want + STD_EPS)
    # without a mask every token counts
    a2, sig2 = token_stats(x)
    torch.testing.assert_close(a2, x.norm(dim=1))
    torch.testing.assert_close(sig2, x.std(dim=1) + STD_EPS)
    with pytest.raises(InputError, match="mask"):
        token_stats(x, mask[:, :5])


def _brute_force_score(a_s, sig_s, a_u, sig_u, w) -> torch.Tensor:
    """METHODS.md section 3 literally: M_b, out_b, in_b, Phi_b per sample, mean of the ratios."""
    w_abs = w.abs().double()
    acc = torch.zeros_like(w_abs)
    for b in range(a_s.shape[0]):
        phis = []
        for a, sig in ((a_s[b], sig_s[b]), (a_u[b], sig_u[b])):
            m = a.double()[None, :] * w_abs  # (d_out, d_in)
            out_b, in_b = m.mean(dim=1), m.mean(dim=0)
            phis.append(out_b[:, None] * in_b[None, :] / sig.double()[None, :])
        acc += phis[1] / phis[0]
    return acc / a_s.shape[0]


def test_factorised_score_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    b, d_in, d_out = 5, 7, 4
    a_s, a_u = torch.rand(b, d_in, generator=g) + 0.1, torch.rand(b, d_in, generator=g) + 0.1
    sig_s, sig_u = torch.rand(b, d_in, generator=g) + 0.1, torch.rand(b, d_in, generator=g) + 0.1
    w = torch.randn(d_out, d_in, generator=g)
    got = factorised_score(a_s, sig_s, a_u, sig_u, w.abs())
    assert got.shape == (d_out, d_in)
    torch.testing.assert_close(
        got.double(), _brute_force_score(a_s, sig_s, a_u, sig_u, w), rtol=1e-5, atol=0
    )


def test_hooked_scores_equal_brute_force_on_layer_inputs(tiny_clip, calib) -> None:
    """End to end: the hooks' scores equal the brute-force formula on the captured layer inputs."""
    model = tiny_clip
    n = 4
    data = CalibrationData(calib["S"][:n], calib["U"][:n], calib["V"][:n], calib["G"][:n])
    cfg = UWMConfig(batch_size=n)  # one batch: the same forward the capture below repeats
    cal = compute_scores(model, data, cfg)
    for tower in ("text", "vision"):
        name, layer = next(iter(target_layers(model, tower).items()))
        seen: list[torch.Tensor] = []
        h = layer.register_forward_pre_hook(
            lambda m, args, seen=seen: seen.append(args[0].detach().clone())
        )
        try:
            with torch.no_grad():
                if tower == "text":
                    tokens = model.tokenize(data.S + data.U)
                    model.forward_text(tokens)
                    lengths = tokens["attention_mask"].sum(1).tolist()
                else:
                    model.forward_image(model.preprocess(data.V + data.G))
                    lengths = [seen[0].shape[1]] * (2 * n)
        finally:
            h.remove()
        x = seen[0]
        stats = [
            (x[b, : lengths[b]].norm(dim=0), x[b, : lengths[b]].std(dim=0) + STD_EPS)
            for b in range(2 * n)
        ]
        a = torch.stack([s[0] for s in stats])
        sig = torch.stack([s[1] for s in stats])
        want = _brute_force_score(a[:n], sig[:n], a[n:], sig[n:], layer.weight.detach())
        if tower == "text":  # the |W| prior, text only by default
            want = want * layer.weight.detach().abs().double()
        got = cal.scores[f"{tower}:{name}"]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=1e-7)


def test_statistics_memory_is_per_sample_vectors(tiny_clip, calib) -> None:
    """Only (B, width) factor matrices per batch; the one (d_out, d_in) tensor is the score."""
    b = 3
    data = CalibrationData(calib["S"], calib["U"], calib["V"], calib["G"])
    cal = compute_scores(tiny_clip, data, UWMConfig(batch_size=b))
    assert cal.factor_shapes
    held, factors, per_sample = 0, 0, 0
    for key, (r_shape, c_shape, a_shape) in cal.factor_shapes.items():
        tower, _, name = key.partition(":")
        d_out, d_in = target_layers(tiny_clip, tower)[name].weight.shape
        assert r_shape == (b, d_out) and c_shape == (b, d_in) and a_shape == (2 * b, d_in)
        assert cal.scores[key].shape == (d_out, d_in)
        held_t = 2 * (2 * b) * d_in * 4  # (a, sig) of this layer for one batch
        held += held_t
        factors = max(factors, b * (d_out + d_in) * 4)
        per_sample += b * d_out * d_in * 4
    # peak = every layer's (a, sig) of one tower's batch + one layer's (R, C); never per-sample
    # (B, d_out, d_in) tensors
    assert 0 < cal.stats_peak_bytes <= held + factors
    assert cal.stats_peak_bytes < per_sample


# ---- selection -------------------------------------------------------------------------------


def test_mass_selection_takes_shortest_prefix() -> None:
    s = torch.tensor([0.125, 0.5, 0.125, 0.25])  # exact in binary: no rounding at the edges
    assert top_mass_indices(s, 0.5).tolist() == [1]  # reaching tau exactly is enough
    assert top_mass_indices(s, 0.6).tolist() == [1, 3]
    assert top_mass_indices(s, 0.75).tolist() == [1, 3]
    assert len(top_mass_indices(s, 0.76)) == 3
    assert top_mass_indices(s * 8, 0.5).tolist() == [1]  # a share of the mass, not of the scale
    g = torch.Generator().manual_seed(3)
    for n, tau in ((50, 0.3), (5000, 0.02), (20000, 0.9)):  # short and long (full sort) paths
        x = torch.rand(n, generator=g) ** 4
        idx = top_mass_indices(x, tau)
        p = (x / x.sum()).double()
        order = torch.sort(p, descending=True, stable=True).values
        k = int((order.cumsum(0) < tau).sum()) + 1
        assert len(idx) == k
        assert float(p[idx].sum()) >= tau - 1e-9
        assert float(p[idx[:-1]].sum()) < tau
        assert float(x[idx].min()) >= float(torch.topk(x, k).values.min())
    with pytest.raises(InputError, match="zero"):
        top_mass_indices(torch.zeros(10), 0.1)
    with pytest.raises(InputError, match="NaN"):
        top_mass_indices(torch.tensor([1.0, float("nan")]), 0.1)


def test_topk_and_global_scope_counts() -> None:
    g = torch.Generator().manual_seed(4)
    scores = {
        "text:a": torch.rand(8, 10, generator=g),
        "text:b": torch.rand(4, 5, generator=g) + 10,
        "vision:c": torch.rand(6, 6, generator=g),
    }
    sel = select_weights(scores, UWMConfig(selection="topk", fraction=0.25))
    assert [len(sel[k]) for k in scores] == [20, 5, 9]
    sel = select_weights(scores, UWMConfig(selection="topk", fraction=0.25, scope="global"))
    assert len(sel["text:a"]) + len(sel["text:b"]) == 25  # pooled over the text tower
    assert len(sel["vision:c"]) == 9  # towers are never pooled together
    assert len(sel["text:b"]) == 20  # the larger scores win the pooled ranking
    sel = select_weights(scores, UWMConfig(tau=0.3, scope="global"))
    pooled = torch.cat([scores["text:a"].flatten(), scores["text:b"].flatten()])
    assert len(sel["text:a"]) + len(sel["text:b"]) == len(top_mass_indices(pooled, 0.3))
    for idx in sel.values():
        assert torch.equal(idx, torch.sort(idx).values) and idx.dtype == torch.int64


# ---- the edit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"selection": "topk", "fraction": 0.05},
        {"selection": "topk", "fraction": 0.05, "scope": "global"},
        {"alpha": 0.0, "towers": ["vision"]},
    ],
)
def test_edit_touches_exactly_the_mask(tiny_clip_dir: Path, calib, kw: dict) -> None:
    model = load_model(str(tiny_clip_dir))
    before = _state(model)
    cfg = _small(**kw)
    res = uwm(model, None, cfg, progress=False, data=calib)
    mask: UWMMask = res.artifacts["mask"]
    assert res.adapter is None and callable(res.artifacts["save"])
    assert res.record.params_touched == mask.n_selected > 0
    assert res.record.extra["calibration_size"] == {t: 6 for t in cfg.towers}
    assert sum(v["selected"] for v in res.record.extra["layers"].values()) == mask.n_selected
    after = model.state_dict()
    weight_keys = {}
    for lm in mask.layers.values():
        prefix = "text_model." if lm.tower == "text" else "vision_model."
        assert lm.name.startswith(prefix)
        key = f"model.{lm.name}.weight"  # HFCLIPModel keeps the CLIPModel under .model
        assert key in after
        weight_keys[key] = lm
    assert {lm.tower for lm in mask.layers.values()} == set(cfg.towers)
    for key, t in after.items():
        if key not in weight_keys:
            assert torch.equal(t, before[key]), key  # biases and every other tensor untouched
            continue
        lm = weight_keys[key]
        flat_b, flat_a = before[key].reshape(-1), t.reshape(-1)
        sel = torch.zeros_like(flat_b, dtype=torch.bool)
        sel[lm.indices] = True
        assert int(sel.sum()) == lm.n_selected
        assert torch.equal(flat_a[~sel], flat_b[~sel])
        assert torch.equal(flat_a[sel], flat_b[sel] * cfg.alpha)
        if cfg.alpha == -1.0:
            nz = flat_b[sel] != 0
            assert torch.all(torch.sign(flat_a[sel][nz]) == -torch.sign(flat_b[sel][nz]))
        if cfg.selection == "topk" and cfg.scope == "per_layer":
            assert lm.n_selected == round(cfg.fraction * lm.numel)
        if cfg.selection == "mass":
            assert lm.score_share is not None and lm.score_share >= cfg.tau - 1e-6
    if cfg.selection == "topk" and cfg.scope == "global":
        for tower in cfg.towers:
            lms = [lm for lm in mask.layers.values() if lm.tower == tower]
            assert sum(lm.n_selected for lm in lms) == round(
                cfg.fraction * sum(lm.numel for lm in lms)
            )
    assert all(p.grad is None for p in model.parameters())


def test_deterministic(tiny_clip_dir: Path, calib) -> None:
    masks = []
    for _ in range(2):
        model = load_model(str(tiny_clip_dir))
        masks.append(uwm(model, None, _small(), progress=False, data=calib).artifacts["mask"])
    for k, lm in masks[0].layers.items():
        assert torch.equal(lm.indices, masks[1].layers[k].indices)
        assert lm.sha256_edited == masks[1].layers[k].sha256_edited


@pytest.mark.parametrize("alpha", [-1.0, 0.0])
def test_revert_is_bit_exact_through_disk(
    tiny_clip_dir: Path, calib, tmp_path: Path, alpha: float
) -> None:
    model = load_model(str(tiny_clip_dir))
    original = _state(model)
    res = uwm(model, None, _small(alpha=alpha), progress=False, data=calib)
    folder = res.artifacts["save"](tmp_path / "mask")
    loaded = UWMMask.load(folder)
    assert loaded.n_selected == res.artifacts["mask"].n_selected
    for lm in loaded.layers.values():
        assert (lm.original_values is None) == (alpha == -1.0)
    assert set(mask_state(model, loaded).values()) == {"edited"}
    counts = revert(model, folder)
    assert sum(counts.values()) == loaded.n_selected
    for k, t in model.state_dict().items():
        assert torch.equal(t, original[k]), k
    # a second revert is refused (the weights are original now) and changes nothing
    with pytest.raises(InputError, match="original weights"):
        revert(model, loaded)
    for k, t in model.state_dict().items():
        assert torch.equal(t, original[k]), k


def test_revert_refuses_a_different_model(tiny_clip_dir: Path, calib, tmp_path: Path) -> None:
    from relsafe.testing import make_tiny_clip

    model = load_model(str(tiny_clip_dir))
    mask = uwm(model, None, _small(), progress=False, data=calib).artifacts["mask"]
    other = load_model(str(make_tiny_clip(tmp_path / "other", seed=1)))
    before = _state(other)
    with pytest.raises(InputError, match="neither the edited nor the original"):
        revert(other, mask)
    for k, t in other.state_dict().items():
        assert torch.equal(t, before[k])


def test_mask_encodings_round_trip(tmp_path: Path) -> None:
    """Sparse selections store int64 indices, dense ones packed bits; both load back exactly."""
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text = nn.Sequential(nn.Linear(40, 40))
            self.vision = nn.Sequential(nn.Linear(40, 40))

        text_tower = property(lambda self: self.text)
        vision_tower = property(lambda self: self.vision)

    m = Tiny()
    sel = {"text:0": torch.tensor([3, 17]), "vision:0": torch.arange(0, 1600, 2)}
    mask = apply_selection(m, sel, -1.0)
    mask.save(tmp_path)
    import json

    meta = json.loads((tmp_path / "uwm_mask.json").read_text())
    assert [layer["encoding"] for layer in meta["layers"]] == ["indices", "bits"]
    back = UWMMask.load(tmp_path)
    for k in sel:
        assert torch.equal(back.layers[k].indices, sel[k])
    revert(m, back)


def test_revert_edit_restores_a_saved_edit(tiny_clip_dir: Path, calib, tmp_path: Path) -> None:
    """The method's revert hook on a loaded model, and through ``relsafe.api.revert``."""
    from relsafe import api

    model = load_model(str(tiny_clip_dir))
    original = _state(model)
    res = uwm(model, None, _small(), progress=False, data=calib)
    edit_dir = write_edit(
        tmp_path / "edit", res, {"test": True}, save_artifacts=res.artifacts["save"]
    )
    assert (edit_dir / "artifacts" / "uwm_mask.json").is_file()
    assert get_method("uwm").revert is revert_edit
    # the library function: restores in place, names the mask files it read
    edited = load_model(str(edit_dir / "merged"))
    result, files = revert_edit(edited, edit_dir, str(edit_dir / "merged"))
    assert result.record.method == "uwm-revert" and result.record.config["action"] == "reverted"
    assert result.record.params_touched == res.record.params_touched
    assert [f.name for f in files] == ["uwm_mask.json", "uwm_mask.safetensors"]
    for k, t in edited.state_dict().items():
        assert torch.equal(t, original[k]), k
    # through the api: written with the edit layout, loadable
    out = api.revert(edit_dir, out=tmp_path / "rev")
    assert out.record.config["action"] == "reverted"
    restored = load_model(str(tmp_path / "rev" / "merged"))
    for k, t in restored.state_dict().items():
        assert torch.equal(t, original[k]), k
    # the original spec already holds the original weights: written unchanged
    out2 = api.revert(edit_dir, out=tmp_path / "rev2", model=str(tiny_clip_dir))
    assert out2.record.config["action"] == "unchanged" and out2.record.params_touched == 0
    # a foreign model is refused
    from relsafe.testing import make_tiny_clip

    other = str(make_tiny_clip(tmp_path / "other", seed=2))
    with pytest.raises(InputError, match="does not carry this UWM edit"):
        api.revert(edit_dir, out=tmp_path / "rev3", model=other)
    assert not (tmp_path / "rev3").exists()


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, towers, match",
    [
        ({"S": [], "U": []}, ["text"], "got none"),
        ({"S": ["a child drinking juice"], "U": []}, ["text"], "one-sided"),
        ({"S": ["a", "b"], "U": ["c"]}, ["text"], "paired"),
        ({"S": ["a"], "U": ["b"]}, ["vision"], "got none"),
        ({"S": ["a"], "U": ["b"], "V": [None], "G": [None]}, ["vision"], "dropped"),
    ],
)
def test_bad_calibration_data(tiny_clip, data: dict, towers: list, match: str) -> None:
    before = _state(tiny_clip)
    with pytest.raises(InputError, match=match):
        uwm(tiny_clip, None, _small(towers=towers), progress=False, data=data)
    for k, t in tiny_clip.state_dict().items():
        assert torch.equal(t, before[k])


def test_no_policy_and_no_data(tiny_clip) -> None:
    with pytest.raises(InputError, match="policy"):
        uwm(tiny_clip, None, _small(), progress=False)


def test_layer_globs_matching_nothing(tiny_clip) -> None:
    with pytest.raises(InputError, match="match no"):
        uwm(
            tiny_clip,
            None,
            _small(text_layers=["nope.*"]),
            progress=False,
            data={"S": ["a"], "U": ["b"]},
        )
    with pytest.raises(InputError, match="empty"):
        target_layers(tiny_clip, "text", [])


def test_policy_calibration_uses_edit_seed(tiny_clip_dir: Path) -> None:
    """From a policy: RelWorld pairs with the edit caption split (never the evaluation-reserved
    canonical template), training styles, EDIT seed."""
    from relsafe.methods.uwm import calibration_data
    from relsafe.world import splits
    from relsafe.world.captions import CANONICAL_TEMPLATE
    from relsafe.world.dataset import quadruplets
    from relsafe.world.styles import TRAIN_STYLES

    policy = load_policy("tiny")
    cfg = _small(n_per_pair=2, size=32)
    data = calibration_data(policy, cfg)
    quads = quadruplets(policy.pairs(), 2, TRAIN_STYLES, "edit", splits.EDIT, 32)
    assert data.S == [q.safe_text for q in quads] and data.U == [q.unsafe_text for q in quads]
    canonical = CANONICAL_TEMPLATE.split("{", 1)[0]  # "a photo of "
    assert not any(t.startswith(canonical) for t in data.S + data.U)
    assert np.array_equal(np.asarray(data.G[0]), np.asarray(quads[0].unsafe_image))
    model = load_model(str(tiny_clip_dir))
    res = uwm(model, policy, cfg, progress=False)
    assert res.record.data_sizes == {"text_pairs": 4, "vision_pairs": 4}


# ---- a planted unsafe feature ---------------------------------------------------------------
#
# A hand-built dual encoder whose targeted layers contain one hidden unit that fires only on
# unsafe inputs and writes the unsafe direction into the shared space, so the unsafe text and the
# unsafe image agree on it. UWM must find exactly the weights that read that unit, negate them,
# and thereby turn the unsafe preferences of SafeGround around on held-out quadruplets; negating
# as many random or largest-|W| weights must not.
#
# Sizes: with 10,240 weights per layer the 4 planted weights hold about 1-2% of the layer's score
# mass, so UWM's default tau = 2% takes all of them plus a handful. Both towers carry a planted
# unit but each test edits one tower: in this linear toy, negating the unsafe direction in *both*
# towers would restore s(U, G) (the two sign flips cancel in the dot product).

P_DIM, P_HID = 32, 320  # shared space, hidden units: each targeted fc2 is 32 x 320 = 10,240 weights
P_ALC, P_SAFE, P_CONTENT_A, P_CONTENT_B = 0, 1, 2, 3  # concept hidden units; 4.. is background
P_CONCEPT_UNITS = 4
P_U_ROWS = (2, 3, 4, 5)  # the unsafe direction of the shared space, written by the planted unit
P_CONCEPT_ROWS = 7  # dims 0..6 carry concepts (content 0 and 6, safe object 1, unsafe 2..5)
P_PLANTED_W = 0.8  # below the largest |W| of the layer: magnitude alone does not find it
P_SIGMA, P_LEAK = 0.5, 0.005  # background weights; tiny weights into the concept dims and units
P_IMG, P_PATCH = 16, 4  # 16 x 16 images, 4 x 4 patches as tokens
# caption splits (relsafe.world.captions): calibration is edit material, the held-out check uses
# the evaluation-reserved canonical template, never seen by the calibration
P_CAL_SPLIT, P_EVAL_SPLIT = "edit", "eval"
P_CONCEPT_WORDS = {
    "wine": P_ALC,
    "beer": P_ALC,
    "juice": P_SAFE,
    "child": P_CONTENT_A,
    "kid": P_CONTENT_A,
    "drinking": P_CONTENT_B,
    "sipping": P_CONTENT_B,
}
# words that differ inside a safe/unsafe caption pair ("red wine" / "orange juice", "a bottle of
# beer" / "a glass of juice", "a beer" / "orange juice") share one background row, so the pair
# differs only in its concept units
P_OBJECT_WORDS = ("juice", "wine", "beer", "red", "orange", "glass", "bottle", "a")


class _PlantedTower(nn.Module):
    """Per token, hidden ``x_t = gelu(tok_t + ctx)``, then the targeted ``fc2``, mean over real
    tokens. ``ctx`` (one concept vector per input, added at every token, as attention would spread
    it) makes the concept units steady across tokens; ``tok_t`` gives every unit token-to-token
    variation (GELU keeps every value non-zero, so no ratio hits the zero guard)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc2 = nn.Linear(P_HID, P_DIM, bias=False)

    def forward(self, tok: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.fc2(nn.functional.gelu(tok + ctx[:, None, :]))
        m = mask[..., None].to(y.dtype)
        return (y * m).sum(1) / m.sum(1)


def _planted_fc2(g: torch.Generator) -> torch.Tensor:
    w = torch.randn(P_DIM, P_HID, generator=g) * P_SIGMA
    w[:P_CONCEPT_ROWS] *= P_LEAK / P_SIGMA
    w[:, :P_CONCEPT_UNITS] *= P_LEAK / P_SIGMA
    w[list(P_U_ROWS), P_ALC] = P_PLANTED_W  # the planted weights: unsafe unit -> unsafe direction
    w[1, P_SAFE] = 1.5  # safe object unit -> safe direction
    w[0, P_CONTENT_A] = w[6, P_CONTENT_B] = 2.5  # shared content: the layer's largest |W|
    return w


def _planted_indices() -> torch.Tensor:
    """Flat indices of the planted weights in either tower's fc2 (column P_ALC, rows P_U_ROWS)."""
    return torch.tensor([r * P_HID + P_ALC for r in P_U_ROWS])


class PlantedEncoder(DualEncoder):
    """Text: words -> per-word background features plus the sentence's concept vector. Vision:
    4 x 4 luminance patches -> fixed random background features plus the image's marker-colour
    shares (magenta = unsafe, yellow = safe, blue = content). Yellow and magenta have the same
    luminance and the object words of a caption pair share their background, so a safe/unsafe
    pair differs only in its concept units. Every fixed part is a buffer; UWM targets only the
    two ``fc2`` layers (text role ``attn_out``, vision role ``mlp_out``, UWM's defaults)."""

    preset = LayerPreset(text={"attn_out": ("fc2",)}, vision={"mlp_out": ("fc2",)})
    VOCAB = 256

    def __init__(self, seed: int = 0) -> None:
        super().__init__("planted")
        g = torch.Generator().manual_seed(seed)
        self.text, self.vision = _PlantedTower(), _PlantedTower()
        tok = torch.randn(self.VOCAB, P_HID, generator=g)
        tok[:, :P_CONCEPT_UNITS] *= 0.1  # concept units: small zero-mean token noise only
        shared = tok[self._id(P_OBJECT_WORDS[0]), P_CONCEPT_UNITS:].clone()
        for w in P_OBJECT_WORDS:
            tok[self._id(w), P_CONCEPT_UNITS:] = shared
        ctx = torch.zeros(self.VOCAB, P_HID)
        for w, unit in P_CONCEPT_WORDS.items():
            ctx[self._id(w), unit] = 7.0  # about 1 after the mean over a 6-9 word caption
        proj = torch.randn(P_HID, P_PATCH * P_PATCH, generator=g) * 1.2
        proj[:P_CONCEPT_UNITS] *= 0.1
        colour = torch.zeros(P_HID, 3)  # pixel shares (magenta, yellow, blue) -> about 1
        colour[P_ALC, 0] = colour[P_SAFE, 1] = (P_IMG * P_IMG) / 16
        colour[P_CONTENT_A, 2] = colour[P_CONTENT_B, 2] = (P_IMG * P_IMG) / 24
        for name, t in (
            ("tok_emb", tok),
            ("ctx_emb", ctx),
            ("patch_proj", proj),
            ("colour", colour),
        ):
            self.register_buffer(name, t)
        with torch.no_grad():
            self.text.fc2.weight.copy_(_planted_fc2(g))
            self.vision.fc2.weight.copy_(_planted_fc2(g))
        self.eval()

    def _id(self, word: str) -> int:
        if word in P_CONCEPT_WORDS:
            return list(P_CONCEPT_WORDS).index(word)
        n = len(P_CONCEPT_WORDS)
        return n + zlib.crc32(word.encode()) % (self.VOCAB - n)

    text_tower = property(lambda self: self.text)
    vision_tower = property(lambda self: self.vision)
    tokenizer = property(lambda self: None)
    embed_dim = property(lambda self: P_DIM)
    image_size = property(lambda self: P_IMG)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = [[self._id(w) for w in t.lower().split()] for t in texts]
        n = max(len(i) for i in ids)
        out = torch.zeros(len(ids), n, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for k, i in enumerate(ids):
            out[k, : len(i)], mask[k, : len(i)] = torch.tensor(i), 1
        return {"input_ids": out, "attention_mask": mask}

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        arr = np.stack([np.asarray(im.convert("RGB")) for im in images]).astype(np.float32)
        return torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = tokens["input_ids"], tokens["attention_mask"].bool()
        m = mask[..., None].float()
        ctx = (self.ctx_emb[ids] * m).sum(1) / m.sum(1)
        return self.text(self.tok_emb[ids], ctx, mask)

    def forward_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        r, g, b = pixel_values.unbind(1)
        shares = torch.stack(
            [(c > 0).float().mean((1, 2)) for c in (r + b - 2 * g - 1.5, r + g - 2 * b - 1.5)]
            + [(2 * b - r - g - 1.5 > 0).float().mean((1, 2))],
            dim=1,
        )
        n, k = pixel_values.shape[0], P_IMG // P_PATCH
        lum = pixel_values.mean(1) - 0.45  # yellow and magenta: the same luminance
        patches = (
            lum.reshape(n, k, P_PATCH, k, P_PATCH).permute(0, 1, 3, 2, 4).reshape(n, k * k, -1)
        )
        mask = torch.ones(n, k * k, dtype=torch.bool)
        return self.vision(patches @ self.patch_proj.T, shares @ self.colour.T, mask)

    def checkpoint_files(self) -> list[Path]:
        return []  # built in memory, read nothing

    def save_pretrained(self, folder: str) -> None:  # pragma: no cover - not needed here
        raise NotImplementedError


def _planted_images(n: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``n`` minimal pairs (V, G): one grey background and blue figure, a yellow (safe) or a
    magenta (unsafe) 4 x 4 marker at the same place."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    V, G = [], []
    for _ in range(n):
        base = rng.uniform(0.25, 0.65, (P_IMG, P_IMG, 1)) + rng.uniform(
            -0.04, 0.04, (P_IMG, P_IMG, 3)
        )
        fy, fx = rng.integers(0, P_IMG - 6), rng.integers(0, P_IMG // 2 - 4)
        base[fy : fy + 6, fx : fx + 4] = (0.0, 0.0, 1.0)
        my, mx = rng.integers(0, P_IMG - 4), rng.integers(P_IMG // 2, P_IMG - 4)
        for out, colour in ((V, (1.0, 1.0, 0.0)), (G, (1.0, 0.0, 1.0))):
            a = base.copy()
            a[my : my + 4, mx : mx + 4] = colour
            out.append(Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)))
    return V, G


def _planted_quads(split: str, image_seed: int) -> dict[str, list[Any]]:
    """Quadruplets of the tiny policy's pairs (child drinking wine / beer vs juice): every caption
    of ``split`` with its minimal-pair counterpart, and hand-built image pairs."""
    from relsafe.world.captions import all_captions

    policy = load_policy("tiny")
    S, U = [], []
    for unsafe, safe in policy.pairs():
        s_caps, u_caps = all_captions(safe, split), all_captions(unsafe, split)
        assert len(s_caps) == len(u_caps)
        S += s_caps
        U += u_caps
    V, G = _planted_images(len(S), image_seed)
    return {"S": S, "U": U, "V": V, "G": G}


@pytest.fixture(scope="module")
def planted_data() -> dict[str, dict[str, list[Any]]]:
    """Calibration: edit captions (144 pairs), image seed 1. Held out: the evaluation template's
    captions (36 pairs) and new images (seed 2)."""
    return {"cal": _planted_quads(P_CAL_SPLIT, 1), "test": _planted_quads(P_EVAL_SPLIT, 2)}


def _fc2(model: PlantedEncoder, tower: str) -> nn.Linear:
    return model.text.fc2 if tower == "text" else model.vision.fc2


def _preferences(model: PlantedEncoder, q: dict[str, list[Any]]) -> dict[str, float]:
    from relsafe.eval.safeground import LEVEL1, safeground_from_embeddings

    res = safeground_from_embeddings(
        model.encode_text(q["S"]),
        model.encode_image(q["V"]),
        model.encode_text(q["U"]),
        model.encode_image(q["G"]),
        model,
    )
    return {m: res.metrics[m] for m in LEVEL1}


def _planted_uwm(planted_data: dict, tower: str) -> tuple[PlantedEncoder, torch.Tensor]:
    """UWM with its defaults (tau 2%, per layer, negation, |W| prior on text only) on one tower;
    returns the edited model and the selected flat indices of that tower's fc2."""
    model = PlantedEncoder()
    res = uwm(model, None, UWMConfig(towers=[tower]), progress=False, data=planted_data["cal"])
    (lm,) = res.artifacts["mask"].layers.values()
    assert lm.key == f"{tower}:fc2"
    return model, lm.indices


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_planted_unit_ranks_top_and_is_selected(planted_data: dict, tower: str) -> None:
    """(a) The planted unit is active on unsafe calibration inputs only; the weights reading it
    into the unsafe direction are the top-scored weights of the layer by a clear margin, and the
    default tau = 2% mask holds all of them and only a handful of others."""
    model = PlantedEncoder()
    cal = planted_data["cal"]
    n = len(cal["S"])
    seen: list[torch.Tensor] = []
    h = _fc2(model, tower).register_forward_pre_hook(lambda m, a: seen.append(a[0][..., P_ALC]))
    with torch.no_grad():
        if tower == "text":
            tokens = model.tokenize(cal["S"] + cal["U"])
            model.forward_text(tokens)
            real = tokens["attention_mask"].bool()
            unit = [seen[0][i][real[i]].mean() for i in range(2 * n)]
        else:
            model.forward_image(model.preprocess(cal["V"] + cal["G"]))
            unit = list(seen[0].mean(1))
    h.remove()
    unit_t = torch.stack(unit)
    assert float(unit_t[:n].abs().max()) < 0.05  # safe inputs: the unit is (nearly) silent
    assert float(unit_t[n:].min()) > 0.3  # every unsafe input: the unit is on

    scores = compute_scores(model, CalibrationData(**cal), UWMConfig(towers=[tower]))
    flat = scores.scores[f"{tower}:fc2"].reshape(-1)
    planted = _planted_indices()
    order = torch.argsort(flat, descending=True)
    assert set(order[: len(planted)].tolist()) == set(planted.tolist())
    others = torch.ones_like(flat, dtype=torch.bool)
    others[planted] = False
    assert float(flat[planted].min()) > 2.0 * float(flat[others].max())
    # not magnitude: the planted weights are far from the layer's largest |W|
    w_abs = _fc2(model, tower).weight.detach().abs().reshape(-1)
    assert int((w_abs > P_PLANTED_W).sum()) >= 500  # of 10,240: not even the top 5% by |W|

    sel = select_weights(scores.scores, UWMConfig())[f"{tower}:fc2"]
    assert set(planted.tolist()) <= set(sel.tolist())
    assert len(sel) <= 5 * len(planted)  # of 10,240 weights
    if tower == "vision":  # no |W| prior: the rest are tiny weights reading the same unit
        assert {int(i) % P_HID for i in sel} == {P_ALC}


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_planted_edit_negates_the_unit_and_turns_unsafe_preferences(
    planted_data: dict, tower: str
) -> None:
    """(b) UWM negates exactly its mask (the planted weights among it: sign flipped, magnitude
    kept) and nothing else moves; (c) on held-out quadruplets the unsafe text and the unsafe image
    preferred each other before the edit and prefer the safe item of the other modality after it,
    while the safe preferences hold throughout."""
    before_model = PlantedEncoder()
    before = _state(before_model)
    prefs_before = _preferences(before_model, planted_data["test"])
    model, sel = _planted_uwm(planted_data, tower)

    key = f"{tower}.fc2.weight"
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, t in after.items():
        if k != key:
            assert torch.equal(t, before[k]), k  # the other tower, the fixed features: untouched
    w0, w1 = before[key].reshape(-1), after[key].reshape(-1)
    moved = torch.zeros_like(w0, dtype=torch.bool)
    moved[sel] = True
    assert torch.equal(w1[~moved], w0[~moved])
    assert torch.equal(w1[moved], -w0[moved])
    planted = _planted_indices()
    assert torch.equal(w1[planted].abs(), w0[planted].abs())
    assert torch.all(torch.sign(w1[planted]) == -torch.sign(w0[planted]))

    prefs_after = _preferences(model, planted_data["test"])
    assert prefs_before["pt_u"] <= 0.1 and prefs_before["pv_u"] <= 0.1, prefs_before
    assert prefs_after["pt_u"] >= 0.9 and prefs_after["pv_u"] >= 0.9, prefs_after
    for m in ("pt_s", "pv_s"):
        assert prefs_before[m] >= 0.9 and prefs_after[m] >= 0.9, (m, prefs_before, prefs_after)


@pytest.mark.parametrize("control", ["random", "largest_abs_w"])
@pytest.mark.parametrize("tower", ["text", "vision"])
def test_same_count_controls_do_not_turn_unsafe_preferences(
    planted_data: dict, tower: str, control: str
) -> None:
    """(d) Negating as many weights as UWM did, chosen at random or by largest |W|, leaves the
    unsafe preferences where they were: what (c) shows comes from the score, not from negating
    some weights."""
    _, sel = _planted_uwm(planted_data, tower)
    model = PlantedEncoder()
    flat = _fc2(model, tower).weight.data.view(-1)
    if control == "random":
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(flat.numel(), generator=g)[: len(sel)]
    else:
        idx = torch.topk(flat.abs(), len(sel)).indices
    assert not set(idx.tolist()) & set(_planted_indices().tolist())
    flat[idx] *= -1
    prefs = _preferences(model, planted_data["test"])
    assert prefs["pt_u"] <= 0.1 and prefs["pv_u"] <= 0.1, prefs


def test_a_dead_safe_input_does_not_take_all_the_score_mass() -> None:
    """A ReLU input exactly 0 on every safe item but active on the unsafe ones: with only an
    absolute 1e-12 guard its column scores ~1e12 and owns the whole mass; floored at 1% of the
    pair's mean denominator it scores at most ~100x a typical column, and the other columns are
    the paper's formula exactly."""
    from relsafe.methods.uwm.scores import RATIO_FLOOR

    g = torch.Generator().manual_seed(3)
    b, d_in, d_out = 6, 10, 5
    a_s, a_u = torch.rand(b, d_in, generator=g) + 0.5, torch.rand(b, d_in, generator=g) + 0.5
    sig_s, sig_u = torch.rand(b, d_in, generator=g) + 0.5, torch.rand(b, d_in, generator=g) + 0.5
    a_s[:, 3] = 0.0  # dead on the safe side (sig = 0 + STD_EPS)
    sig_s[:, 3] = STD_EPS
    w = torch.rand(d_out, d_in, generator=g) + 0.1
    unguarded = factorised_score(a_s, sig_s, a_u, sig_u, w, floor=0.0)
    got = factorised_score(a_s, sig_s, a_u, sig_u, w)
    col = unguarded.sum(0) / unguarded.sum()
    assert col[3] > 0.999  # before: one input column is the whole mass
    share = got.sum(0) / got.sum()
    assert share[3] < 0.95  # after: strongest column, not all of it
    typical = got[:, [j for j in range(d_in) if j != 3]].mean()
    assert got[:, 3].mean() < 2.5 / RATIO_FLOOR * typical
    assert got[:, 3].mean() > 5 * typical  # still the strongest evidence
    keep = [j for j in range(d_in) if j != 3]
    torch.testing.assert_close(got[:, keep], unguarded[:, keep], rtol=1e-6, atol=0)


def test_neighbour_contrast_keeps_the_minimum_over_every_minimal_change(
    tiny_clip_dir: Path,
) -> None:
    """contrast: neighbours calibrates the unsafe side against each kind of safe neighbour and
    keeps, per weight, the smallest of the three scores (a weight is unsafe-specific only if it
    is against another subject, another object and another relation)."""
    from relsafe.methods.uwm import min_contrast, neighbour_calibration_data
    from relsafe.policy import NEIGHBOUR_KINDS

    policy = load_policy("tiny")
    cfg = _small(n_per_pair=3, size=32, contrast="neighbours")
    sets = neighbour_calibration_data(policy, cfg)
    assert set(sets) <= set(NEIGHBOUR_KINDS) and sets
    for kind, data in sets.items():
        want = 0
        for t in policy.unsafe:
            neigh = policy.derive(t).by_kind(kind)
            want += len(neigh) * -(-3 // len(neigh)) if neigh else 0
        assert len(data.S) == len(data.U) == len(data.V) == len(data.G) == want
        assert not set(data.S) & set(data.U)  # the safe side is never the unsafe caption
    model = load_model(str(tiny_clip_dir))
    cals = {k: compute_scores(model, d, cfg) for k, d in sets.items()}
    both = min_contrast(cals)
    for key, score in both.scores.items():
        want = torch.stack([c.scores[key] for c in cals.values()]).amin(0)
        assert torch.equal(score, want)
        assert all((score <= c.scores[key]).all() for c in cals.values())
    assert both.n_pairs["text"] == sum(len(d.S) for d in sets.values())
    res = uwm(model, policy, cfg, progress=False)
    assert res.record.extra["contrast"] == "neighbours"
    assert res.record.data_sizes["text_pairs"] == both.n_pairs["text"]
    with pytest.raises(ConfigError, match="contrast"):
        _small(contrast="siblings").validate()
