"""Hugging Face ``CLIPModel`` as a relsafe :class:`DualEncoder`.

Loads from a hub id or a local folder. Nothing is downloaded unless the caller allows it: with
``local_files_only=True`` (the default whenever ``HF_HUB_OFFLINE`` is set, and always for folders)
a missing checkpoint is an error, never an implicit download.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from relsafe.errors import CheckpointError, InputError
from relsafe.models.base import DualEncoder, LayerPreset
from relsafe.models.registry import read_model_config, register_backbone


def _clip_tower_roles(prefix: str, patch_embed: bool) -> dict[str, tuple[str, ...]]:
    """Role -> globs of one CLIP transformer tower (``text_model`` or ``vision_model``)."""
    layer = f"{prefix}.encoder.layers.*"
    roles = {
        "attn_q": (f"{layer}.self_attn.q_proj",),
        "attn_k": (f"{layer}.self_attn.k_proj",),
        "attn_v": (f"{layer}.self_attn.v_proj",),
        "attn_out": (f"{layer}.self_attn.out_proj",),
        "mlp_in": (f"{layer}.mlp.fc1",),
        "mlp_out": (f"{layer}.mlp.fc2",),
    }
    if patch_embed:
        roles["patch_embed"] = (f"{prefix}.embeddings.patch_embedding",)
    return roles


CLIP_PRESET = LayerPreset(
    # Role ``proj`` (text_projection / visual_projection) is deliberately not named: the methods
    # that add the projection heads by default (HySAC's include_projections, relational-lora's
    # text_head) have never adapted CLIP's, and naming it would change the layers they edit.
    text=_clip_tower_roles("text_model", patch_embed=False),
    vision=_clip_tower_roles("vision_model", patch_embed=True),
)
"""HF CLIP's layers by role; names are relative to the towers (``text_model.encoder...``)."""


