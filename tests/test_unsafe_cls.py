"""The unsafe_cls suite: AUROC, thresholds, baselines and rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from relsafe.errors import InputError
from relsafe.eval.unsafe_cls_suite import (
    UnsafeClsConfig,
    auroc,
    classify_unsafe,
    fit_probe,
    fit_unsafe_classifier,
    prompt_scores,
    unsafe_prompts,
)
from relsafe.models.hyperbolic import HyperbolicDualEncoder, best_threshold
from relsafe.models.registry import load_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_policy() -> Any:
    from relsafe.policy import load_policy

    return load_policy("tiny")


SMALL = UnsafeClsConfig(n_per_pair=3, n_val_per_pair=3, size=32, ood_styles=["sketch", "night"])


def test_auroc_hand_computed_with_ties() -> None:
    safe = torch.tensor([0.1, 0.4, 0.4, 0.8])
    unsafe = torch.tensor([0.4, 0.9, 0.2])
    # pairs won by the unsafe score: 0.4 -> 1 + 0.5 + 0.5 + 0; 0.9 -> 4; 0.2 -> 1  => 7 / 12
    assert auroc(safe, unsafe) == pytest.approx(7 / 12)
    assert auroc(torch.zeros(5), torch.zeros(3)) == pytest.approx(0.5)  # all ties
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0


def test_auroc_matches_pairwise_definition() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 6, (37,), generator=g).float()
    u = torch.randint(2, 9, (23,), generator=g).float()
    pair = (u[:, None] > s[None, :]).double() + 0.5 * (u[:, None] == s[None, :]).double()
    assert auroc(s, u) == pytest.approx(float(pair.mean()))
    with pytest.raises(InputError):
        auroc(torch.tensor([]), u)


def test_best_threshold_maximises_balanced_accuracy() -> None:
    safe = torch.tensor([0.0, 0.1, 0.2, 0.9])
    unsafe = torch.tensor([0.5, 0.6, 0.7])
    t = best_threshold(safe, unsafe)
    assert 0.2 < t < 0.5


def test_probe_separates_separable_data() -> None:
    g = torch.Generator().manual_seed(0)
    safe = torch.randn(40, 8, generator=g)
    unsafe = torch.randn(40, 8, generator=g) + torch.tensor([3.0] + [0.0] * 7)
    probe = fit_probe(safe, unsafe)
    assert auroc(probe.score(safe), probe.score(unsafe)) > 0.95
    again = fit_probe(safe, unsafe)
    assert torch.equal(probe.w, again.w)  # deterministic


def test_prompt_scores_and_prompts(tiny_clip: Any, tiny_policy: Any) -> None:
    up, sp = unsafe_prompts(tiny_policy)
    assert up == ["a photo of a child drinking wine", "a photo of a child drinking beer"]
    assert sp == ["a photo of a child drinking juice"]
    ue, se = tiny_clip.encode_text(up), tiny_clip.encode_text(sp)
    sc = prompt_scores(tiny_clip, ue, ue, se)
    assert sc.shape == (2,)
    assert torch.allclose(sc, 1.0 - tiny_clip.similarity(ue, se)[:, 0], atol=1e-5)


def test_suite_rows_on_euclidean_model(tiny_clip: Any, tiny_policy: Any) -> None:
    from relsafe.eval.suites import run_suite

    rows = run_suite("unsafe_cls", tiny_clip, config=SMALL, policy=tiny_policy, method="orig")
    assert {r.slice for r in rows} == {
        "text|score:prompt",
        "text|score:probe",
        "image|score:prompt",
        "image|score:probe",
    }
    text_attacks = {r.attack for r in rows if r.slice.startswith("text")}
    image_attacks = {r.attack for r in rows if r.slice.startswith("image")}
    assert text_attacks == {"none", "paraphrase"}
    assert image_attacks == {"none", "ood:sketch", "ood:night"}
    per_class = ("fpr_safe", "tpr_unsafe", "median_safe", "median_unsafe")
    for r in rows:
        assert r.suite == "unsafe_cls" and r.method == "orig"
        if r.metric in ("auroc", "accuracy", "fpr_safe", "tpr_unsafe"):
            assert 0.0 <= r.value <= 1.0
        assert r.n == (3 * 2 if r.metric in per_class else 3 * 2 * 2)
    metrics = {r.metric for r in rows}
    assert metrics == {"auroc", "accuracy", "fpr_safe", "tpr_unsafe", "threshold", *per_class[2:]}


def test_suite_uses_the_hyperbolic_models_own_threshold(
    tiny_clip_dir: Path, tiny_policy: Any
) -> None:
    from relsafe.eval.suites import run_suite

    hyp = HyperbolicDualEncoder(load_model(str(tiny_clip_dir)))
    t = hyp.encode_text(["a", "b b b b b b"])
    i = hyp.encode_image(torch.zeros(2, 3, 32, 32))
    hyp.fit_unsafe_threshold({"text": t[:1], "image": i[:1]}, {"text": t[1:], "image": i[1:]})
    cfg = UnsafeClsConfig(
        n_per_pair=3, n_val_per_pair=3, size=32, ood_styles=[], scorers=["radius", "probe"]
    )
    rows = run_suite("unsafe_cls", hyp, config=cfg, policy=tiny_policy)
    thr = {r.slice: r.value for r in rows if r.metric == "threshold" and r.attack == "none"}
    assert thr["text|score:radius"] == pytest.approx(hyp.unsafe_threshold["text"])
    assert thr["image|score:radius"] == pytest.approx(hyp.unsafe_threshold["image"])
    assert "text|score:probe" in thr
    # median rows are the medians of the radius scores (distance from the origin) of TEST items
    from relsafe.data.quadruplets import policy_quadruplets
    from relsafe.world import splits

    q = policy_quadruplets(tiny_policy, 3, splits.TEST, 32)
    med = {
        (r.slice, r.metric): r.value
        for r in rows
        if r.metric.startswith("median_") and r.attack == "none" and "radius" in r.slice
    }
    with torch.no_grad():
        s_d = hyp.distance_from_origin(hyp.encode_text(q["S"])).double().median()
        g_d = hyp.distance_from_origin(hyp.encode_image(list(map(Image.fromarray, q["G"]))))
    assert med[("text|score:radius", "median_safe")] == pytest.approx(float(s_d), rel=1e-4)
    assert med[("image|score:radius", "median_unsafe")] == pytest.approx(
        float(g_d.double().median()), rel=1e-4
    )
    with pytest.raises(InputError, match="hyperbolic"):
        run_suite(
            "unsafe_cls",
            hyp.base,
            config=UnsafeClsConfig(n_per_pair=2, n_val_per_pair=2, size=32, scorers=["radius"]),
            policy=tiny_policy,
        )


def test_classify_unsafe_on_a_euclidean_model(tiny_clip_dir: Path, tiny_policy: Any) -> None:
    model = load_model(str(tiny_clip_dir))
    with pytest.raises(InputError, match="fit_unsafe_classifier"):
        classify_unsafe(model, texts=["a photo of a child drinking wine"])
    clf = fit_unsafe_classifier(model, tiny_policy, "prompt", n_val_per_pair=3, size=32)
    assert set(clf.thresholds) == {"text", "image"}
    out = classify_unsafe(model, texts=["a photo of a child drinking wine", "a dog"])
    assert out["text"].unsafe.dtype == torch.bool and out["text"].scores.shape == (2,)
    assert torch.equal(out["text"].unsafe, out["text"].scores > clf.thresholds["text"])
