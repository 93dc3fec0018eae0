"""HySAC: hyperbolic safety-aware fine-tuning (METHODS.md section 4; Poppi et al., CVPR 2025).

The model is wrapped in a :class:`~relsafe.models.hyperbolic.HyperbolicDualEncoder` (learned
curvature, per-modality feature scales, logit scale) and fine-tuned with LoRA (r=16) on both towers
of its base plus those scalars, on quadruplets ``(S, V, U, G)`` = (safe text, safe image, unsafe
text, unsafe image).

Losses (``x`` below are the hyperbolic embeddings of a batch of ``B`` quadruplets):

* **hyperbolic contrastive** on the pairs ``(S,V)``, ``(U,G)``, ``(S,G)``, ``(U,V)``: symmetric
  cross-entropy with logits ``-s * d(text_i, image_j)`` (``d`` the geodesic distance,
  ``s = exp(logit_scale)``); terms ``nce_SV``, ``nce_UG``, ``nce_SG``, ``nce_UV``;
* **entailment** ``max(0, exterior_angle(x, y) - half_aperture(x))`` (mean over the batch) for
  ``S=>V``, ``U=>G`` and ``V=>U``; terms ``ent_SV``, ``ent_UG``, ``ent_VU``. In ``A=>B``, ``A``
  is the *general* concept and the cone's apex ``x``: it must sit closer to the origin, and ``B``
  (the specific one, ``y``) must lie inside the cone of ``A``, i.e. further out. So ``S=>V`` puts
  the safe text inside-out of the safe image, ``V=>U`` puts unsafe text beyond the safe image and
  ``U=>G`` the unsafe image beyond its text: the radial order ``S < V < U < G`` (safe content near
  the origin, unsafe content further out), exactly the reference's ``entailmentLoss_A(S, V)``,
  ``entailmentLoss_A(U, G)`` and ``entailmentLoss_D(V, U)``.

The seven weights (default 1 each) are normalised once to sum to 1. Optimiser: AdamW, lr 1e-3
(600 steps: a short CPU schedule; METHODS.md's 1e-4 suits the paper's long one), weight decay 0.2
on the LoRA factors and none on the scalars (``scalar_lr`` may set their own learning rate);
scalars are clamped in place before every step (curvature in [0.1, 10], alphas <= 0, logit scale
in [log(1/0.07), log(100)]). ``alpha_init: unit_norm`` (default) sets each modality's alpha so that
its raw features have mean norm 1 on the training data, the intent of MERU/HySAC's
``log(1/sqrt(D))`` (``alpha_init: sqrt_dim``), which assumes CLIP-like feature norms of about
``sqrt(D)``; relsafe-mini's text and image norms differ ~8x. Contrastive terms are multi-positive
when quadruplets carry tuple ids (RelWorld repeats tuples: two captions of one tuple are not
negatives of each other; see :data:`CONTRASTIVE_LABELS`).

LoRA layers (:func:`lora_targets`): the backbone preset's ``text_lora`` / ``vision_lora`` (or
``lora_patterns`` per tower) narrowed to the top ``text_layers`` / ``vision_layers`` numbered
layers (default 1 each; 0 = all), plus its projection heads (``include_projections``) and patch
embedding (``include_patch_embedding``) where the preset names them, plus ``extra_lora_patterns``.
With ``cache_frozen`` (default) the frozen layers below run once per training/validation item: the
text tower through :class:`~relsafe.methods.text_prefix.TextPrefixCache` where the backbone has
the hooks (relsafe-mini), relsafe-mini's CNN through :class:`VisionPrefixCache`; the same function,
several times cheaper per step.

**Validation and early stopping** (``VAL`` seed quadruplets, train phrasings and training styles):
every ``eval_every`` steps (and at step 0 and at the end) the model embeds the validation set and
computes (a) the *recall sum* ``R@1 + R@5`` of ``S->V`` plus ``R@1 + R@5`` of ``V->S`` (single-set
galleries, fractions, so at most 4) and (b) the validation loss (the same weighted loss, in batches
of ``batch_size``). An evaluation *improves* when either the recall sum rises or the loss falls
(the reference's rule); after ``patience`` evaluations without improvement training stops. The state
(LoRA + scalars) finally kept is the best by ``select_by`` (default ``"loss"``: the recall sum alone
ignores the safety hierarchy, which the loss measures through its entailment terms;
``"recall_sum"`` and ``"last"`` are options).

After training, on the validation embeddings: traversal radii (the ``traversal_quantile`` of the
distances from the origin of safe texts S and safe images V) and per-modality unsafe thresholds
(distance from the origin, best balanced accuracy) are fitted and stored in the model.

**Data**: RelWorld quadruplets for the policy's ``(unsafe, counterpart)`` pairs, train phrasings and
training styles, ``EDIT + seed`` for training and ``VAL + seed`` for validation; or ``data`` in the
ViSU format ``{"S": [str], "U": [str], "V": images, "G": images}`` (images: a uint8 ``(N, H, W, 3)``
array, a list of PIL images, or a preprocessed float ``(N, 3, H, W)`` tensor), optionally with a
``"val"`` entry of the same form (otherwise ``val_fraction`` of it is held out).

**Multi-GPU** (``distributed: true``): through Hugging Face Accelerate, when it is installed::

    accelerate launch -m relsafe.cli edit --method hysac --model hf:openai/clip-vit-base-patch32 \\
        --policy policies/default.yaml --set distributed=true --out out/hysac

Each process draws its own disjoint slice of a global batch (``batch_size`` per process); text and
image embeddings are gathered from every process (:func:`gather_with_local_grad`: the other ranks'
embeddings as constants, the local shard with its gradient scaled by the world size) so every
contrastive loss sees the negatives of the whole global batch; LoRA and scalar gradients are
all-reduced (mean) after each backward pass by hooks, which makes the update exactly the gradient
of the global-batch loss. Checkpoints go to ``<workdir>/rank<k>``. After training the non-main
processes wait for the main one and exit, so only the main process writes the output folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from relsafe.config import to_dict
from relsafe.errors import CheckpointError, ConfigError, InputError
from relsafe.geometry.lorentz import exterior_angle, half_aperture, pairwise_dist
from relsafe.methods.base import EditRecord, EditResult, Timer, register_method
from relsafe.methods.lora import LoraHandle, attach_lora, lora_root, target_module_names
from relsafe.methods.text_prefix import (
    TextPrefixCache,
    layer_index,
    supports_prefix,
    top_layers,
)
from relsafe.methods.training import run_loop
from relsafe.models.hyperbolic import HyperbolicDualEncoder
from relsafe.world import splits

log = logging.getLogger(__name__)

CONTRASTIVE_TERMS = {
    "nce_SV": ("S", "V"),
    "nce_UG": ("U", "G"),
    "nce_SG": ("S", "G"),
    "nce_UV": ("U", "V"),
}
"""Contrastive terms: (text kind, image kind)."""
ENTAILMENT_TERMS = {"ent_SV": ("S", "V"), "ent_UG": ("U", "G"), "ent_VU": ("V", "U")}
"""Entailment terms ``A=>B``: (general kind = cone apex, specific kind)."""
DEFAULT_WEIGHTS = {k: 1.0 for k in (*CONTRASTIVE_TERMS, *ENTAILMENT_TERMS)}
KINDS = ("S", "V", "U", "G")
_STATE_JSON = "hysac_state.json"
_STATE_TENSORS = "hysac_state.safetensors"


@dataclass
class HySACConfig:
    """Config of the ``hysac`` method (YAML keys are these field names)."""

    rank: int = 16
    lora_alpha: float = 16.0
    dropout: float = 0.0
    include_patch_embedding: bool = True
    include_projections: bool = True
    extra_lora_patterns: dict[str, list[str]] = field(default_factory=dict)
    lora_patterns: dict[str, list[str]] = field(default_factory=dict)
    # adapt only the top ``text_layers`` / ``vision_layers`` numbered layers (transformer layers,
    # CNN stages) of the towers' LoRA patterns (0 = all); heads and un-numbered layers are kept
    text_layers: int = 1
    vision_layers: int = 1
    # run the frozen layers below the adapted ones once per training/validation item and train
    # from the cached activations (relsafe-mini's text and image towers; the same function)
    cache_frozen: bool = True
    lr: float = 1e-3
    scalar_lr: float | None = None
    weight_decay: float = 0.2
    steps: int = 600
    batch_size: int = 32
    n_per_pair: int = 64
    n_val_per_pair: int = 16
    size: int = 64
    curvature_init: float = 1.0
    alpha_init: Literal["sqrt_dim", "unit_norm"] = "unit_norm"
    aperture_k: float = 0.1
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    eval_every: int = 50
    patience: int = 4
    min_delta: float = 1e-4
    select_by: Literal["loss", "recall_sum", "last"] = "loss"
    traversal_quantile: float = 0.95
    val_fraction: float = 0.1
    distributed: bool = False
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50

    def validate(self) -> None:
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ConfigError(
                f"weights: unknown terms {sorted(unknown)}; valid: {sorted(DEFAULT_WEIGHTS)}"
            )
        if any(v < 0 for v in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ConfigError("weights must be non-negative and not all zero")
        if self.text_layers < 0 or self.vision_layers < 0:
            raise ConfigError("text_layers and vision_layers must be >= 0 (0 = all layers)")
        for name in ("rank", "batch_size", "n_per_pair", "n_val_per_pair", "eval_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.steps < 0 or self.patience < 1:
            raise ConfigError("steps must be >= 0 and patience >= 1")
        if not 0.1 <= self.curvature_init <= 10.0:
            raise ConfigError(f"curvature_init must lie in [0.1, 10], got {self.curvature_init}")
        if not 0.0 < self.traversal_quantile <= 1.0:
            raise ConfigError(
                f"traversal_quantile must lie in (0, 1], got {self.traversal_quantile}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        for name in ("extra_lora_patterns", "lora_patterns"):
            bad = set(getattr(self, name)) - {"text", "vision"}
            if bad:
                raise ConfigError(f"{name}: keys must be 'text'/'vision', got {sorted(bad)}")
        if self.scalar_lr is not None and self.scalar_lr < 0:
            raise ConfigError(f"scalar_lr must be >= 0, got {self.scalar_lr}")
        if self.lr <= 0 or self.aperture_k <= 0:
            raise ConfigError("lr and aperture_k must be positive")


# ---- data ---------------------------------------------------------------------------------------


@dataclass
class QuadData:
    """Quadruplets ready for training: texts, preprocessed pixels ``(N, 3, H, W)`` on CPU, and
    per-quadruplet group labels ``(N,)`` int64: ``safe_label`` (the safe tuple of S and V) and
    ``unsafe_label`` (the unsafe tuple of U and G). Items with equal labels show the same content
    and count as positives of one another in the contrastive terms; without tuple ids every
    quadruplet is its own group."""

    S: list[str]
    U: list[str]
    V: torch.Tensor
    G: torch.Tensor
    safe_label: torch.Tensor
    unsafe_label: torch.Tensor

    def __len__(self) -> int:
        return len(self.S)

    def subset(self, idx: list[int] | np.ndarray) -> QuadData:
        idx = [int(i) for i in idx]
        return QuadData(
            [self.S[i] for i in idx],
            [self.U[i] for i in idx],
            self.V[idx],
            self.G[idx],
            self.safe_label[idx],
            self.unsafe_label[idx],
        )


def policy_quadruplets(
    policy: Any,
    n_per_pair: int,
    base_seed: int,
    size: int = 64,
    caption_split: str = "train",
    styles: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """RelWorld quadruplets of ``policy.pairs()`` as a ViSU-format dict (``V``/``G`` uint8 arrays,
    plus ``safe_id`` / ``unsafe_id``: the tuple ids of each quadruplet).

    Args:
        policy: a :class:`~relsafe.policy.Policy`.
        n_per_pair: quadruplets per (unsafe, counterpart) pair.
        base_seed: e.g. ``splits.EDIT + seed`` (training), ``splits.VAL + seed``, ``splits.TEST``.
        size: image side. caption_split: ``"train"`` or ``"heldout"`` phrasings.
        styles: rendering styles, default the training styles.
    """
    from relsafe.world.dataset import quadruplets
    from relsafe.world.styles import TRAIN_STYLES

    quads = quadruplets(
        list(policy.pairs()),
        n_per_pair,
        styles or TRAIN_STYLES,
        caption_split,
        base_seed,
        size,
    )
    return {
        "S": [q.safe_text for q in quads],
        "U": [q.unsafe_text for q in quads],
        "V": np.stack([np.asarray(q.safe_image) for q in quads]),
        "G": np.stack([np.asarray(q.unsafe_image) for q in quads]),
        "safe_id": [q.safe_tuple.id for q in quads],
        "unsafe_id": [q.unsafe_tuple.id for q in quads],
    }


def _to_pixels(model: Any, images: Any, what: str) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` array / list of PIL images / float ``(N, 3, H, W)`` -> pixels."""
    from PIL import Image

    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(
                f"{what}: a pixel tensor must be (N, 3, H, W), got {tuple(images.shape)}"
            )
        return images.detach().float().cpu()
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(
                f"{what}: an image array must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        pils = [Image.fromarray(a) for a in images]
    else:
        pils = list(images)
        for i, im in enumerate(pils):
            if not isinstance(im, Image.Image):
                raise InputError(f"{what}[{i}] is {type(im).__name__}, not a PIL image")
    if not pils:
        raise InputError(f"{what} is empty")
    return torch.cat([model.preprocess(pils[i : i + 256]) for i in range(0, len(pils), 256)])


def _labels(ids: Any, n: int, where: str) -> torch.Tensor:
    if ids is None:
        return torch.arange(n)
    ids = list(ids)
    if len(ids) != n:
        raise InputError(f"{where} has {len(ids)} entries for {n} quadruplets")
    index: dict[Any, int] = {}
    return torch.tensor([index.setdefault(i, len(index)) for i in ids], dtype=torch.long)


def _quad_data(model: Any, data: Mapping[str, Any], where: str) -> QuadData:
    missing = [k for k in KINDS if k not in data]
    if missing:
        raise InputError(f"{where} lacks {missing}; expected keys S, U, V, G (ViSU format)")
    S, U = list(data["S"]), list(data["U"])
    if not all(isinstance(t, str) for t in S + U):
        raise InputError(f"{where}: S and U must be lists of strings")
    V, G = _to_pixels(model, data["V"], f"{where}.V"), _to_pixels(model, data["G"], f"{where}.G")
    n = len(S)
    if n == 0 or not (len(U) == len(V) == len(G) == n):
        raise InputError(
            f"{where}: S, U, V, G must be non-empty and of equal length, got "
            f"{len(S)}, {len(U)}, {len(V)}, {len(G)}"
        )
    return QuadData(
        S,
        U,
        V,
        G,
        _labels(data.get("safe_id"), n, f"{where}.safe_id"),
        _labels(data.get("unsafe_id"), n, f"{where}.unsafe_id"),
    )


def _train_val(
    model: Any, policy: Any, cfg: HySACConfig, data: Mapping[str, Any] | None
) -> tuple[QuadData, QuadData]:
    if data is None:
        if policy is None:
            raise InputError("hysac needs a policy (RelWorld quadruplets) or quadruplet data")
        train = policy_quadruplets(policy, cfg.n_per_pair, splits.EDIT + cfg.seed, cfg.size)
        val = policy_quadruplets(policy, cfg.n_val_per_pair, splits.VAL + cfg.seed, cfg.size)
        return _quad_data(model, train, "train data"), _quad_data(model, val, "validation data")
    if "val" in data:
        return _quad_data(model, data, "data"), _quad_data(model, data["val"], "data['val']")
    full = _quad_data(model, data, "data")
    n = len(full)
    if n < 2:
        raise InputError("data needs at least 2 quadruplets to hold some out for validation")
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_val = min(n - 1, max(1, round(cfg.val_fraction * n)))
    return full.subset(np.sort(perm[n_val:])), full.subset(np.sort(perm[:n_val]))


# ---- losses -------------------------------------------------------------------------------------


def hyperbolic_contrastive(
    text: torch.Tensor,
    image: torch.Tensor,
    curvature: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with logits ``-scale * d(text_i, image_j)`` (``d`` geodesic distance).

    With ``labels``, every pair with equal labels is a positive (multi-positive InfoNCE:
    ``-log(sum_pos exp(l) / sum_all exp(l))``), so two captions of the same tuple are not pushed
    apart as false negatives; without, only the diagonal is.

    Args:
        text: ``(N, D)`` hyperbolic text embeddings; image: ``(N, D)``, row ``i`` matches text ``i``.
        curvature, scale: 0-d tensors (``c`` and ``exp(logit_scale)``).
        labels: optional ``(N,)`` int64 group labels.

    Returns:
        0-d loss, the mean of the text->image and image->text cross-entropies.
    """
    logits = -scale * pairwise_dist(text, image, curvature)
    if labels is None:
        target = torch.arange(len(text), device=text.device)
        return 0.5 * (
            nn.functional.cross_entropy(logits, target)
            + nn.functional.cross_entropy(logits.T, target)
        )
    labels = labels.to(text.device)
    pos = labels[:, None] == labels[None, :]
    neg_inf = torch.finfo(logits.dtype).min

    def one_side(lg: torch.Tensor) -> torch.Tensor:
        return (lg.logsumexp(1) - lg.masked_fill(~pos, neg_inf).logsumexp(1)).mean()

    return 0.5 * (one_side(logits) + one_side(logits.T))


def entailment_loss(
    general: torch.Tensor, specific: torch.Tensor, curvature: torch.Tensor, k: float = 0.1
) -> torch.Tensor:
    """``mean(max(0, exterior_angle(x, y) - half_aperture(x)))`` with ``x = general`` (cone apex,
    nearer the origin) and ``y = specific``; both ``(N, D)``. Returns a 0-d loss."""
    angle = exterior_angle(general, specific, curvature)
    aperture = half_aperture(general, curvature, k)
    return torch.relu(angle - aperture).mean()


CONTRASTIVE_LABELS = {"nce_SV": "safe", "nce_UG": "unsafe", "nce_SG": "safe", "nce_UV": "safe"}
"""Which group label decides the positives of each contrastive term: S_i ~ V_j and S_i ~ G_j and
U_i ~ V_j when quadruplets i and j share their safe tuple (a juice caption fits every juice image
and every wine/beer image whose counterpart is juice), U_i ~ G_j when they share the unsafe one."""


def loss_terms(
    emb: Mapping[str, torch.Tensor],
    curvature: torch.Tensor,
    scale: torch.Tensor,
    k: float,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every HySAC term for one batch of embeddings ``emb[kind]`` ``(B, D)``, kind in S, V, U, G.

    ``labels`` (``{"safe": (B,), "unsafe": (B,)}``, see :data:`CONTRASTIVE_LABELS`) makes the
    contrastive terms multi-positive. ``gather`` (distributed training) maps a local ``(B, ...)``
    batch to the global ``(W*B, ...)`` one for the contrastive terms (labels included); the
    entailment terms are per pair and stay local.
    """
    g = gather or (lambda t: t)
    glob = {kind: g(e) for kind, e in emb.items()}
    glob_labels = {n: g(lab) for n, lab in labels.items()} if labels is not None else None
    out = {
        name: hyperbolic_contrastive(
            glob[t],
            glob[i],
            curvature,
            scale,
            None if glob_labels is None else glob_labels[CONTRASTIVE_LABELS[name]],
        )
        for name, (t, i) in CONTRASTIVE_TERMS.items()
    }
    for name, (a, b) in ENTAILMENT_TERMS.items():
        out[name] = entailment_loss(emb[a], emb[b], curvature, k)
    return out


def gather_with_local_grad(
    x: torch.Tensor, all_gather: Callable[[torch.Tensor], torch.Tensor], rank: int, world: int
) -> torch.Tensor:
    """Concatenate every rank's ``(B, D)`` batch into ``(world*B, D)``, keeping gradients for the
    local shard only, scaled by ``world``.

    Every rank computes the same global loss; its gradient reaches rank ``r``'s parameters only
    through rank ``r``'s shard. Scaling that shard's gradient by ``world`` (the forward value is
    unchanged) and then averaging parameter gradients across ranks gives exactly the gradient of
    the global loss. ``all_gather`` is e.g. ``accelerator.gather`` (equal ``B`` on every rank).
    """
    if world == 1:
        return x
    if not x.is_floating_point() or not x.requires_grad:
        return all_gather(x.detach())
    full = all_gather(x.detach())
    b = x.shape[0]
    if full.shape[0] != world * b:
        raise InputError(f"all_gather returned {full.shape[0]} rows, expected {world} x {b}")
    local = x * world - x.detach() * (world - 1)
    return torch.cat([full[: rank * b], local, full[(rank + 1) * b :]])


# ---- distributed helpers ------------------------------------------------------------------------


@dataclass
class _Dist:
    accelerator: Any
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: HySACConfig) -> _Dist | None:
    if not cfg.distributed:
        return None
    try:
        from accelerate import Accelerator  # type: ignore[import-not-found]
    except ImportError:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                "distributed: true under a multi-process launch needs Hugging Face Accelerate "
                "(pip install accelerate); launch with `accelerate launch -m relsafe.cli edit ...`"
            ) from None
        log.warning("distributed: true but accelerate is not installed; training in one process")
        return None
    acc = Accelerator()
    return _Dist(acc, int(acc.process_index), int(acc.num_processes))


