"""The relational suite on a tiny CLIP: its VAL mode (canonical captions on VAL images, for choosing
hyperparameters without touching TEST images or any held-out phrasing, context or style), and the
landing and preservation rows with the ``n`` each averages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from relsafe.config import ConfigError, from_dict
from relsafe.data.attacks import NONE
from relsafe.eval.landing import CATEGORIES
from relsafe.eval.relational_suite import RelationalConfig
from relsafe.eval.suites import run_suite
from relsafe.models.registry import load_model
from relsafe.policy import load_policy


def test_val_split_uses_val_images_and_only_canonical_captions(tiny_clip_dir: Path) -> None:
    cfg = from_dict(RelationalConfig, {"split": "val", "n_per_tuple": 1, "size": 32})
    assert [a.name for a in cfg.attacks()] == ["none"]
    assert "paraphrase" in [a.name for a in RelationalConfig().attacks()]
    val = NONE.test_images(1, 32, 0, split="val").images
    test = NONE.test_images(1, 32, 0).images
    assert val.shape == test.shape and not np.array_equal(val, test)
    rows = run_suite(
        "relational", load_model(str(tiny_clip_dir)), config=cfg, policy=load_policy("tiny")
    )
    assert rows and {r.attack for r in rows} == {"none", "worst"}  # worst of "none" alone
    assert all(r.n > 0 for r in rows)
    with pytest.raises(ConfigError, match="split"):
        from_dict(RelationalConfig, {"split": "test2"}).validate()


def test_rows_and_n_on_a_tiny_clip(tiny_clip_dir: Path) -> None:
    """Every landing row exists per unsafe tuple and attack, with the number of items it averages:
    i2t images x caption sets, t2i every query caption (18 evaluation, 48 held-out, 108 wrapped),
    slice all the number of tuples; preservation slices for retain and unseen unrelated tuples."""
    cfg = from_dict(
        RelationalConfig,
        {
            "n_per_tuple": 1,
            "size": 32,
            "text_variants": 2,
            "ood_styles": ["night"],
            "corruptions": [],
        },
    )
    policy = load_policy("tiny")
    rows = run_suite("relational", load_model(str(tiny_clip_dir)), config=cfg, policy=policy)
    got = {(r.slice, r.attack, r.metric): r for r in rows}
    assert len(got) == len(rows)
    n_t2i = {"none": 18, "paraphrase": 48, "context": 108, "ood:night": 18}
    n_i2t = {"none": 1, "paraphrase": 2, "context": 2, "ood:night": 1}
    rates = ["redirect_rate", "harmful_landing_rate", "unsafe_hit"]
    rates += [f"landing_{c}" for c in CATEGORIES]
    for t in policy.unsafe_ids:
        for a in n_t2i:
            for m in rates:
                assert got[(t, a, f"{m}_i2t")].n == n_i2t[a]
                assert got[(t, a, f"{m}_t2i")].n == n_t2i[a]
                assert got[(t, a, m)].n == n_i2t[a] + n_t2i[a]
                assert got[("all", a, m)].n == 2
            for d in ("i2t", "t2i"):
                shares = sum(got[(t, a, f"landing_{c}_{d}")].value for c in CATEGORIES)
                assert shares == pytest.approx(1.0)
                assert 1 <= got[(t, a, f"unsafe_rank_{d}")].value <= 96
                assert got[(t, a, f"unsafe_margin_{d}")].n == got[(t, a, f"unsafe_hit_{d}")].n
            harm = got[(t, a, "harmful_landing_rate_t2i")].value
            assert harm == pytest.approx(
                got[(t, a, "landing_hit_t2i")].value + got[(t, a, "landing_other_unsafe_t2i")].value
            )
    for slice_, n_tuples in (
        ("unrelated", 84),
        ("unrelated:retain", len(policy.unrelated("retain"))),
        ("unrelated:unseen", len(policy.unrelated("unseen"))),
    ):
        assert got[(slice_, "none", "accuracy")].n == n_tuples
    assert got[("all", "worst", "harmful_landing_rate")].n == 2
    assert got[(policy.unsafe_ids[0], "worst", "redirect_rate")].n == 4
