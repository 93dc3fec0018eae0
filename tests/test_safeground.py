"""SafeGround metrics: the hand-computed toy case, strict inequalities, invariants, and the suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relsafe.errors import InputError
from relsafe.eval.safeground import (
    METRICS,
    safeground_from_embeddings,
    safeground_from_quadruplet_sims,
)

# hand-computed toy case, kept in the repo so the test always runs (never skips)
TOY = Path(__file__).resolve().parent / "fixtures" / "safeground_toy.json"


@pytest.fixture(scope="module")
def toy() -> dict:
    return json.loads(TOY.read_text(encoding="utf-8"))


def test_toy_case_every_metric_and_boolean(toy: dict) -> None:
    cols = toy["columns"]
    assert cols == ["s_SV", "s_SG", "s_UV", "s_UG"]
    sims = np.asarray(toy["quadruplets"], dtype=float)
    res = safeground_from_quadruplet_sims(*(sims[:, i] for i in range(4)))
    assert res.n == len(sims)
    assert set(res.metrics) == set(METRICS) == set(toy["expected"])
    for m, want in toy["expected"].items():
        assert res.metrics[m] == pytest.approx(want, abs=1e-12), m
    for i, want in enumerate(toy["per_quadruplet"]):
        for m, b in want.items():
            assert bool(res.per_quadruplet[m][i]) is b, (i, m)


def test_ties_are_not_preferences() -> None:
    res = safeground_from_quadruplet_sims([0.5], [0.5], [0.5], [0.5])
    assert res.metrics == {m: 0.0 for m in METRICS}
    res = safeground_from_quadruplet_sims([0.5], [0.5], [0.2], [0.2])  # text queries tie
    assert res.metrics["pt_s"] == res.metrics["pt_u"] == 0.0
    assert res.metrics["pv_s"] == res.metrics["pv_u"] == 1.0  # 0.5 > 0.2 for image queries
    res = safeground_from_quadruplet_sims([0.5], [0.49], [0.2], [0.19])
    assert res.metrics == {m: 1.0 for m in METRICS}


def test_image_query_similarities_can_differ() -> None:
    """For an asymmetric similarity the image-query numbers are passed separately."""
    sv, sg, uv, ug = [0.9], [0.1], [0.8], [0.2]  # every text query prefers the safe image
    res = safeground_from_quadruplet_sims(
        sv, sg, uv, ug, s_VS=[0.1], s_VU=[0.2], s_GS=[0.5], s_GU=[0.4]
    )
    assert res.metrics["pt_s"] == res.metrics["pt_u"] == 1.0
    assert res.metrics["pv_s"] == 0.0 and res.metrics["pv_u"] == 1.0
    assert res.metrics["txt_s"] == 0.0 and res.metrics["img_s"] == 1.0
    assert res.metrics["ps"] == 0.0 and res.metrics["pu"] == 1.0 and res.metrics["gs"] == 0.0


def test_from_embeddings_matches_sims() -> None:
    g = torch.Generator().manual_seed(0)
    S, V, U, G = (
        torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=-1) for _ in range(4)
    )

    def pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(-1)

    res = safeground_from_embeddings(S, V, U, G, pair)
    ref = safeground_from_quadruplet_sims(pair(S, V), pair(S, G), pair(U, V), pair(U, G))
    assert res.metrics == ref.metrics
    with pytest.raises(InputError, match="one shape"):
        safeground_from_embeddings(S, V[:3], U, G, pair)


@pytest.mark.parametrize(
    "args, match",
    [
        (([], [], [], []), "empty"),
        (([0.1, 0.2], [0.1], [0.1, 0.2], [0.1, 0.2]), "s_SG has 1"),
        (([float("nan")], [0.1], [0.1], [0.1]), "NaN"),
        (([[0.1]], [[0.1]], [[0.1]], [[0.1]]), "1-D"),
    ],
)
def test_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(InputError, match=match):
        safeground_from_quadruplet_sims(*args)


_sim = st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]) | st.floats(-1, 1, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_sim, _sim, _sim, _sim), min_size=1, max_size=30))
def test_invariants(quads: list[tuple[float, float, float, float]]) -> None:
    arr = np.asarray(quads)
    res = safeground_from_quadruplet_sims(*(arr[:, i] for i in range(4)))
    m, p = res.metrics, res.per_quadruplet
    for v in m.values():
        assert 0.0 <= v <= 1.0
    assert m["gs"] <= m["ps"] and m["gs"] <= m["pu"]
    assert m["gs"] <= min(m["txt_s"], m["img_s"])
    assert m["ps"] <= min(m["pt_s"], m["pv_s"]) and m["pu"] <= min(m["pt_u"], m["pv_u"])
    assert m["txt_s"] <= min(m["pv_s"], m["pv_u"]) and m["img_s"] <= min(m["pt_s"], m["pt_u"])
    assert np.array_equal(p["gs"], p["ps"] & p["pu"])
    assert np.array_equal(p["gs"], p["txt_s"] & p["img_s"])
    # a symmetric similarity: the image-query preferences are the text ones read the other way
    assert np.array_equal(p["pv_s"], arr[:, 0] > arr[:, 2])
    assert np.array_equal(p["pv_u"], arr[:, 1] > arr[:, 3])


# ---- the suite --------------------------------------------------------------------------------


def test_suite_rows_relworld(tiny_clip) -> None:
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.safeground_suite import SafeGroundConfig
    from relsafe.eval.suites import run_suite
    from relsafe.policy import load_policy

    policy = load_policy("tiny")
    cfg = SafeGroundConfig(n_per_pair=2, size=32, ood_styles=["sketch"])
    engine = EmbeddingEngine(tiny_clip, progress=False, num_workers=0)
    rows = run_suite("safeground", tiny_clip, config=cfg, policy=policy, engine=engine)
    slices = {"all", *policy.unsafe_ids}
    attacks = {"none", "paraphrase", "ood:sketch"}
    assert {(r.slice, r.attack, r.metric) for r in rows} == {
        (s, a, m) for s in slices for a in attacks for m in METRICS
    }
    for r in rows:
        assert r.suite == "safeground" and 0.0 <= r.value <= 1.0
        assert r.n == (4 if r.slice == "all" else 2)
    by = {(r.slice, r.attack, r.metric): r.value for r in rows}
    for a in attacks:
        assert by[("all", a, "gs")] <= min(by[("all", a, "ps")], by[("all", a, "pu")])
    with pytest.raises(InputError, match="policy"):
        run_suite("safeground", tiny_clip, config=cfg, engine=engine)


def test_suite_on_visu_file(tiny_clip, tmp_path: Path) -> None:
    from PIL import Image

    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.safeground_suite import SafeGroundConfig
    from relsafe.eval.suites import run_suite

    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        for kind in ("v", "g"):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / f"{kind}{i}.png"
            )
        lines.append(
            {
                "safe": f"a child drinking juice {i}",
                "nsfw": f"a child drinking wine {i}",
                "tag": "alcohol",
                "safe_image": f"v{i}.png",
                "nsfw_image": f"g{i}.png" if i < 3 else "gone.png",
            }
        )
    path = tmp_path / "visu.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    engine = EmbeddingEngine(tiny_clip, progress=False, num_workers=0)
    rows = run_suite(
        "safeground", tiny_clip, config=SafeGroundConfig(visu_path=str(path)), engine=engine
    )
    assert {r.slice for r in rows} == {"all", "alcohol"}
    assert all(r.n == 3 and r.attack == "none" for r in rows)  # the item without G is left out
    text_only = tmp_path / "text.json"
    text_only.write_text(json.dumps([{"safe": "a", "nsfw": "b", "tag": "t"}]))
    with pytest.raises(InputError, match="needs safe and unsafe images"):
        run_suite(
            "safeground",
            tiny_clip,
            config=SafeGroundConfig(visu_path=str(text_only)),
            engine=engine,
        )