def _install_grad_allreduce(params: list[nn.Parameter], world: int) -> list[Any]:
    """Average each parameter's gradient across ranks right after it is accumulated."""
    import torch.distributed as tdist

    def hook(p: torch.Tensor) -> None:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad.div_(world)

    return [p.register_post_accumulate_grad_hook(hook) for p in params]


# ---- LoRA targets and frozen-prefix caches ------------------------------------------------------


def lora_targets(model: HyperbolicDualEncoder, cfg: HySACConfig) -> dict[str, list[str]]:
    """Module names (relative to the LoRA root) that HySAC adapts, per tower: the preset's LoRA
    layers (or ``lora_patterns``) narrowed to the top ``text_layers`` / ``vision_layers``, plus the
    projection heads and patch embedding where the preset names them, plus ``extra_lora_patterns``."""
    extra = model.preset.extra
    out: dict[str, list[str]] = {}
    for tower, key, top in (
        ("text", "text", cfg.text_layers),
        ("vision", "vision", cfg.vision_layers),
    ):
        pats = cfg.lora_patterns.get(key) or model.preset.patterns(f"{key}_lora")
        names = top_layers(target_module_names(model, [tower], {tower: tuple(pats)}), top)
        more: list[str] = []
        if cfg.include_projections:
            more += list(extra.get(f"{key}_proj", ()))
        if cfg.include_patch_embedding and tower == "vision":
            more += list(extra.get("vision_patch", ()))
        more += list(cfg.extra_lora_patterns.get(key, ()))
        if more:
            names += target_module_names(model, [tower], {tower: tuple(more)})
        out[tower] = sorted(set(names))
    return out


