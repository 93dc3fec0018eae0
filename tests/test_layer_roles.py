"""Layer presets by architectural role: every method's default layers on each backbone are exactly
the ones selected before presets named roles (``tests/data/layer_selection.json`` was computed
with the group-based presets: ``text_lora``, ``vision_lora``, ``text_uwm``, ``vision_uwm`` and
``extra``), so re-expressing the presets changed no edited weight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relsafe.errors import InputError
from relsafe.models.base import ROLES, LayerPreset
from relsafe.models.registry import load_model

GOLDEN = json.loads((Path(__file__).parent / "data" / "layer_selection.json").read_text())


def _selections(model: Any) -> dict[str, Any]:
    """Every method default's layer selection on ``model`` (module names)."""
    from relsafe.methods.hysac import HySACConfig
    from relsafe.methods.hysac import lora_targets as hysac_targets
    from relsafe.methods.lora import lora_patterns, target_module_names
    from relsafe.methods.relational_lora import LoraEditConfig
    from relsafe.methods.relational_lora import lora_targets as rel_targets
    from relsafe.methods.uwm import target_layers
    from relsafe.models.hyperbolic import HyperbolicDualEncoder

    preset = model.preset
    safeclip = None  # the expression relsafe.methods.safeclip uses for its LoRA layers
    if preset.has_role("vision", "patch_embed"):
        patch = preset.globs("vision", ["patch_embed"])
        safeclip = {"vision": (*lora_patterns(model, "vision"), *patch)}
    hyp = HyperbolicDualEncoder(model)
    return {
        "lora.text": target_module_names(model, ["text"]),
        "lora.vision": target_module_names(model, ["vision"]),
        "uwm.text": sorted(target_layers(model, "text")),
        "uwm.vision": sorted(target_layers(model, "vision")),
        "safeclip": target_module_names(model, ("text", "vision"), safeclip),
        "relational_lora.text": rel_targets(model, LoraEditConfig()),
        "relational_lora.text+vision": rel_targets(
            model, LoraEditConfig(towers=["text", "vision"])
        ),
        "relational_lora.all_layers": rel_targets(
            model, LoraEditConfig(text_layers=0, towers=["text", "vision"])
        ),
        "hysac": hysac_targets(hyp, HySACConfig()),
        "hysac.all_layers": hysac_targets(hyp, HySACConfig(text_layers=0, vision_layers=0)),
        "hysac.no_extras": hysac_targets(
            hyp, HySACConfig(include_projections=False, include_patch_embedding=False)
        ),
    }


def _check(model: Any, backbone: str) -> None:
    got = _selections(model)
    want = GOLDEN[backbone]
    assert set(got) == set(want)
    for key, names in want.items():
        assert got[key] == names, f"{backbone} / {key}"


def test_hf_clip_selections_are_unchanged(tiny_clip: Any) -> None:
    _check(tiny_clip, "hf-tiny-clip")


def test_relsafe_mini_selections_are_unchanged() -> None:
    _check(load_model("relsafe-mini"), "relsafe-mini")


def test_relsafe_mini_linear_head_selections_are_unchanged() -> None:
    from relsafe.models.mini import MiniConfig, RelsafeMini

    cfg = MiniConfig(
        embed_dim=16, stem_dim=8, vision_dims=(8, 16, 24), vision_depths=(1, 2, 1), text_hidden=0
    )
    _check(RelsafeMini(cfg, seed=0), "relsafe-mini-linear-head")


def test_preset_roles() -> None:
    preset = LayerPreset(
        text={"attn_out": ("a.*.out",), "proj": ("proj",)},
        vision={"mlp_out": ("b.*.fc2",), "patch_embed": ("patch",)},
        method_roles={"lora": {"text": ("attn_out",)}},
    )
    assert preset.globs("text", ["attn_out", "mlp_in", "proj"]) == ("a.*.out", "proj")
    assert preset.has_role("vision", "patch_embed") and not preset.has_role("text", "mlp_in")
    assert preset.roles_for("lora", "text", ("mlp_in",)) == ("attn_out",)
    assert preset.roles_for("lora", "vision", ("mlp_in",)) == ("mlp_in",)
    assert preset.roles("vision") == {"mlp_out": ("b.*.fc2",), "patch_embed": ("patch",)}
    with pytest.raises(InputError, match="unknown layer roles"):
        LayerPreset(text={"attn_qkv": ("x",)})
    with pytest.raises(InputError, match="unknown layer roles"):
        preset.globs("text", ["mlp"])
    with pytest.raises(InputError, match="unknown tower"):
        preset.globs("image", ["mlp_in"])
    assert set(ROLES) >= {"attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out"}
