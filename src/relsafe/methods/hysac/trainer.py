"""The HySAC training run: embedding (through the frozen-prefix caches), the per-step losses,
validation with early stopping, and the state a resumed run needs.

**Validation and early stopping** (``VAL`` seed quadruplets, train phrasings and training styles):
every ``eval_every`` steps (and at step 0 and at the end) the model embeds the validation set and
computes (a) the *recall sum* ``R@1 + R@5`` of ``S->V`` plus ``R@1 + R@5`` of ``V->S`` (single-set
galleries, fractions, so at most 4) and (b) the validation loss (the same weighted loss, in batches
of ``batch_size``). An evaluation *improves* when either the recall sum rises or the loss falls
(the reference's rule); after ``patience`` evaluations without improvement training stops. The state
(LoRA + scalars) finally kept is the best by ``select_by`` (default ``"loss"``: the recall sum alone
ignores the safety hierarchy, which the loss measures through its entailment terms;
``"recall_sum"`` and ``"last"`` are options).

The retrieval numbers are computed here from the model's own similarity (:func:`recall_at_k`,
:func:`pct_safe_top1`), with the conventions of :mod:`relsafe.eval.retrieval` (pessimistic ties),
since methods do not import the eval layer.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from relsafe.distributed import Dist
from relsafe.errors import CheckpointError, InputError
from relsafe.methods.hysac.config import HySACConfig
from relsafe.methods.hysac.data import KINDS, PoolPairs, QuadData
from relsafe.methods.hysac.losses import entailment_loss, hyperbolic_contrastive, loss_terms
from relsafe.methods.lora import LoraHandle
from relsafe.methods.text_prefix import TextPrefixCache, prefix_activations
from relsafe.models.base import TowerSplit
from relsafe.models.hyperbolic import HyperbolicDualEncoder

log = logging.getLogger(__name__)

__all__ = [
    "EarlyStop",
    "HySACRun",
    "pct_safe_top1",
    "recall_at_k",
    "traversal_check",
    "unit_norm_alphas",
]

SCALARS = ("log_curvature", "alpha_text", "alpha_image", "logit_scale")
"""The wrapper's learned scalars, in :meth:`HyperbolicDualEncoder.scalar_parameters` order."""


# ---- retrieval numbers without the eval layer ---------------------------------------------------


def _check_sim(sim: torch.Tensor) -> torch.Tensor:
    if torch.isnan(sim).any():
        raise InputError("the similarity matrix contains NaN scores")
    return sim if sim.is_floating_point() else sim.float()