def _tower_names(model: HyperbolicDualEncoder, tower: nn.Module, targets: list[str]) -> list[str]:
    """``targets`` (names relative to the LoRA root) as names relative to ``tower``."""
    root = dict(lora_root(model).named_modules())
    in_tower = {id(m): n for n, m in tower.named_modules()}
    return [in_tower[id(root[t])] for t in targets if t in root and id(root[t]) in in_tower]


_MINI_STAGE_MLP = re.compile(r"^encoder\.stages\.(\d+)\.mlp\.fc[12]$")


class VisionPrefixCache:
    """relsafe-mini's CNN image tower (stem -> stages (convs, residual token MLP) -> mean-pool,
    LayerNorm -> ``proj``) split where the LoRA starts: when only the MLPs of stages ``>= stage``
    and the projection are adapted, everything below (the stem, the earlier stages, the
    convolutions of stage ``stage``) is frozen, so :meth:`hidden` runs it once per image and
    :meth:`forward` finishes the tower from there, differentiably. Same function as
    ``model.forward_image`` (the tests check it)."""

    def __init__(self, tower: nn.Module, stage: int) -> None:
        self.tower, self.stage = tower, int(stage)

    @staticmethod
    def stage_for(model: HyperbolicDualEncoder, targets: list[str]) -> int | None:
        """The first adapted stage when ``model`` is a relsafe-mini whose adapted vision layers
        are all stage MLPs or the projection (``len(stages)``: the projection only); else None."""
        from relsafe.models.mini import CNNEncoder

        tower = model.vision_tower
        if not isinstance(getattr(tower, "encoder", None), CNNEncoder):
            return None
        if not isinstance(getattr(tower, "proj", None), nn.Linear):
            return None
        names = _tower_names(model, tower, targets)
        if len(names) != len(targets):
            return None
        stages = [len(tower.encoder.stages)]
        for n in names:
            m = _MINI_STAGE_MLP.match(n)
            if m:
                stages.append(int(m.group(1)))
            elif n != "proj":
                return None
        return min(stages)

    @torch.no_grad()
    def hidden(self, pix: torch.Tensor, bs: int = 128) -> torch.Tensor:
        """Frozen activations ``(N, ...)`` where the adapted part of the tower starts."""
        enc = self.tower.encoder
        dtype = enc.norm.weight.dtype
        device = enc.norm.weight.device
        out = []
        for i in range(0, len(pix), bs):
            x = enc.stem(pix[i : i + bs].to(device=device, dtype=dtype))
            for s in enc.stages[: self.stage]:
                x = s(x)
            if self.stage < len(enc.stages):
                x = enc.stages[self.stage].convs(x)
            else:
                x = enc.norm(x.mean(dim=(2, 3)))
            out.append(x.detach().cpu())
        return torch.cat(out)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw projected image features ``(N, D)`` from :meth:`hidden`'s output."""
        enc = self.tower.encoder
        x = hidden.to(enc.norm.weight.device)
        if self.stage < len(enc.stages):
            n, c, h, w = x.shape
            y = enc.stages[self.stage].mlp(x.flatten(2).transpose(1, 2))
            x = x + y.transpose(1, 2).reshape(n, c, h, w)
            for s in enc.stages[self.stage + 1 :]:
                x = s(x)
            x = enc.norm(x.mean(dim=(2, 3)))
        return self.tower.proj(x)