class _Tower(nn.Module):
    """Groups one modality's encoder and projection so methods see them as one module."""

    def __init__(self, model: nn.Module, projection: nn.Module, model_attr: str) -> None:
        super().__init__()
        # Register under the same attribute names CLIPModel uses, so module names in the tower
        # (``text_model.encoder.layers.0...``) match the checkpoint's parameter names.
        self.add_module(model_attr, model)
        self.add_module(f"{model_attr.split('_')[0]}_projection", projection)


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4.x and a ModelOutput in 5.x."""
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("pooler_output", "text_embeds", "image_embeds"):
        val = getattr(out, attr, None)
        if isinstance(val, torch.Tensor):
            return val
    raise TypeError(f"cannot find features in {type(out).__name__}")


_MAX_RESIZE_SIDE = 16
"""Beyond ``16 x image_size`` on its long side, an image is resized through its crop box only."""


def _elongated_crop(img: Any, size: int, nw: int, nh: int) -> Any:
    """Resize-then-centre-crop of a very elongated image (1 x 10^7 pixels would resize to
    gigabytes before the crop): crop the source to what the kept square needs, plus a filter
    margin, and resize only that (the same mapping up to a sub-pixel offset)."""
    from PIL import Image

    tall = nh > nw
    if not tall:
        img = img.transpose(Image.Transpose.TRANSPOSE)
        nw, nh = nh, nw
    w, h = img.size
    left, top = (nw - size) // 2, (nh - size) // 2
    sy = h / nh
    margin = 4 * max(1, math.ceil(sy))
    y0 = max(0, math.floor(top * sy) - margin)
    y1 = min(h, math.ceil((top + size) * sy) + margin)
    part = img.crop((0, y0, w, y1)).resize((nw, max(size, round((y1 - y0) / sy))), Image.BICUBIC)
    off = min(max(0, round((top * sy - y0) / sy)), part.size[1] - size)
    out = part.crop((left, off, left + size, off + size))
    return out if tall else out.transpose(Image.Transpose.TRANSPOSE)


class HFCLIPModel(DualEncoder):
    """A Hugging Face ``CLIPModel`` with its tokenizer and image processor."""

    preset = CLIP_PRESET

    def __init__(
        self,
        spec: str,
        model: nn.Module,
        tokenizer: Any,
        image_processor: Any,
        files: list[Path] | None = None,
    ) -> None:
        super().__init__(spec)
        self.model = model
        self._files = [Path(f) for f in files or []]
        self._tokenizer = tokenizer
        self.image_processor = image_processor
        self._text = _Tower(model.text_model, model.text_projection, "text_model")
        self._vision = _Tower(model.vision_model, model.visual_projection, "vision_model")
        cfg = model.config.vision_config
        self._image_size = int(cfg.image_size)
        mean = getattr(image_processor, "image_mean", None) or [0.48145466, 0.4578275, 0.40821073]
        std = getattr(image_processor, "image_std", None) or [0.26862954, 0.26130258, 0.27577711]
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    # The towers hold references to the same submodules as ``self.model``; keep them out of
    # ``state_dict``/``parameters`` duplication by not registering them as children.
    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_text", "_vision"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def text_tower(self) -> nn.Module:
        return self._text

    @property
    def vision_tower(self) -> nn.Module:
        return self._vision

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def image_size(self) -> int:
        return self._image_size

    def peft_root(self) -> nn.Module:
        """PEFT wraps the ``CLIPModel`` itself, so adapters load onto a plain ``CLIPModel``."""
        return self.model

    def contrastive_logit_scale(self) -> torch.Tensor:
        """CLIP's learned log temperature ``logit_scale`` (0-d, as stored)."""
        return self.model.logit_scale

    @property
    def logit_scale(self) -> torch.Tensor:
        """Same as :meth:`contrastive_logit_scale` (CLIPModel's attribute name)."""
        return self.model.logit_scale

    def checkpoint_files(self) -> list[Path]:
        """The files :func:`load_hf_clip` read (config, safetensors weights, tokenizer and image
        processor files); ``[]`` for a model built in memory."""
        return list(self._files)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        max_len = int(self.model.config.text_config.max_position_embeddings)
        enc = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Resize (shorter side, bicubic), centre-crop, scale to [0,1], normalise: CLIP's recipe.

        Done with PIL + numpy so it is identical whatever processor class transformers ships.
        """
        from PIL import Image

        size = self._image_size
        arrs = []
        for i, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise InputError(f"image #{i} is {type(img).__name__}, not a PIL image")
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            left, top = (nw - size) // 2, (nh - size) // 2
            if max(nw, nh) <= _MAX_RESIZE_SIDE * size:
                img = img.resize((nw, nh), Image.BICUBIC)
                img = img.crop((left, top, left + size, top + size))
            else:
                img = _elongated_crop(img, size, nw, nh)
            arrs.append(np.asarray(img, dtype=np.uint8))
        if not arrs:
            raise InputError("preprocess got no images")
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self._mean.cpu()) / self._std.cpu()

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return _features(self.model.get_text_features(**tokens))

    def forward_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.vision_model.parameters()).dtype
        return _features(self.model.get_image_features(pixel_values=pixel_values.to(dtype)))

    def save_pretrained(self, folder: str) -> None:
        folder_p = Path(folder)
        folder_p.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder_p, safe_serialization=True)
        self._tokenizer.save_pretrained(folder_p)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(folder_p)


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


_TOWER_DEFAULTS = {
    "text_config": {"hidden_size": 512, "num_attention_heads": 8},
    "vision_config": {"hidden_size": 768, "num_attention_heads": 12},
}
"""CLIPTextConfig / CLIPVisionConfig defaults the divisibility check falls back on."""

_TOWER_INTS = {
    "text_config": {
        "hidden_size": 1 << 14,
        "intermediate_size": 1 << 16,
        "num_hidden_layers": 256,
        "num_attention_heads": 1024,
        "vocab_size": 1 << 21,
        "max_position_embeddings": 1 << 16,
    },
    "vision_config": {
        "hidden_size": 1 << 14,
        "intermediate_size": 1 << 16,
        "num_hidden_layers": 256,
        "num_attention_heads": 1024,
        "image_size": 4096,
        "patch_size": 4096,
        "num_channels": 3,
    },
}
"""Integer fields of a CLIP config's towers and their upper bounds (beyond them: not a CLIP)."""


