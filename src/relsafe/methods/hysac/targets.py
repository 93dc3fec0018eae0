"""Which layers HySAC adapts, and where the frozen prefix of each tower ends.

LoRA layers (:func:`lora_targets`): LoRA's default roles in the backbone's layer preset
(:func:`relsafe.methods.lora.lora_patterns`; or ``lora_patterns`` per tower) narrowed to the top
``text_layers`` / ``vision_layers`` numbered layers (default 1 each; 0 = all), plus the towers'
projection heads (role ``proj``, with ``include_projections``) and the patch embedding (role
``patch_embed``, with ``include_patch_embedding``) where the preset names them, plus
``extra_lora_patterns``.

With ``cache_frozen`` (default) the frozen layers below the adapted ones run once per training and
validation item, through the backbone's own cut of each tower
(:meth:`~relsafe.models.base.DualEncoder.split_tower`): :func:`text_split` and
:func:`image_split` choose the cut; HySAC never learns the backbone's module names.
"""

from __future__ import annotations

from relsafe.methods.hysac.config import HySACConfig
from relsafe.methods.lora import lora_patterns, target_module_names
from relsafe.methods.text_prefix import frozen_split, layer_index, root_modules, top_layers
from relsafe.models.base import TowerSplit
from relsafe.models.hyperbolic import HyperbolicDualEncoder

__all__ = ["image_split", "lora_targets", "text_split"]


def lora_targets(model: HyperbolicDualEncoder, cfg: HySACConfig) -> dict[str, list[str]]:
    """Module names (relative to the LoRA root) that HySAC adapts, per tower (see module docs)."""
    preset = model.preset
    out: dict[str, list[str]] = {}
    for tower, top in (("text", cfg.text_layers), ("vision", cfg.vision_layers)):
        pats = cfg.lora_patterns.get(tower) or lora_patterns(model, tower)
        names = top_layers(target_module_names(model, [tower], {tower: tuple(pats)}), top)
        more: list[str] = []
        if cfg.include_projections:
            more += list(preset.globs(tower, ("proj",)))
        if cfg.include_patch_embedding and tower == "vision":
            more += list(preset.globs(tower, ("patch_embed",)))
        more += list(cfg.extra_lora_patterns.get(tower, ()))
        if more:
            names += target_module_names(model, [tower], {tower: tuple(more)})
        out[tower] = sorted(set(names))
    return out


def text_split(model: HyperbolicDualEncoder, targets: list[str]) -> TowerSplit | None:
    """The text tower's cut below the lowest adapted layer, when the adapted text modules are in
    numbered layers above the first or in the head (none in the frozen prefix); else None
    (including a cut at layer 0, which would save nothing)."""
    if not any(layer_index(t) is not None for t in targets):
        return None
    split = frozen_split(model, "text", root_modules(model, targets))
    return split if split is not None and split.at > 0 else None


def image_split(model: HyperbolicDualEncoder, targets: list[str]) -> TowerSplit | None:
    """The deepest cut of the image tower whose frozen prefix holds no adapted module (for
    relsafe-mini: before the token MLP of the first adapted CNN stage), or None."""
    return frozen_split(model, "image", root_modules(model, targets))