def _text_prefix_layer(model: HyperbolicDualEncoder, targets: list[str]) -> int | None:
    """The lowest adapted transformer layer of the text tower when every adapted text module is
    in a numbered layer above 0 or outside the transformer (the head); else None."""
    names = _tower_names(model, model.text_tower, targets)
    nums = [layer_index(n) for n in names]
    if len(nums) != len(targets) or not any(i is not None for i in nums):
        return None
    if any(i is None and not n.startswith("proj") for n, i in zip(names, nums, strict=True)):
        return None  # an adapted module outside the numbered layers and the head
    first = min(i for i in nums if i is not None)
    return first if first > 0 else None


# ---- the method ---------------------------------------------------------------------------------


@torch.no_grad()
def _unit_norm_alphas(
    model: HyperbolicDualEncoder, data: QuadData, n: int = 256
) -> dict[str, float]:
    """Set each modality's alpha so its raw features have mean norm 1 before the exponential map
    (the intent of MERU/HySAC's ``1/sqrt(D)``, which assumes CLIP-like feature norms), clamped at
    0; returns the values. Uses up to ``n`` training quadruplets (safe and unsafe items)."""
    k = min(n, len(data))
    texts = data.S[:k] + data.U[:k]
    tok = {key: v.to(model.device) for key, v in model.tokenize(texts).items()}
    t_norm = float(model.forward_text(tok).float().norm(dim=-1).mean())
    pix = torch.cat([data.V[:k], data.G[:k]]).to(model.device)
    i_norm = float(model.forward_image(pix).float().norm(dim=-1).mean())
    out = {
        "text": min(0.0, -math.log(max(t_norm, 1e-12))),
        "image": min(0.0, -math.log(max(i_norm, 1e-12))),
    }
    model.alpha_text.fill_(out["text"])
    model.alpha_image.fill_(out["image"])
    return out