def _positive_int(value: Any, key: str, limit: int, cfg_path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise CheckpointError(
            f"{cfg_path}: {key} must be an integer in [1, {limit}], got {value!r}"
        )
    return value


def check_clip_config(cfg: dict[str, Any], cfg_path: Path) -> None:
    """Raise :class:`CheckpointError` naming the file and key unless the architecture fields of a
    CLIP ``config.json`` make a buildable model (positive, bounded sizes; hidden sizes divisible
    by the number of heads; patches no larger than the image)."""
    if "projection_dim" in cfg:
        _positive_int(cfg["projection_dim"], "projection_dim", 1 << 14, cfg_path)
    for tower, ints in _TOWER_INTS.items():
        sub = cfg.get(tower)
        if sub is None:
            sub = {}
        if not isinstance(sub, dict):
            raise CheckpointError(
                f"{cfg_path}: {tower} must be an object, got {type(sub).__name__}"
            )
        got = {**_TOWER_DEFAULTS[tower]}
        for key, limit in ints.items():
            if key in sub:
                got[key] = _positive_int(sub[key], f"{tower}.{key}", limit, cfg_path)
        hidden, heads = got["hidden_size"], got["num_attention_heads"]
        if hidden % heads:
            raise CheckpointError(
                f"{cfg_path}: {tower}.hidden_size={hidden} is not divisible by "
                f"{tower}.num_attention_heads={heads}"
            )
        if tower == "vision_config" and "image_size" in got and "patch_size" in got:
            if got["patch_size"] > got["image_size"]:
                raise CheckpointError(
                    f"{cfg_path}: vision_config.patch_size={got['patch_size']} is larger than "
                    f"vision_config.image_size={got['image_size']}"
                )


def check_clip_folder(folder: Path) -> None:
    """Raise :class:`CheckpointError` unless ``folder`` looks like a CLIP checkpoint."""
    if not folder.exists():
        raise CheckpointError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise CheckpointError(f"model path is not a folder: {folder}")
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    cfg = read_model_config(cfg_path, "CLIP config")
    if cfg.get("model_type") != "clip":
        raise CheckpointError(
            f"{cfg_path}: model_type is {cfg.get('model_type')!r}, not 'clip'; "
            "relsafe's HF backend loads CLIPModel checkpoints"
        )
    check_clip_config(cfg, cfg_path)
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        bins = list(folder.glob("*.bin"))
        hint = " (only pickle .bin weights found; relsafe loads safetensors only)" if bins else ""
        raise CheckpointError(f"{folder} has no .safetensors weights{hint}")


def load_hf_clip(
    name_or_path: str,
    *,
    local_files_only: bool | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    spec: str | None = None,
) -> HFCLIPModel:
    """Load a ``CLIPModel`` + tokenizer + image processor from a folder or hub id.

    Nothing downloads implicitly: ``local_files_only`` defaults to True (folders, and hub ids from
    the local Hugging Face cache). Pass ``local_files_only=False`` or set
    ``RELSAFE_ALLOW_DOWNLOAD=1`` (and leave ``HF_HUB_OFFLINE`` unset) to allow a download.
    ``attn_implementation`` defaults to ``"sdpa"`` on CUDA and ``"eager"``-compatible default
    elsewhere (transformers picks SDPA when available).
    """
    from safetensors import SafetensorError
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    try:  # what a config that fails transformers' own validation raises (huggingface_hub >= 1)
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # pragma: no cover - older huggingface_hub
        StrictDataclassError = ValueError  # noqa: N806

    path = Path(name_or_path).expanduser()
    is_folder = path.exists() or name_or_path.startswith((".", "/", "~"))
    if is_folder:
        check_clip_folder(path)
        local_files_only = True
        source: str = str(path)
    else:
        source = name_or_path
        if local_files_only is None:
            local_files_only = _is_offline() or os.environ.get("RELSAFE_ALLOW_DOWNLOAD", "0") != "1"
    kwargs: dict[str, Any] = {
        "local_files_only": local_files_only,
        "use_safetensors": True,
        "output_loading_info": True,
        # report shape mismatches by key (refused below) instead of transformers' bare error
        "ignore_mismatched_sizes": True,
    }
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = CLIPModel.from_pretrained(source, **kwargs)
        _check_loading_info(info, source)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        try:
            processor = AutoImageProcessor.from_pretrained(
                source, local_files_only=local_files_only
            )
        except (OSError, ValueError):
            processor = None  # our own preprocess() needs only mean/std, which default to CLIP's
    except CheckpointError:
        raise
    except OSError as e:
        where = "folder" if is_folder else "hub id"
        hint = (
            "" if is_folder else " (offline: nothing is downloaded unless local_files_only=False)"
        )
        raise CheckpointError(f"cannot load CLIP from {where} {source!r}{hint}: {e}") from e
    except (RuntimeError, ValueError, SafetensorError, StrictDataclassError) as e:
        raise CheckpointError(
            f"cannot load CLIP weights from {source!r} (corrupt or mismatched file?): {e}"
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    files = _checkpoint_files(path if is_folder else _hub_snapshot(source))
    return HFCLIPModel(spec or name_or_path, model.to(device), tokenizer, processor, files)


def _check_loading_info(info: dict[str, Any], source: str) -> None:
    """Refuse a checkpoint whose weights miss tensors the config asks for, or hold them with other
    shapes (transformers would fill those with random values), naming the first keys."""
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    if missing:
        raise CheckpointError(
            f"{source}: the weights lack {len(missing)} tensor(s) that config.json asks for, e.g. "
            f"{', '.join(missing[:3])}; refusing to fill them with random values"
        )
    bad = []
    for item in sorted(info.get("mismatched_keys") or (), key=str):
        if isinstance(item, tuple) and len(item) == 3:
            key, got, want = item
            bad.append(f"{key} is {tuple(got)} in the weights, config.json says {tuple(want)}")
        else:
            bad.append(str(item))
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) do not match config.json: {'; '.join(bad[:3])}"
        )


