"""``zeroshot`` suite: tuple classification in the policy's world (METRICS.md, "Zero-shot tuple
classification"; RelWorld without a policy).

Image -> text: each test image against one caption per valid tuple (a large vocabulary: per
candidate tuple, :mod:`relsafe.eval.candidates`); top-1 and top-5, overall, per tuple and per
style (RelWorld renders), for the canonical captions (attack ``none``), held-out paraphrases,
held-out contexts, each OOD style (a manifest world: each OOD domain) and each corruption.
Text -> image: is an image of the caption's tuple ranked first in a gallery with images of every
tuple? Also the confusions of chosen tuples (default: the policy's unsafe tuples) with their
one-element-swapped neighbours (is child|drinking|wine told from child|drinking|juice and
adult|drinking|wine?).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from relsafe.config import ConfigError
from relsafe.data.attacks import (
    NONE,
    TEXT_ATTACKS,
    Attack,
    get_attack,
    image_attacks,
    vocab_kwargs,
)
from relsafe.data.probes import CORRUPTIONS
from relsafe.data.world import world_of
from relsafe.errors import InputError
from relsafe.eval.candidates import candidate_tuples, world_attacks
from relsafe.eval.retrieval import ranks
from relsafe.eval.rows import Row
from relsafe.eval.suites import Headline, ReportTable, SuiteContext, register_suite
from relsafe.eval.zeroshot import zeroshot_classify
from relsafe.world.styles import OOD_STYLES
from relsafe.world.vocab import ORO


@dataclass
class ZeroShotConfig:
    n_per_tuple: int = 6
    size: int = 64
    seed: int = 0
    paraphrase_variants: int = 2
    ood_styles: list[str] = field(default_factory=lambda: list(OOD_STYLES))
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))
    per_tuple: bool = True
    # tuples whose confusions with their one-element swaps are reported; empty: the policy's
    # unsafe tuples (none without a policy)
    confusion_tuples: list[str] = field(default_factory=list)
    # more attack specs (registered in relsafe.registry.ATTACKS), each run after the built-in
    # attacks of its side
    extra_attacks: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.n_per_tuple <= 0:
            raise ConfigError(f"n_per_tuple must be positive, got {self.n_per_tuple}")
        bad = [s for s in self.ood_styles if s not in OOD_STYLES]
        if bad:
            raise ConfigError(f"ood_styles {bad} are not held-out styles {list(OOD_STYLES)}")
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad:
            raise ConfigError(f"corruptions {bad} not in {list(CORRUPTIONS)}")
        for spec in self.extra_attacks:
            try:
                attack = get_attack(spec)
            except InputError as e:
                raise ConfigError(f"extra_attacks: {e}") from e
            if attack.side is None:
                raise ConfigError(f"extra_attacks: {spec!r} changes neither captions nor images")

    def _extra(self, side: str) -> list[Attack]:
        return [a for a in (get_attack(s) for s in self.extra_attacks) if a.side == side]

    def text_attacks(self) -> list[Attack]:
        """Caption attacks, scored on the canonical images (the config's strings parsed here)."""
        return [*TEXT_ATTACKS, *self._extra("text")]

    def image_attacks(self) -> list[Attack]:
        """Image attacks, scored with the canonical captions."""
        return [*image_attacks(self.ood_styles, self.corruptions), *self._extra("image")]


def one_swaps(t: ORO, tuples: list[ORO]) -> list[ORO]:
    """Valid tuples that differ from ``t`` in exactly one element."""
    return [c for c in tuples if sum(a != b for a, b in zip(c, t, strict=True)) == 1]


@register_suite(
    "zeroshot",
    "zero-shot tuple classification, per attack, tuple and style (or domain)",
    ZeroShotConfig,
    headline=(Headline("all", "none", "top1", "zero-shot top-1"),),
    report=(
        ReportTable(
            "Zero-shot tuple classification", ("top1", "t2i_top1"), slices=lambda s: s == "all"
        ),
    ),
    order=20,
)
def zeroshot_suite(ctx: SuiteContext, cfg: ZeroShotConfig) -> list[Row]:
    world = world_of(ctx.policy)
    vocab, vkw = world.vocabulary, vocab_kwargs(world.vocabulary)
    tuples = list(candidate_tuples(ctx.policy)) if ctx.policy else vocab.valid_tuples()
    model, engine = ctx.model, ctx.engine
    rows: list[Row] = []

    def row(slice_: str, attack: str, metric: str, value: float, n: int, items: Any = None) -> None:
        rows.append(
            Row(
                ctx.model_label,
                ctx.method,
                "zeroshot",
                slice_,
                attack,
                metric,
                float(value),
                int(n),
                items=None if items is None else tuple(float(x) for x in items),
            )
        )

    canon_text = engine.embed_texts(NONE.captions(tuples, **vkw))
    attacks: list[tuple[str, list[torch.Tensor]]] = [(NONE.name, [canon_text])]
    for text_attack in cfg.text_attacks():
        variants = text_attack.n_variants(max(1, cfg.paraphrase_variants))
        attacks.append(
            (
                text_attack.name,
                [
                    engine.embed_texts(text_attack.captions(tuples, v, cfg.seed, **vkw))
                    for v in range(variants)
                ],
            )
        )
    base = NONE.test_images(cfg.n_per_tuple, cfg.size, cfg.seed, tuples=tuples, world=world)
    base_emb = engine.embed_images(base.images)
    labels = torch.as_tensor(base.labels)
    per_count = torch.bincount(labels, minlength=len(tuples))

    def classify(
        img_emb: torch.Tensor, text_sets: list[torch.Tensor], attack: str, per_tuple: bool
    ) -> None:
        top1, top5, per, t2i, hits = [], [], [], [], []
        mask = labels[None, :] == torch.arange(len(tuples))[:, None]
        for text_emb in text_sets:
            res = zeroshot_classify(img_emb, text_emb, labels, model.similarity, ks=(1, 5))
            top1.append(res["top1"])
            top5.append(res["top5"])
            per.append(res["per_class"]["top1"])
            hits.append((res["predictions"] == labels).double())  # per image, for the interval
            # text -> image: each caption's best image must show its tuple
            t2i.append(
                float((ranks(model.similarity(text_emb, img_emb), mask) == 0).float().mean())
            )
        n = len(labels)
        row("all", attack, "top1", sum(top1) / len(top1), n, torch.stack(hits).mean(0).tolist())
        row("all", attack, "top5", sum(top5) / len(top5), n)
        row("all", attack, "t2i_top1", sum(t2i) / len(t2i), len(tuples))
        if per_tuple:
            mean_per = torch.stack(per).mean(0)
            for i, t in enumerate(tuples):
                if per_count[i] > 0:
                    row(t.id, attack, "top1", float(mean_per[i]), int(per_count[i]))

    for attack, text_sets in attacks:
        classify(base_emb, text_sets, attack, cfg.per_tuple and attack == "none")

    def classify_other(imgs: Any, attack: str) -> None:
        """Top-1 of an image set whose tuples differ from the canonical set's (a manifest's OOD
        domain holds other tuples, in other numbers)."""
        lab = torch.as_tensor(imgs.labels)
        res = zeroshot_classify(
            engine.embed_images(imgs.images), canon_text, lab, model.similarity, ks=(1, 5)
        )
        hits = (res["predictions"] == lab).double()
        row("all", attack, "top1", res["top1"], len(lab), hits.tolist())
        row("all", attack, "top5", res["top5"], len(lab))

    # per in-distribution style: RelWorld's training styles, a manifest's train domains
    domains = np.asarray(
        world.images.probe_domains(tuples, cfg.n_per_tuple, cfg.seed, "test"), dtype=object
    )
    if len(domains) == len(labels):
        for style in dict.fromkeys(domains.tolist()):
            sel = torch.as_tensor(domains == style)
            res = zeroshot_classify(
                base_emb[sel], canon_text, labels[sel], model.similarity, ks=(1,)
            )
            row(f"style:{style}", "none", "top1", res["top1"], int(sel.sum()))
    for image_attack in world_attacks(cfg.image_attacks(), world):
        imgs = image_attack.test_images(
            cfg.n_per_tuple, cfg.size, cfg.seed, tuples=tuples, world=world
        )
        if not np.array_equal(imgs.labels, base.labels):  # a domain with other tuples/counts
            classify_other(imgs, image_attack.name)
            continue
        classify(engine.embed_images(imgs.images), [canon_text], image_attack.name, False)
    # confusions with one-element-swapped neighbours
    res = zeroshot_classify(base_emb, canon_text, labels, model.similarity, ks=(1,))
    preds = res["predictions"]
    index = {t: i for i, t in enumerate(tuples)}
    chosen = cfg.confusion_tuples or ([t.id for t in ctx.policy.unsafe] if ctx.policy else [])
    for spec in chosen:
        t = vocab.tuple(spec, where="confusion_tuples")
        if t not in index:
            raise InputError(f"confusion_tuples: {t.id} is not among the scored tuples")
        sel = labels == index[t]
        if not bool(sel.any()):
            continue
        n = int(sel.sum())
        for other in [t, *one_swaps(t, tuples)]:
            rate = float((preds[sel] == index[other]).float().mean())
            row(f"confusion:{t.id}->{other.id}", "none", "rate", rate, n)
    return rows
