"""Pair-level safety fine-tuning in the style of Safe-CLIP (METHODS.md section 2), a baseline.

LoRA on both towers over quadruplets (S, V, U, G) = (safe text, safe image, unsafe text, unsafe
image). With ``T``/``V`` the edited towers and ``T0``/``V0`` the frozen originals:

* cosine terms: ``T(S)~T0(S)`` 0.1, ``V(V)~V0(V)`` 0.1, ``T(U)~T0(S)`` 0.1, ``V(G)~V0(V)`` 0.2;
* contrastive terms (InfoNCE over the batch, logit scale fixed at 100, both directions):
  ``T(S)~V0(V)`` 0.25, ``T(U)~V0(V)`` 0.25, ``T0(S)~V(V)`` 0.25, ``T0(S)~V(G)`` 0.5; rows showing
  the same safe tuple are positives of each other (multi-positive InfoNCE: on RelWorld about a
  third of a batch shares a tuple, and treating those rows as negatives pushed identical content
  apart);
* the weights are normalised once to sum to 1.

Reference optimiser: Adam, lr 1e-3; LoRA r=16, alpha=1, dropout 0.1 on attention k/v/out
projections, MLP layers and the patch embedding. Unlike the reference code, the frozen
references are plain tensors computed before the adapter exists (they cannot drift), and every
step is one real optimiser step over one batch (no broken gradient accumulation).

Data: RelWorld quadruplets for the policy's (unsafe, counterpart) pairs from the ``edit``
caption split (never the evaluation-reserved canonical template or held-out material) and training
styles only, with the ``EDIT`` seed; or any list of quadruplets passed in (ViSU files).

Retain pool (issue 14, equal data budget; ``retain_pool: true``, off by default since VAL
chose off, and only when a policy is given): the policy's retain pool (:mod:`relsafe.data.retain_pool`, the same tuples, texts
and images relational-lora retains) joins as preservation rows, Safe-CLIP's "safe side is all of
COCO" at RelWorld's scale. Each step takes ``batch_size`` quadruplet rows plus ``pool_batch``
(default half as many) pool (text, image) pairs; the safe-side terms ``cos_S``, ``cos_V``,
``nce_S_V0`` and ``nce_S0_V`` run over both (rows of one tuple are positives across the two), the
unsafe-side terms over the quadruplets only. The pool's marginal texts (a word alone, no image)
join ``cos_S``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from relsafe.config import to_dict
from relsafe.data.edit_sets import SetSizes
from relsafe.data.images import to_pixels
from relsafe.data.quadruplets import build_quadruplets
from relsafe.data.retain_pool import RetainPool, pool_labels, retain_pool
from relsafe.distributed import current as current_dist
from relsafe.errors import ConfigError, InputError
from relsafe.methods.base import EditRecord, EditResult, Timer, register_method
from relsafe.methods.contrastive import symmetric_info_nce
from relsafe.methods.lora import attach_lora, lora_patterns
from relsafe.methods.relational_lora import _frozen_image, _frozen_text
from relsafe.methods.training import checkpoint_key, run_loop
from relsafe.world import splits

COSINE_WEIGHTS = {"cos_S": 0.1, "cos_V": 0.1, "cos_U": 0.1, "cos_G": 0.2}
CONTRASTIVE_WEIGHTS = {"nce_S_V0": 0.25, "nce_U_V0": 0.25, "nce_S0_V": 0.25, "nce_S0_G": 0.5}


@dataclass
class SafeClipConfig:
    rank: int = 16
    alpha: float = 1.0
    dropout: float = 0.1
    lr: float = 1e-3
    steps: int = 150
    batch_size: int = 32
    n_per_pair: int = 64
    logit_scale: float = 100.0
    include_patch_embedding: bool = True
    weights: dict[str, float] = field(
        default_factory=lambda: {**COSINE_WEIGHTS, **CONTRASTIVE_WEIGHTS}
    )
    size: int = 64
    retain_pool: bool = False  # VAL chose false (docs/benchmarks.md, issue 14 section)
    pool_batch: int = 16
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50

    def validate(self) -> None:
        unknown = set(self.weights) - set(COSINE_WEIGHTS) - set(CONTRASTIVE_WEIGHTS)
        if unknown:
            raise ConfigError(f"weights: unknown terms {sorted(unknown)}")
        from relsafe.validate import MAX_WEIGHT, check_number, check_training_fields

        w = "safeclip"
        check_training_fields(w, self)  # weights, rank, steps, batch, lr, alpha, dropout, ...
        if sum(self.weights.values()) <= 0:
            raise ConfigError("safeclip: weights must be non-negative and not all zero")
        check_number(w, "pool_batch", self.pool_batch, lo=1, hi=100_000, integer=True)
        check_number(w, "logit_scale", self.logit_scale, lo=0, hi=MAX_WEIGHT, lo_open=True)


def _info_nce(
    a: torch.Tensor, b: torch.Tensor, scale: float, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE between matching rows of ``a`` and ``b`` (both L2-normalised).

    ``groups (N,)``: rows with the same id show the same content (RelWorld quadruplets repeat
    each safe tuple many times per batch). Row ``i``'s positives are then every row of its group,
    not only ``i`` (multi-positive InfoNCE: ``-log sum_{j in P(i)} p_ij``), so two pictures of
    ``child|drinking|juice`` are never pushed apart as negatives. ``None``: every row is its own
    group (the standard loss; ViSU items are all distinct).
    """
    return symmetric_info_nce(scale * a @ b.T, groups)


