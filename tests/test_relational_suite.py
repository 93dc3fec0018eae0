"""The relational suite's VAL mode: canonical captions on VAL images, for choosing hyperparameters
without touching TEST images or any held-out phrasing, context or style."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from relsafe.config import ConfigError, from_dict
from relsafe.data.attacks import NONE
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
