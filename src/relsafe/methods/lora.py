"""LoRA on a DualEncoder's towers through PEFT, shared by every LoRA-based method.

``attach_lora(model, towers=("text", "vision"), r=16, ...)`` injects PEFT LoRA layers into the
linear layers of LoRA's default roles (:data:`LORA_ROLES`, looked up in the model's
:class:`~relsafe.models.base.LayerPreset` by :func:`lora_patterns`) or that explicit globs name,
and returns a :class:`LoraHandle` that can list the trainable parameters, save
the adapter in the standard PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``)
and merge it into the base weights for export.

PEFT injects in place: after ``attach_lora`` the model *is* the adapted model. Anything that must
stay frozen (reference embeddings, a teacher) must be computed *before* attaching, or from a
separate copy. The methods in relsafe precompute their references; tests check they do not move.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relsafe.errors import InputError
from relsafe.models.base import DualEncoder, match_linear_layers
from relsafe.utils_io import read_json_file

TOWERS = ("text", "vision")

LORA_ROLES: tuple[str, ...] = ("attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out")
"""LoRA's default roles in every tower (METHODS.md section 2: the attention key, value and output
projections and both MLP layers). A backbone may override them through its preset's
``method_roles["lora"]`` (relsafe-mini adds MiniLM's query projection)."""


def lora_patterns(model: DualEncoder, tower: str) -> tuple[str, ...]:
    """The globs (relative to the tower) of the layers LoRA adapts by default in ``tower``:
    the roles of :data:`LORA_ROLES` (or the backbone's override) in the model's layer preset."""
    preset = model.preset
    return preset.globs(tower, preset.roles_for("lora", tower, LORA_ROLES))


def lora_root(model: DualEncoder) -> nn.Module:
    """The module PEFT wraps (:meth:`~relsafe.models.base.DualEncoder.peft_root`): the backend's
    own model where it has one (HF ``CLIPModel``), so the saved adapter loads with
    ``PeftModel.from_pretrained(CLIPModel.from_pretrained(...), dir)``."""
    return model.peft_root()


def target_module_names(
    model: DualEncoder, towers: Sequence[str], patterns: dict[str, Sequence[str]] | None = None
) -> list[str]:
    """Full module names (relative to :func:`lora_root`) of the linear layers to adapt."""
    root = lora_root(model)
    names_by_id = {id(m): n for n, m in root.named_modules()}
    out: list[str] = []
    for tower_name in towers:
        if tower_name not in TOWERS:
            raise InputError(f"unknown tower {tower_name!r}; use one of {TOWERS}")
        tower = model.text_tower if tower_name == "text" else model.vision_tower
        pats = (patterns or {}).get(tower_name) or lora_patterns(model, tower_name)
        for _, mod in match_linear_layers(tower, pats, (nn.Linear, nn.Conv2d)).items():
            name = names_by_id.get(id(mod))
            if name is None:
                raise InputError(f"a {tower_name} tower layer is not reachable from the LoRA root")
            out.append(name)
    if not out:
        raise InputError(f"no layers to adapt in towers {list(towers)}")
    return sorted(set(out))


@dataclass
class LoraHandle:
    """An attached adapter: its PEFT model, target layers and config."""

    model: DualEncoder
    peft_model: Any
    targets: list[str]
    config: Any

    def parameters(self) -> list[nn.Parameter]:
        return [p for n, p in lora_root(self.model).named_parameters() if "lora_" in n]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train_mode(self, on: bool = True) -> None:
        """Dropout only inside the LoRA layers; the base towers stay in eval mode."""
        self.model.eval()
        if on:
            for name, mod in lora_root(self.model).named_modules():
                if "lora_dropout" in name:
                    mod.train()

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {
            k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(self.peft_model).items()
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.peft_model, state)

    def save_adapter(self, folder: str | Path) -> None:
        """PEFT format: ``adapter_config.json`` + ``adapter_model.safetensors``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # LoraModel keys start with "model."; a PeftModel adds "base_model." in front of that.
        state = {f"base_model.{k}": v for k, v in self.state_dict().items()}
        save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = self.config.to_dict()
        cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
        (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2, default=str))

    def merge(self) -> DualEncoder:
        """Merge the adapter into the base weights and remove the LoRA layers (in place)."""
        self.peft_model.merge_and_unload()
        return self.model


def attach_lora(
    model: DualEncoder,
    towers: Sequence[str] = TOWERS,
    r: int = 16,
    alpha: float = 16.0,
    dropout: float = 0.0,
    patterns: dict[str, Sequence[str]] | None = None,
    seed: int = 0,
    targets: Sequence[str] | None = None,
) -> LoraHandle:
    """Inject LoRA into ``model``'s towers and freeze everything else.

    ``targets`` (full module names relative to :func:`lora_root`) overrides ``towers``/``patterns``.
    """
    from peft import LoraConfig, LoraModel

    if r <= 0:
        raise InputError(f"LoRA rank must be positive, got {r}")
    if targets is not None:
        targets = sorted(set(targets))
        if not targets:
            raise InputError("no layers to adapt: the target list is empty")
    else:
        targets = target_module_names(model, towers, patterns)
    root = lora_root(model)
    for p in root.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = LoraModel(root, config, "default")
    handle = LoraHandle(model, peft_model, targets, config)
    for p in handle.parameters():
        p.requires_grad_(True)
    return handle


def _lora_config(cfg: dict[str, Any], path: Path, lora_config: Any) -> Any:
    """A ``LoraConfig`` from a saved ``adapter_config.json``; a missing or ill-typed field is an
    :class:`InputError` naming the file and the field."""

    def need(key: str, ok: Any, kind: str, default: Any = ...) -> Any:
        if key not in cfg and default is not ...:
            return default
        if key not in cfg:
            raise InputError(f"{path}: has no {key!r} entry; is it a relsafe/PEFT adapter?")
        value = cfg[key]
        if not ok(value):
            raise InputError(f"{path}: {key!r} must be {kind}, got {value!r}")
        return value

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    r = need(
        "r", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "an integer > 0"
    )
    alpha = need("lora_alpha", number, "a finite number")
    dropout = need("lora_dropout", lambda v: number(v) and 0 <= v < 1, "a number in [0, 1)", 0.0)
    targets = need(
        "target_modules",
        lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x for x in v),
        "a non-empty list of module names",
    )
    bias = need(
        "bias", lambda v: v in ("none", "all", "lora_only"), "none, all or lora_only", "none"
    )
    return lora_config(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias=bias
    )


def load_adapter(model: DualEncoder, folder: str | Path) -> LoraHandle:
    """Attach an adapter saved by :meth:`LoraHandle.save_adapter` to ``model``."""
    from peft import LoraConfig, LoraModel
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise InputError(f"adapter file missing: {p}")
    cfg_dict = read_json_file(cfg_path, "adapter config")
    config = _lora_config(cfg_dict, cfg_path, LoraConfig)
    root = lora_root(model)
    peft_model = LoraModel(root, config, "default")
    handle = LoraHandle(model, peft_model, sorted(config.target_modules), config)
    state = {k.removeprefix("base_model."): v for k, v in load_file(str(w_path)).items()}
    expected = {k for k in handle.state_dict()}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise InputError(
            f"{w_path}: adapter does not fit this model (missing {missing}, unexpected {extra})"
        )
    handle.load_state_dict(state)
    return handle