def _group_ids(data: dict[str, Any], index: dict[str, int] | None = None) -> torch.Tensor | None:
    """Per record, an integer id of the safe tuple it shows (``safe_id``, first-seen order;
    ``index`` filled with id -> group), or None without ids."""
    ids = data.get("safe_id")
    if ids is None:
        return None
    index = {} if index is None else index
    return torch.tensor([index.setdefault(str(i), len(index)) for i in ids], dtype=torch.long)


def quadruplet_arrays(policy: Any, cfg: SafeClipConfig) -> dict[str, Any]:
    """S, V, U, G for the policy's pairs from RelWorld (``edit`` captions, training styles, EDIT
    seed): :func:`relsafe.data.quadruplets.build_quadruplets` in the ViSU array form, with the
    ``safe_id`` / ``unsafe_id`` of every record (the contrastive terms' positives)."""
    return build_quadruplets(
        policy, cfg.n_per_pair, splits.EDIT + cfg.seed, size=cfg.size, caption_split="edit"
    ).as_arrays(ids=True)


@register_method(
    "safeclip",
    "baseline: Safe-CLIP-style pair-level LoRA fine-tuning on quadruplets",
    SafeClipConfig,
)
def safeclip(
    model: Any,
    policy: Any,
    cfg: SafeClipConfig | None = None,
    *,
    progress: bool = True,
    workdir: str | None = None,
    data: dict[str, Any] | None = None,
) -> EditResult:
    """Fine-tune ``model`` (in place) on quadruplets; see module docs for the losses."""
    cfg = cfg or SafeClipConfig()
    if data is None:
        if policy is None:
            raise InputError("safeclip needs a policy (RelWorld quadruplets) or quadruplet data")
        data = quadruplet_arrays(policy, cfg)
    n = len(data["S"])
    if n == 0 or not (len(data["U"]) == len(data["V"]) == len(data["G"]) == n):
        raise InputError("safeclip needs equal, non-empty S, U, V, G lists")
    pool: RetainPool | None = None
    pool_texts: list[str] = []
    pool_ids: list[str] = []
    if policy is not None and cfg.retain_pool:
        pool = retain_pool(policy, SetSizes(size=cfg.size, seed=cfg.seed))
        pool_texts, pool_img, pool_ids = pool.pairs()
    ids = data.get("safe_id")
    if ids is not None and len(ids) != n:
        raise InputError(f"safeclip: safe_id has {len(ids)} entries for {n} quadruplets")
    index: dict[str, int] = {}  # safe tuple id -> group, filled by _group_ids
    groups = _group_ids(data, index)
    m_pool = len(pool_texts)
    if m_pool:  # one id space: a pool row and a quadruplet of the same tuple are positives
        if groups is None:  # no ids: every quadruplet its own group
            groups = torch.arange(n)
        start = n if ids is None else len(index)
        pool_groups = torch.tensor(pool_labels(index, pool_ids, start), dtype=torch.long)
    marginals = pool.marginal_texts() if pool is not None else []
    dist = current_dist()  # a world of one unless started by `accelerate launch`
    if dist.enabled:
        model.to(dist.device)
        progress = progress and dist.is_main
    with Timer() as timer:
        model.eval()
        pix_V = to_pixels(model, data["V"], what="data['V']")
        pix_G = to_pixels(model, data["G"], what="data['G']")
        T0_S = _frozen_text(model, list(data["S"]))
        V0_V = _frozen_image(model, pix_V)
        if m_pool:
            pix_P = to_pixels(model, pool_img, what="retain pool images")
            T0_P, V0_P = _frozen_text(model, pool_texts), _frozen_image(model, pix_P)
        T0_M = _frozen_text(model, marginals) if marginals else None
        patterns = None
        if cfg.include_patch_embedding and model.preset.has_role("vision", "patch_embed"):
            patch = model.preset.globs("vision", ["patch_embed"])
            patterns = {"vision": (*lora_patterns(model, "vision"), *patch)}
        handle = attach_lora(
            model,
            ("text", "vision"),
            r=cfg.rank,
            alpha=cfg.alpha,
            dropout=cfg.dropout,
            patterns=patterns,
            seed=cfg.seed,
        )
        total_w = sum(cfg.weights.values())
        weights = {k: v / total_w for k, v in cfg.weights.items()}  # normalised once

        def T(texts: list[str]) -> torch.Tensor:
            tok = {k: v.to(model.device) for k, v in model.tokenize(texts).items()}
            return model.postprocess(model.forward_text(tok), "text")

        def Vf(pix: torch.Tensor) -> torch.Tensor:
            return model.postprocess(model.forward_image(pix.to(model.device)), "image")

        sh = dist.shard_rows  # this rank's shard of each forward, gathered; f(x) in one process

        def losses(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
            idx = rng.sample(range(n), min(cfg.batch_size, n))  # the global batch, every rank
            ts, tu = sh(T, [data["S"][i] for i in idx]), sh(T, [data["U"][i] for i in idx])
            vv, vg = sh(Vf, pix_V[idx]), sh(Vf, pix_G[idx])
            t0s, v0v = T0_S[idx], V0_V[idx]
            g = groups[idx] if groups is not None else None  # same safe tuple = positive
            cos = nn.functional.cosine_similarity
            s = cfg.logit_scale
            out = {
                "cos_U": (1 - cos(tu, t0s)).mean(),
                "cos_G": (1 - cos(vg, v0v)).mean(),
                "nce_U_V0": _info_nce(tu, v0v, s, g),
                "nce_S0_G": _info_nce(t0s, vg, s, g),
            }
            ts_all, t0_all, vv_all, v0_all, g_all = ts, t0s, vv, v0v, g
            if m_pool:  # safe-side terms over quadruplet rows and pool rows together
                j = rng.sample(range(m_pool), min(cfg.pool_batch, m_pool))
                ts_all = torch.cat([ts, sh(T, [pool_texts[i] for i in j])])
                vv_all = torch.cat([vv, sh(Vf, pix_P[j])])
                t0_all, v0_all = torch.cat([t0s, T0_P[j]]), torch.cat([v0v, V0_P[j]])
                g_all = torch.cat([g, pool_groups[j]]) if g is not None else None
            cos_s = 1 - cos(ts_all, t0_all)
            if T0_M is not None:
                k = rng.sample(range(len(marginals)), min(cfg.pool_batch, len(marginals)))
                tm = sh(T, [marginals[i] for i in k])
                cos_s = torch.cat([cos_s, 1 - cos(tm, T0_M[k])])
            out["cos_S"] = cos_s.mean()
            out["cos_V"] = (1 - cos(vv_all, v0_all)).mean()
            out["nce_S_V0"] = _info_nce(ts_all, v0_all, s, g_all)
            out["nce_S0_V"] = _info_nce(t0_all, vv_all, s, g_all)
            return out

        pool_data = (pool_texts, pool_ids, pool_img) if m_pool else None
        fp = checkpoint_key("safeclip", cfg, model.fingerprint(), data, pool_data)
        loop = run_loop(
            handle,
            handle.parameters(),
            losses,
            weights,
            steps=cfg.steps,
            lr=cfg.lr,
            seed=cfg.seed,
            log_every=cfg.log_every,
            progress=progress,
            desc="safeclip",
            workdir=workdir,
            checkpoint_every=cfg.checkpoint_every,
            fingerprint=fp,
            optimizer="adam",
        )
    dist.finish("safeclip")
    model.eval()
    record = EditRecord(
        method="safeclip",
        config=to_dict(cfg),
        model=getattr(model, "spec", type(model).__name__),
        data_sizes={"quadruplets": n, **(pool.sizes() if pool is not None else {})},
        curve=loop.curve,
        params_touched=handle.num_parameters(),
        params_total=sum(p.numel() for p in model.parameters()),
        time_s=timer.elapsed,
        warnings=[loop.stopped_early] if loop.stopped_early else [],
        extra={
            "lora_targets": handle.targets,
            "weights_normalised": weights,
            "steps_done": loop.steps_done,
            **(
                {"retained_tuples": pool.retained_ids(), "retain_pool_pairs": m_pool}
                if pool is not None
                else {}
            ),
        },
    )
    return EditResult(
        model=model,
        record=record,
        adapter=handle,
        artifacts={"references": {"T0_S": T0_S, "V0_V": V0_V}},
    )