_READ_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
)
"""Files besides the weights that CLIPModel, its tokenizer and its image processor read."""


def _checkpoint_files(folder: Path | None) -> list[Path]:
    """The files of ``folder`` that loading a CLIP checkpoint reads: the safetensors weights
    (``model.safetensors``, or the index and every shard it names) and :data:`_READ_FILES`."""
    if folder is None or not folder.is_dir():
        return []
    index = folder / "model.safetensors.index.json"
    weights: list[Path] = []
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: malformed safetensors index ({e})") from e
        weights = [index, *(folder / s for s in shards)]
    elif (folder / "model.safetensors").is_file():
        weights = [folder / "model.safetensors"]
    return [*weights, *(folder / n for n in _READ_FILES if (folder / n).is_file())]


def _hub_snapshot(hub_id: str) -> Path | None:
    """The local snapshot folder of a hub id in the Hugging Face cache (nothing is downloaded),
    or None when it cannot be found."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - no snapshot: nothing to list, loading already worked
        return None


def _is_clip_folder(folder: Path, config: dict[str, Any]) -> bool:
    """Registry hook: a Hugging Face folder whose ``config.json`` says ``model_type: clip``."""
    del folder
    return config.get("model_type") == "clip"


@register_backbone(
    "hf",
    "Hugging Face CLIPModel from a hub id or local folder",
    "hf:openai/clip-vit-base-patch32",
    detect=_is_clip_folder,
)
def _load_hf(target: str | None, **kwargs: Any) -> HFCLIPModel:
    if not target:
        raise InputError(
            "spec 'hf:' needs a hub id or folder, e.g. hf:openai/clip-vit-base-patch32"
        )
    return load_hf_clip(target, **kwargs)
