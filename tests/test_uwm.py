"""UWM on a tiny random CLIP: the score is the paper's (checked against brute force), the selection
takes exactly what it should, the edit touches exactly the mask, and revert is bit-exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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
from relsafe.models.registry import load_model
from relsafe.policy import load_policy


@pytest.fixture(scope="module")
def calib() -> dict:
    """Six RelWorld quadruplets (tiny policy, 3 per pair, 32 px) as calibration data."""
    from relsafe.data.visu import VisuData
    from relsafe.world import splits

    d = VisuData.from_relworld(load_policy("tiny"), 3, splits.EDIT, size=32)
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
    """From a policy: RelWorld pairs with train phrasings, training styles, EDIT seed."""
    from relsafe.methods.uwm import calibration_data
    from relsafe.world import splits
    from relsafe.world.dataset import quadruplets
    from relsafe.world.styles import TRAIN_STYLES

    policy = load_policy("tiny")
    cfg = _small(n_per_pair=2, size=32)
    data = calibration_data(policy, cfg)
    quads = quadruplets(policy.pairs(), 2, TRAIN_STYLES, "train", splits.EDIT, 32)
    assert data.S == [q.safe_text for q in quads] and data.U == [q.unsafe_text for q in quads]
    assert np.array_equal(np.asarray(data.G[0]), np.asarray(quads[0].unsafe_image))
    model = load_model(str(tiny_clip_dir))
    res = uwm(model, policy, cfg, progress=False)
    assert res.record.data_sizes == {"text_pairs": 4, "vision_pairs": 4}
