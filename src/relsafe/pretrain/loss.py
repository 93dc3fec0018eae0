"""The pretraining objective: multi-positive CLIP InfoNCE in both directions plus marginals.

See :mod:`relsafe.pretrain` for what each term scores against what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

if TYPE_CHECKING:
    from relsafe.pretrain.config import PretrainConfig
    from relsafe.pretrain.data import TextBank, World


def multi_pos_nll(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log(sum_pos softmax)`` (InfoNCE with several positives)."""
    all_lse = torch.logsumexp(logits, dim=1)
    pos_lse = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return (all_lse - pos_lse).mean()


def text_features(model: Any, bank: TextBank, idx: np.ndarray) -> torch.Tensor:
    """Projected, normalised text features of bank rows ``idx`` (unique rows computed once)."""
    uniq, inv = np.unique(idx, return_inverse=True)
    if bank.feats is not None:
        sent = bank.feats[torch.from_numpy(uniq)]
    else:
        tok = {k: v[torch.from_numpy(uniq)] for k, v in bank.tokens.items()}  # type: ignore[union-attr]
        width = int(tok["attention_mask"].sum(1).max())
        tok = {k: v[:, :width] for k, v in tok.items()}
        sent = model.text.sentence_embedding(**tok)
    z = F.normalize(model.text.proj(sent), dim=-1)
    return z[torch.from_numpy(inv)]


def contrastive_loss(
    model: Any, cfg: PretrainConfig, world: World, bank: TextBank, batch: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    tids = torch.from_numpy(batch["tids"])
    pix = model.preprocess_array(batch["pixels"])
    img = F.normalize(model.forward_image(pix), dim=-1)  # (B, D)
    n_t, b = len(world.tuples), len(tids)
    extra_idx = [bank.subj_idx, bank.obj_idx] if cfg.marginal_weight > 0 else []
    all_idx = np.concatenate([batch["prompts"], batch["caps"], *extra_idx])
    txt = text_features(model, bank, all_idx)
    prompts, caps = txt[:n_t], txt[n_t : n_t + b]
    scale = model.scale()

    same = tids[:, None] == tids[None, :]  # (B, B)
    onehot = F.one_hot(tids, n_t).bool()  # (B, T)
    # image -> text: every tuple's prompt (or only the swaps) + the batch captions
    l_prompts = scale * img @ prompts.T
    if cfg.negatives == "swaps":
        l_prompts = l_prompts.masked_fill(~world.swap_mask[tids], float("-inf"))
    i2t = multi_pos_nll(
        torch.cat([l_prompts, scale * img @ caps.T], 1), torch.cat([onehot, same], 1)
    )
    # text -> image: batch captions and the prompts of the tuples present, against the images
    present = torch.unique(tids)
    q = torch.cat([caps, prompts[present]])
    qpos = torch.cat([same, present[:, None] == tids[None, :]])
    t2i = multi_pos_nll(scale * q @ img.T, qpos)
    loss = 0.5 * (i2t + t2i)
    stats = {"i2t": i2t.item(), "t2i": t2i.item()}
    if cfg.marginal_weight > 0:
        n_s = len(world.subjects)
        subj_t, obj_t = txt[n_t + b : n_t + b + n_s], txt[n_t + b + n_s :]
        s_ids = torch.from_numpy(world.tuple_subj)[tids]
        o_ids = torch.from_numpy(world.tuple_obj)[tids]
        marg = 0.0
        for emb, ids in ((subj_t, s_ids), (obj_t, o_ids)):
            lg = scale * img @ emb.T  # (B, K)
            pos = F.one_hot(ids, emb.shape[0]).bool()
            marg = marg + multi_pos_nll(lg, pos)
            present_k = torch.unique(ids)
            marg = marg + multi_pos_nll(lg.T[present_k], pos.T[present_k])
        marg = marg / 4
        loss = loss + cfg.marginal_weight * marg
        stats["marginal"] = marg.item()
    stats["scale"] = scale.item()
    return loss, stats