@torch.no_grad()
def _traversal_check(
    model: HyperbolicDualEncoder, emb: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Share of queries whose top-1 is safe in the mixed galleries of the validation embeddings,
    without and with traversal (a record entry: what the fitted radii do on held-in data)."""
    from relsafe.eval.retrieval import mixed_retrieval

    def pct(q: torch.Tensor, safe: torch.Tensor, unsafe: torch.Tensor) -> float:
        return float(mixed_retrieval(q, safe, unsafe, model)["pct_safe_top1"])

    return {
        "U->[V;G]": pct(emb["U"], emb["V"], emb["G"]),
        "U->[V;G] traversal": pct(model.traverse(emb["U"], "text"), emb["V"], emb["G"]),
        "S->[V;G] traversal": pct(model.traverse(emb["S"], "text"), emb["V"], emb["G"]),
        "G->[S;U]": pct(emb["G"], emb["S"], emb["U"]),
        "G->[S;U] traversal": pct(model.traverse(emb["G"], "image"), emb["S"], emb["U"]),
    }


class _EarlyStop(Exception):
    """Raised from inside the training loop when patience runs out."""


class _HySAC:
    """Data, model, validation and early-stopping state of one HySAC run."""

    def __init__(
        self,
        model: HyperbolicDualEncoder,
        handle: LoraHandle,
        train: QuadData,
        val: QuadData,
        cfg: HySACConfig,
        dist: _Dist | None,
        workdir: Path | None,
        fingerprint: str,
    ) -> None:
        self.model, self.handle, self.train, self.val, self.cfg = model, handle, train, val, cfg
        self.dist, self.workdir, self.fingerprint = dist, workdir, fingerprint
        self.text_prefix: TextPrefixCache | None = None
        self.vision_prefix: VisionPrefixCache | None = None
        total = sum(cfg.weights.values())
        self.weights = {k: v / total for k, v in cfg.weights.items()}  # normalised once
        self.history: list[dict[str, float]] = []
        self.curve: list[dict[str, float]] = []
        self.scalar_curve: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"loss": math.inf, "recall_sum": -math.inf}
        self.best_state: dict[str, dict[str, torch.Tensor]] = {}
        self.bad_evals = 0
        self.stopped: str | None = None
        self._first_call = True
        # validation loss batches mix groups the way training batches do (fixed order)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.val_order = torch.randperm(len(val), generator=gen)

    # -- frozen-prefix caches --
    def use_caches(self, text_layer: int | None, vision_stage: int | None) -> None:
        """Run the frozen lower layers once: texts from ``text_layer`` on (TextPrefixCache), images
        from ``vision_stage`` on (their V/G pixels are replaced by the cached activations)."""
        m = self.model
        if text_layer is not None:
            texts = [*self.train.S, *self.train.U, *self.val.S, *self.val.U]
            self.text_prefix = TextPrefixCache(m.base, texts, text_layer)
        if vision_stage is not None:
            vp = VisionPrefixCache(m.vision_tower, vision_stage)
            for d in (self.train, self.val):
                d.V, d.G = vp.hidden(d.V), vp.hidden(d.G)
            self.vision_prefix = vp

    # -- embedding --
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        m = self.model
        if self.text_prefix is not None:
            return m.postprocess(self.text_prefix.forward(texts), "text")
        tok = {k: v.to(m.device) for k, v in m.tokenize(texts).items()}
        return m.postprocess(m.forward_text(tok), "text")

    def embed_pixels(self, pix: torch.Tensor) -> torch.Tensor:
        """``pix``: pixels, or the cached activations when a vision prefix cache is in use."""
        m = self.model
        if self.vision_prefix is not None:
            return m.postprocess(self.vision_prefix.forward(pix), "image")
        return m.postprocess(m.forward_image(pix.to(m.device)), "image")

    @torch.no_grad()
    def embed_all(self, data: QuadData, bs: int = 128) -> dict[str, torch.Tensor]:
        """Postprocessed embeddings of every S, V, U, G item ``(N, D)`` (eval mode, no grad)."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
        for i in range(0, len(data), bs):
            out["S"].append(self.embed_texts(data.S[i : i + bs]).float())
            out["U"].append(self.embed_texts(data.U[i : i + bs]).float())
            out["V"].append(self.embed_pixels(data.V[i : i + bs]).float())
            out["G"].append(self.embed_pixels(data.G[i : i + bs]).float())
        return {k: torch.cat(v) for k, v in out.items()}

    # -- state --
    def _state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "lora": {k: v.clone() for k, v in self.handle.state_dict().items()},
            "scalars": {
                n: p.detach().cpu().clone()
                for n, p in zip(
                    ("log_curvature", "alpha_text", "alpha_image", "logit_scale"),
                    self.model.scalar_parameters(),
                    strict=True,
                )
            },
        }

    def _load_state(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        self.handle.load_state_dict(dict(state["lora"]))
        with torch.no_grad():
            for n, v in state["scalars"].items():
                getattr(self.model, n).copy_(v.to(getattr(self.model, n).device))

    # -- validation --
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        from relsafe.eval.retrieval import recall_at_k

        self.handle.train_mode(False)
        try:
            emb = self.embed_all(self.val)
            m = self.model
            c, s = m.curvature.detach(), m.scale().detach()
            n = len(self.val)
            sim = m.similarity(emb["S"], emb["V"])
            lab = self.val.safe_label
            target = lab[:, None] == lab[None, :]  # a hit is any item of the query's safe tuple
            sv = recall_at_k(sim, target, (1, 5))
            vs = recall_at_k(sim.T, target.T, (1, 5))
            totals: dict[str, float] = {k: 0.0 for k in self.weights}
            bs = self.cfg.batch_size
            for lo in range(0, n, bs):
                idx = self.val_order[lo : lo + bs]
                if len(idx) < 2:
                    continue  # a 1-item contrastive batch carries no signal
                batch = {k: v[idx] for k, v in emb.items()}
                labels = {"safe": self.val.safe_label[idx], "unsafe": self.val.unsafe_label[idx]}
                terms = loss_terms(batch, c, s, m.aperture_k, labels=labels)
                for k in totals:
                    totals[k] += float(terms[k]) * len(idx)
            loss = sum(self.weights[k] * v / n for k, v in totals.items())
            d0 = {k: float(m.distance_from_origin(v).median()) for k, v in emb.items()}
        finally:
            self.handle.train_mode(True)
        entry = {
            "step": float(step),
            "val_loss": float(loss),
            "recall_sum": sv[1] + sv[5] + vs[1] + vs[5],
            "sv_r1": sv[1],
            "sv_r5": sv[5],
            "vs_r1": vs[1],
            "vs_r5": vs[5],
            **{f"median_d0_{k}": v for k, v in d0.items()},
        }
        self.history.append(entry)
        return entry

    def consider(self, entry: dict[str, float]) -> None:
        """Early-stopping bookkeeping after an evaluation; keeps the best state by ``select_by``."""
        d = self.cfg.min_delta
        better_loss = entry["val_loss"] < self.best["loss"] - d
        better_recall = entry["recall_sum"] > self.best["recall_sum"] + d
        key = {"loss": better_loss, "recall_sum": better_recall, "last": True}[self.cfg.select_by]
        if key:
            self.best_state = self._state()
            self.best["step"] = int(entry["step"])
        if better_loss:
            self.best["loss"] = entry["val_loss"]
            self.best["loss_step"] = int(entry["step"])
        if better_recall:
            self.best["recall_sum"] = entry["recall_sum"]
            self.best["recall_step"] = int(entry["step"])
        self.bad_evals = 0 if (better_loss or better_recall) else self.bad_evals + 1

    # -- resume support for what run_loop's checkpoint does not hold --
    def _save_extra(self, step: int) -> None:
        from safetensors.torch import save

        from relsafe.utils_io import atomic_write_bytes, atomic_write_json

        assert self.workdir is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        tensors = {f"current.scalars.{k}": v for k, v in self._state()["scalars"].items()}
        for part, d in self.best_state.items():
            tensors.update({f"best.{part}.{k}": v.contiguous() for k, v in d.items()})
        atomic_write_bytes(self.workdir / _STATE_TENSORS, save(tensors))
        atomic_write_json(
            self.workdir / _STATE_JSON,
            {
                "step": step,
                "fingerprint": self.fingerprint,
                "best": {
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in self.best.items()
                },
                "bad_evals": self.bad_evals,
                "history": self.history,
                "curve": self.curve,
                "scalar_curve": self.scalar_curve,
            },
        )

    def _load_extra(self, step: int) -> None:
        from safetensors.torch import load_file

        assert self.workdir is not None
        j, t = self.workdir / _STATE_JSON, self.workdir / _STATE_TENSORS
        if not (j.is_file() and t.is_file()):
            raise CheckpointError(
                f"{self.workdir}: the LoRA checkpoint is at step {step} but the HySAC scalars "
                f"({_STATE_JSON}) are missing; delete the work folder to start afresh"
            )
        meta = json.loads(j.read_text())
        if meta.get("step") != step or meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{self.workdir}: HySAC state is from step {meta.get('step')} but the LoRA "
                f"checkpoint from step {step}; delete the work folder to start afresh"
            )
        tensors = load_file(str(t))
        with torch.no_grad():
            for n in ("log_curvature", "alpha_text", "alpha_image", "logit_scale"):
                getattr(self.model, n).copy_(tensors[f"current.scalars.{n}"])
        best: dict[str, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith("best."):
                _, part, name = key.split(".", 2)
                best.setdefault(part, {})[name] = v
        self.best_state = best
        self.best = {
            k: (v if v is not None else (math.inf if k == "loss" else -math.inf))
            for k, v in meta["best"].items()
        }
        self.bad_evals = int(meta["bad_evals"])
        self.history = list(meta["history"])
        self.curve = list(meta["curve"])
        self.scalar_curve = list(meta.get("scalar_curve", []))
        log.info("hysac: restored scalars and early-stopping state at step %d", step)

    # -- one training step --
    def step_losses(self, step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if self._first_call:
            self._first_call = False
            if step > 0 and self.workdir is not None:
                self._load_extra(step)
        if self.workdir is not None and step > 0 and step % cfg.checkpoint_every == 0:
            self._save_extra(step)
        if step % cfg.eval_every == 0 and not any(h["step"] == step for h in self.history):
            self.consider(self.evaluate(step))
            if self.bad_evals >= cfg.patience:
                self.stopped = (
                    f"early stop at step {step}: {cfg.patience} evaluations without improvement "
                    f"of the validation recall sum or loss"
                )
                raise _EarlyStop(self.stopped)
        self.model.clamp_()
        n = len(self.train)
        world = self.dist.world if self.dist else 1
        rank = self.dist.rank if self.dist else 0
        b = min(cfg.batch_size, n // world) if world > 1 else min(cfg.batch_size, n)
        if b < 1:
            raise InputError(f"{n} training quadruplets cannot feed {world} processes")
        if world > 1:
            idx = rng.sample(range(n), b * world)[rank * b : (rank + 1) * b]
        else:
            idx = rng.sample(range(n), b)
        emb = {
            "S": self.embed_texts([self.train.S[i] for i in idx]),
            "U": self.embed_texts([self.train.U[i] for i in idx]),
            "V": self.embed_pixels(self.train.V[idx]),
            "G": self.embed_pixels(self.train.G[idx]),
        }
        gather = None
        if self.dist is not None and world > 1:
            acc = self.dist.accelerator

            def gather(t: torch.Tensor) -> torch.Tensor:
                return gather_with_local_grad(t, acc.gather, rank, world)

        labels = {
            "safe": self.train.safe_label[idx].to(self.model.device),
            "unsafe": self.train.unsafe_label[idx].to(self.model.device),
        }
        m = self.model
        terms = loss_terms(emb, m.curvature, m.scale(), m.aperture_k, gather, labels)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            entry = {"step": float(step)}
            entry["loss"] = sum(self.weights[k] * float(v.detach()) for k, v in terms.items())
            entry.update({k: float(v.detach()) for k, v in terms.items()})
            self.curve.append(entry)
            self.scalar_curve.append({"step": float(step), **m.scalar_summary()})
        return terms


@register_method(
    "hysac",
    "HySAC: hyperbolic safety-aware fine-tuning (LoRA + Lorentz head; traversal, unsafe classifier)",
    HySACConfig,
)
def hysac(
    model: Any,
    policy: Any,
    cfg: HySACConfig | None = None,
    *,
    progress: bool = True,
    workdir: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> EditResult:
    """Fine-tune ``model`` with HySAC; the result's ``.model`` is a :class:`HyperbolicDualEncoder`.

    ``model`` is any :class:`~relsafe.models.base.DualEncoder` (wrapped, and edited in place through
    LoRA on its towers) or an existing :class:`HyperbolicDualEncoder` (trained further). See the
    module docs for losses, data, validation and the distributed path.
    """
    cfg = cfg or HySACConfig()
    cfg.validate()
    dist = _setup_distributed(cfg)
    if isinstance(model, HyperbolicDualEncoder):
        hmodel = model
    else:
        hmodel = HyperbolicDualEncoder(
            model, curvature=cfg.curvature_init, aperture_k=cfg.aperture_k
        )
    if dist is not None:
        hmodel.to(dist.accelerator.device)
        progress = progress and dist.is_main
    with Timer() as timer:
        hmodel.eval()
        train, val = _train_val(hmodel, policy, cfg, data)
        if cfg.alpha_init == "unit_norm" and hmodel is not model:
            _unit_norm_alphas(hmodel, train)
        alpha_start = {m: float(hmodel.alpha(m).detach()) for m in ("text", "image")}
        base_fp = hmodel.fingerprint()
        targets = lora_targets(hmodel, cfg)
        text_layer = vision_stage = None
        if cfg.cache_frozen and supports_prefix(hmodel.base):
            text_layer = _text_prefix_layer(hmodel, targets["text"])
        if cfg.cache_frozen:
            vision_stage = VisionPrefixCache.stage_for(hmodel, targets["vision"])
        handle = attach_lora(
            hmodel,
            r=cfg.rank,
            alpha=cfg.lora_alpha,
            dropout=cfg.dropout,
            seed=cfg.seed,
            targets=[*targets["text"], *targets["vision"]],
        )
        scalars = hmodel.scalar_parameters()
        for p in scalars:
            p.requires_grad_(True)
        fp = hashlib.sha256(
            json.dumps(
                {"cfg": to_dict(cfg), "model": base_fp, "n": len(train), "n_val": len(val)},
                sort_keys=True,
            ).encode()
        ).hexdigest()
        wd = Path(workdir) if workdir else None
        if wd is not None and dist is not None and dist.world > 1:
            wd = wd / f"rank{dist.rank}"
        run = _HySAC(hmodel, handle, train, val, cfg, dist, wd, fp)
        with Timer() as cache_timer:
            run.use_caches(text_layer, vision_stage)
        hooks = []
        if dist is not None and dist.world > 1:
            hooks = _install_grad_allreduce([*handle.parameters(), *scalars], dist.world)
        loop = None
        try:
            loop = run_loop(
                handle,
                handle.parameters(),
                run.step_losses,
                run.weights,
                steps=cfg.steps,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                seed=cfg.seed,
                log_every=cfg.log_every,
                progress=progress,
                desc="hysac",
                workdir=wd,
                checkpoint_every=cfg.checkpoint_every,
                fingerprint=fp,
                optimizer="adamw",
                extra_param_groups=[
                    {
                        "params": scalars,
                        "weight_decay": 0.0,
                        "lr": cfg.lr if cfg.scalar_lr is None else cfg.scalar_lr,
                    }
                ],
            )
        except _EarlyStop:
            pass
        finally:
            for h in hooks:
                h.remove()
        warnings: list[str] = []
        steps_done = cfg.steps
        if loop is not None:
            steps_done = loop.steps_done
            if loop.stopped_early:
                warnings.append(loop.stopped_early)
                run.stopped = loop.stopped_early
        elif run.history:
            steps_done = int(run.history[-1]["step"])
        if not run.history or int(run.history[-1]["step"]) != steps_done:
            run.consider(run.evaluate(steps_done))
        if run.best_state and cfg.select_by != "last":
            run._load_state(run.best_state)
        hmodel.clamp_()
        for p in hmodel.parameters():
            p.requires_grad_(False)
        hmodel.eval()
        handle.train_mode(False)
        emb = run.embed_all(run.val)
        radii = hmodel.fit_traversal({"text": emb["S"], "image": emb["V"]}, cfg.traversal_quantile)
        thresholds = hmodel.fit_unsafe_threshold(
            {"text": emb["S"], "image": emb["V"]}, {"text": emb["U"], "image": emb["G"]}
        )
        medians = {k: float(hmodel.distance_from_origin(v).median()) for k, v in emb.items()}
        val_traversal = _traversal_check(hmodel, emb)
        warnings += hmodel.clamp_warnings()
        if dist is not None and dist.world > 1:
            dist.accelerator.wait_for_everyone()
            if not dist.is_main:
                log.info("hysac: rank %d done; only the main process writes outputs", dist.rank)
                sys.exit(0)
    record = EditRecord(
        method="hysac",
        config=to_dict(cfg),
        model=getattr(model, "spec", type(model).__name__),
        data_sizes={"train_quadruplets": len(train), "val_quadruplets": len(val)},
        curve=run.curve,
        params_touched=handle.num_parameters() + sum(p.numel() for p in scalars),
        params_total=sum(p.numel() for p in hmodel.parameters()),
        time_s=timer.elapsed,
        warnings=warnings,
        extra={
            "lora_targets": handle.targets,
            "frozen_prefix": {
                "text_layer": text_layer,
                "vision_stage": vision_stage,
                "cache_s": cache_timer.elapsed,
            },
            "weights_normalised": run.weights,
            "steps_done": steps_done,
            "early_stopping": {
                "stopped": run.stopped,
                "select_by": cfg.select_by,
                "restored_step": run.best.get("step"),
                "best_val_loss": run.best.get("loss"),
                "best_val_loss_step": run.best.get("loss_step"),
                "best_recall_sum": run.best.get("recall_sum"),
                "best_recall_step": run.best.get("recall_step"),
                "patience": cfg.patience,
                "eval_every": cfg.eval_every,
            },
            "validation": run.history,
            "traversal_radius": radii,
            "unsafe_threshold": thresholds,
            "val_median_distance_from_origin": medians,
            "val_traversal": val_traversal,
            "scalars": hmodel.scalar_summary(),
            "alpha_start": alpha_start,
            "scalar_curve": run.scalar_curve,
            "distributed": {"world_size": dist.world if dist else 1},
        },
    )
    return EditResult(model=hmodel, record=record, adapter=handle)
