"""Numeric config fields (issue 17, finding 3): NaN, infinities, zero intervals, out-of-range
dropout and absurd sizes are refused by every config's ``validate()`` with the key and the bound
named; and the "last good adapter" after a blow-up is one whose loss was computed and finite."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relsafe.data.edit_sets import SetSizes
from relsafe.errors import ConfigError, RelsafeError
from relsafe.methods.hysac import HySACConfig
from relsafe.methods.relational_lora import LoraEditConfig
from relsafe.methods.safeclip import SafeClipConfig
from relsafe.methods.uwm import UWMConfig
from relsafe.pretrain.config import PretrainConfig
from relsafe.validate import check_number

NAN, INF = math.nan, math.inf

BAD: list[tuple[type, str, Any]] = [
    (LoraEditConfig, "lr", NAN),
    (LoraEditConfig, "lr", INF),
    (LoraEditConfig, "lr", 1e30),
    (LoraEditConfig, "alpha", NAN),
    (LoraEditConfig, "w_forget", NAN),
    (LoraEditConfig, "w_retain_align", -INF),
    (LoraEditConfig, "margin", NAN),
    (LoraEditConfig, "log_every", 0),
    (LoraEditConfig, "checkpoint_every", 0),
    (LoraEditConfig, "dropout", 5.0),
    (LoraEditConfig, "dropout", 1.0),
    (LoraEditConfig, "batch_forget", 100_000_000),
    (LoraEditConfig, "steps", 1_000_000_000),
    (LoraEditConfig, "weight_decay", NAN),
    (SafeClipConfig, "lr", NAN),
    (SafeClipConfig, "alpha", INF),
    (SafeClipConfig, "dropout", 5.0),
    (SafeClipConfig, "n_per_pair", 100_000_000),
    (SafeClipConfig, "log_every", 0),
    (SafeClipConfig, "logit_scale", NAN),
    (HySACConfig, "lr", NAN),
    (HySACConfig, "scalar_lr", NAN),
    (HySACConfig, "lora_alpha", NAN),
    (HySACConfig, "dropout", 5.0),
    (HySACConfig, "checkpoint_every", 0),
    (HySACConfig, "log_every", 0),
    (HySACConfig, "steps", 1_000_000_000),
    (HySACConfig, "n_per_pair", 100_000_000),
    (HySACConfig, "weight_decay", INF),
    (UWMConfig, "n_per_pair", 100_000_000),
    (UWMConfig, "batch_size", 100_000_000),
    (UWMConfig, "alpha", 1e30),
    (PretrainConfig, "lr", NAN),
    (PretrainConfig, "grad_clip", NAN),
    (PretrainConfig, "log_every", 0),
    (PretrainConfig, "steps", 1_000_000_000),
    (PretrainConfig, "batch_size", 100_000_000),
    (PretrainConfig, "embed_dim", -5),
    (SetSizes, "images_per_retain_tuple", 100_000),
    (SetSizes, "texts_per_forget_tuple", 0),
    (SetSizes, "n_unrelated", 10**9),
    (SetSizes, "context_fraction", 1.5),
    (SetSizes, "size", 100_000),
]


@pytest.mark.parametrize(("cls", "key", "value"), BAD, ids=lambda x: getattr(x, "__name__", x))
def test_bad_number_is_refused_naming_key_and_bound(cls: type, key: str, value: Any) -> None:
    cfg = cls(**{key: value})
    with pytest.raises(ConfigError, match=rf"\b{key}\b.* must be .* in [\[(].*, got") as e:
        cfg.validate()
    assert repr(value) in str(e.value) or str(value) in str(e.value)


@pytest.mark.parametrize(
    "cls", [LoraEditConfig, SafeClipConfig, HySACConfig, UWMConfig, PretrainConfig, SetSizes]
)
def test_defaults_pass(cls: type) -> None:
    cls().validate()


def test_nested_data_sizes_are_checked_through_the_method_config() -> None:
    """``data.*`` of a method's config is bounded too: counts and a tuple's renders in bytes."""
    from relsafe.config import from_dict

    for data, words in (
        ({"images_per_retain_tuple": 100_000}, r"config.data: .*images_per_retain_tuple"),
        ({"size": 1024, "images_per_retain_tuple": 100}, r"MiB of renders per tuple"),
    ):
        with pytest.raises(ConfigError, match=words):
            from_dict(LoraEditConfig, {"data": data}, "config")


def test_check_number_kinds() -> None:
    assert check_number("c", "k", 3, lo=1, integer=True) == 3
    assert check_number("c", "k", None, allow_none=True) is None
    for bad in (True, "3", 3.0, NAN):
        with pytest.raises(ConfigError, match=r"^c: k must be an integer in \[1, inf\), got"):
            check_number("c", "k", bad, lo=1, integer=True)
    with pytest.raises(ConfigError, match=r"in \(0, 10\]"):
        check_number("c", "lr", 0.0, lo=0, hi=10, lo_open=True)


_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
_NUMERIC_KEYS = {
    cls: [
        k
        for k, v in vars(cls()).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "extra"
    ]
    for cls in (LoraEditConfig, SafeClipConfig, HySACConfig, UWMConfig, PretrainConfig)
}


@settings(max_examples=150, deadline=None)
@given(
    cls=st.sampled_from(sorted(_NUMERIC_KEYS, key=lambda c: c.__name__)),
    data=st.data(),
    value=_NUMBERS,
)
def test_any_value_in_any_numeric_key_is_accepted_or_a_config_error(
    cls: type, data: Any, value: Any
) -> None:
    key = data.draw(st.sampled_from(_NUMERIC_KEYS[cls]))
    cfg = cls(**{key: value})
    try:
        cfg.validate()
    except RelsafeError as e:
        assert key.split("_")[0] in str(e) or key in str(e)
        return
    # accepted: then the value is a finite number (never NaN / inf / None / text)
    v = getattr(cfg, key)
    assert v is None or (isinstance(v, int | float) and math.isfinite(v)), (key, v)


def test_last_good_adapter_is_one_whose_loss_was_finite(tiny_clip_dir: Path) -> None:
    """``lr=1e30``: the adapter after the first step is ~1e30 and its loss non-finite; the loop
    must restore the weights of the last step whose loss was computed (here: the initial ones),
    not the ones right after ``opt.step()``."""
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.training import run_loop
    from relsafe.models.registry import load_model

    model = load_model(str(tiny_clip_dir))
    handle = attach_lora(model, ("text",), r=2, seed=1)
    start = {k: v.clone() for k, v in handle.state_dict().items()}
    tok = model.tokenize(["a dog eating bread", "a child"])

    def losses(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        return {"l": model.forward_text(tok).pow(2).mean()}

    res = run_loop(handle, handle.parameters(), losses, {}, steps=5, lr=1e30, progress=False)
    assert res.stopped_early and "non-finite" in res.stopped_early
    for k, v in handle.state_dict().items():
        assert torch.isfinite(v).all(), k
        assert v.abs().max() < 1e3, k
    assert all(torch.equal(handle.state_dict()[k], v) for k, v in start.items())


@pytest.mark.parametrize("key", ["log_every", "checkpoint_every"])
def test_run_loop_refuses_zero_intervals(tiny_clip_dir: Path, key: str) -> None:
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.training import run_loop
    from relsafe.models.registry import load_model

    model = load_model(str(tiny_clip_dir))
    handle = attach_lora(model, ("text",), r=2)
    with pytest.raises(ConfigError, match=key):
        run_loop(handle, handle.parameters(), lambda s, r: {}, {}, steps=2, lr=1e-3, **{key: 0})