def recall_at_k(sim: torch.Tensor, target: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K of ``sim`` ``(Q, G)`` against a bool mask ``target`` ``(Q, G)`` of correct items:
    the share of queries whose best correct item has fewer than ``k`` wrong items scoring ``>=``
    it (ties pessimistic, as :func:`relsafe.eval.retrieval.recall_at_k`)."""
    sim = _check_sim(sim)
    target = target.to(sim.device)
    best = sim.masked_fill(~target, float("-inf")).amax(dim=1, keepdim=True)
    rank = ((sim >= best) & ~target).sum(dim=1)
    return {k: float((rank < k).float().mean()) for k in ks}


def pct_safe_top1(
    model: HyperbolicDualEncoder, query: torch.Tensor, safe: torch.Tensor, unsafe: torch.Tensor
) -> float:
    """Share of queries whose top-1 in the mixed gallery ``[safe; unsafe]`` is safe, by the
    model's similarity (ties pessimistic: the best safe score must beat the best unsafe one), as
    ``relsafe.eval.retrieval.mixed_retrieval(...)["pct_safe_top1"]``."""
    if safe.shape != unsafe.shape or query.shape[0] != safe.shape[0]:
        raise InputError(
            f"a mixed gallery needs (N, D) safe and unsafe items and N queries, got "
            f"{tuple(query.shape)}, {tuple(safe.shape)}, {tuple(unsafe.shape)}"
        )
    sim = _check_sim(model.similarity(query, torch.cat([safe, unsafe])))
    n = safe.shape[0]
    return float((sim[:, :n].amax(dim=1) > sim[:, n:].amax(dim=1)).float().mean())


@torch.no_grad()
def traversal_check(
    model: HyperbolicDualEncoder, emb: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Share of queries whose top-1 is safe in the mixed galleries of the validation embeddings,
    without and with traversal (a record entry: what the fitted radii do on held-in data)."""

    def pct(q: torch.Tensor, safe: torch.Tensor, unsafe: torch.Tensor) -> float:
        return pct_safe_top1(model, q, safe, unsafe)

    return {
        "U->[V;G]": pct(emb["U"], emb["V"], emb["G"]),
        "U->[V;G] traversal": pct(model.traverse(emb["U"], "text"), emb["V"], emb["G"]),
        "S->[V;G] traversal": pct(model.traverse(emb["S"], "text"), emb["V"], emb["G"]),
        "G->[S;U]": pct(emb["G"], emb["S"], emb["U"]),
        "G->[S;U] traversal": pct(model.traverse(emb["G"], "image"), emb["S"], emb["U"]),
    }


# ---- the run ------------------------------------------------------------------------------------


@torch.no_grad()
def unit_norm_alphas(
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


class EarlyStop(Exception):
    """Raised from inside the training loop when patience runs out."""


class HySACRun:
    """Data, model, validation and early-stopping state of one HySAC run.

    :meth:`step_losses` is ``run_loop``'s loss function: it evaluates on schedule (raising
    :class:`EarlyStop` when patience runs out), saves and restores what ``run_loop``'s own
    checkpoint does not hold (the scalars' values, the best state, the early-stopping history:
    :meth:`checkpoint_state`, stored in run_loop's checkpoint folder), clamps the scalars
    and returns the loss terms of one batch.
    """

    def __init__(
        self,
        model: HyperbolicDualEncoder,
        handle: LoraHandle,
        train: QuadData,
        val: QuadData,
        cfg: HySACConfig,
        dist: Dist,
        workdir: Path | None,
        fingerprint: str,
        pool: PoolPairs | None = None,
    ) -> None:
        self.model, self.handle, self.train, self.val, self.cfg = model, handle, train, val, cfg
        self.pool = pool if pool is not None and len(pool) else None
        self.dist, self.workdir, self.fingerprint = dist, workdir, fingerprint
        self.text_prefix: TextPrefixCache | None = None
        self.vision_prefix: TowerSplit | None = None
        total = sum(cfg.weights.values())
        self.weights = {k: v / total for k, v in cfg.weights.items()}  # normalised once
        self.history: list[dict[str, float]] = []
        self.curve: list[dict[str, float]] = []
        self.scalar_curve: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"loss": math.inf, "recall_sum": -math.inf}
        self.best_state: dict[str, dict[str, torch.Tensor]] = {}
        self.bad_evals = 0
        self.stopped: str | None = None
        # validation loss batches mix groups the way training batches do (fixed order)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.val_order = torch.randperm(len(val), generator=gen)

    # -- frozen-prefix caches --
    def use_caches(self, text: TowerSplit | None, image: TowerSplit | None) -> None:
        """Run the frozen lower layers once: every text through the ``text`` cut's prefix
        (:class:`TextPrefixCache`), every V/G image through the ``image`` cut's prefix (their
        pixels are replaced by the cached activations)."""
        m = self.model
        if text is not None:
            texts = [*self.train.S, *self.train.U, *self.val.S, *self.val.U]
            if self.pool is not None:
                texts += self.pool.S
            self.text_prefix = TextPrefixCache(m, texts, text.at)
        if image is not None:
            for d in (self.train, self.val):
                d.V, d.G = prefix_activations(image, d.V), prefix_activations(image, d.G)
            if self.pool is not None:
                self.pool.V = prefix_activations(image, self.pool.V)
            self.vision_prefix = image

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
            return m.postprocess(self.vision_prefix.suffix(pix), "image")
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
                    SCALARS,
                    self.model.scalar_parameters(),
                    strict=True,
                )
            },
        }

    def load_state(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        self.handle.load_state_dict(dict(state["lora"]))
        with torch.no_grad():
            for n, v in state["scalars"].items():
                getattr(self.model, n).copy_(v.to(getattr(self.model, n).device))

    # -- validation --
    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
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

    # -- resume support for what the adapter and optimiser do not hold: saved by run_loop inside
    # the same checkpoint folder (one complete set, renamed into place whole) --
    def checkpoint_state(self, step: int) -> dict[str, Any]:
        """The scalars, best state and early-stopping history at ``step`` (checkpoint meta)."""
        tensors = {
            f"current.scalars.{k}": v.detach().clone() for k, v in self._state()["scalars"].items()
        }
        for part, d in self.best_state.items():
            tensors.update({f"best.{part}.{k}": v.contiguous() for k, v in d.items()})
        return {
            "step": step,
            "tensors": tensors,
            "best": dict(self.best),
            "bad_evals": self.bad_evals,
            "history": self.history,
            "curve": self.curve,
            "scalar_curve": self.scalar_curve,
        }

    def restore_state(self, step: int, obj: Any) -> None:
        """Inverse of :meth:`checkpoint_state` (``obj`` read back from the checkpoint)."""
        where = f"{self.workdir}: checkpoint's hysac state"
        keys = {"step", "tensors", "best", "bad_evals", "history", "curve", "scalar_curve"}
        if not isinstance(obj, dict) or set(obj) != keys or obj["step"] != step:
            raise CheckpointError(f"{where} is incomplete or not from step {step}")
        tensors = obj["tensors"]
        try:
            with torch.no_grad():
                for n in SCALARS:
                    getattr(self.model, n).copy_(tensors[f"current.scalars.{n}"])
        except (KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{where}: scalars do not fit this model ({e})") from e
        best: dict[str, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith("best."):
                _, part, name = key.split(".", 2)
                best.setdefault(part, {})[name] = v
        self.best_state = best
        self.best = dict(obj["best"])
        self.bad_evals = int(obj["bad_evals"])
        self.history = list(obj["history"])
        self.curve = list(obj["curve"])
        self.scalar_curve = list(obj["scalar_curve"])
        log.info("hysac: restored scalars and early-stopping state at step %d", step)

    # -- one training step --
    def step_losses(self, step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if step % cfg.eval_every == 0 and not any(h["step"] == step for h in self.history):
            self.consider(self.evaluate(step))
            if self.bad_evals >= cfg.patience:
                self.stopped = (
                    f"early stop at step {step}: {cfg.patience} evaluations without improvement "
                    f"of the validation recall sum or loss"
                )
                raise EarlyStop(self.stopped)
        self.model.clamp_()
        n = len(self.train)
        b = min(cfg.batch_size, n)
        # the same global batch on every rank (one Python RNG stream); each rank embeds its shard
        # and gathers the rest (relsafe.distributed), so every rank computes the global loss
        idx = rng.sample(range(n), b)
        d = self.dist
        if d.world > b:
            raise InputError(f"a batch of {b} quadruplets cannot feed {d.world} processes")
        emb = {
            "S": d.shard_rows(self.embed_texts, [self.train.S[i] for i in idx]),
            "U": d.shard_rows(self.embed_texts, [self.train.U[i] for i in idx]),
            "V": d.shard_rows(self.embed_pixels, self.train.V[idx]),
            "G": d.shard_rows(self.embed_pixels, self.train.G[idx]),
        }
        labels = {
            "safe": self.train.safe_label[idx].to(self.model.device),
            "unsafe": self.train.unsafe_label[idx].to(self.model.device),
        }
        m = self.model
        terms = loss_terms(emb, m.curvature, m.scale(), m.aperture_k, None, labels)
        if self.pool is not None:  # safe S-V anchors: nce_SV and ent_SV over quadruplets + pool
            p = self.pool
            j = rng.sample(range(len(p)), min(cfg.pool_batch, len(p)))
            ps = torch.cat([emb["S"], d.shard_rows(self.embed_texts, [p.S[i] for i in j])])
            pv = torch.cat([emb["V"], d.shard_rows(self.embed_pixels, p.V[j])])
            lab = torch.cat([labels["safe"], p.safe_label[j].to(m.device)])
            terms["nce_SV"] = hyperbolic_contrastive(ps, pv, m.curvature, m.scale(), lab)
            terms["ent_SV"] = entailment_loss(ps, pv, m.curvature, m.aperture_k)
            if cfg.pool_entailment:  # pool row i's image => the unsafe text of batch row i mod B
                u = emb["U"][torch.arange(len(j), device=m.device) % emb["U"].shape[0]]
                terms["ent_VU"] = entailment_loss(
                    pv, torch.cat([emb["U"], u]), m.curvature, m.aperture_k
                )
        logged = bool(self.curve) and self.curve[-1]["step"] == step  # accumulation re-calls
        if (step % cfg.log_every == 0 or step == cfg.steps - 1) and not logged:
            entry = {"step": float(step)}
            entry["loss"] = sum(self.weights[k] * float(v.detach()) for k, v in terms.items())
            entry.update({k: float(v.detach()) for k, v in terms.items()})
            self.curve.append(entry)
            self.scalar_curve.append({"step": float(step), **m.scalar_summary()})
        return terms
