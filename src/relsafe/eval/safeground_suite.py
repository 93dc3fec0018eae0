"""``safeground`` suite: SafeGround metrics (arXiv 2503.11742, Sec. 3) on quadruplets.

Source: RelWorld quadruplets of the policy's (unsafe, counterpart) pairs with the ``TEST`` base
seed (``splits.TEST + seed``), or a ViSU file (``visu_path``; items lacking V or G are left out,
since every SafeGround preference compares a safe and an unsafe image or text across modalities).

Rows (suite ``safeground``): metric in ``pt_s, pt_u, pv_s, pv_u, txt_s, img_s, ps, pu, gs``;
slice ``all`` and one per tuple (``child|drinking|wine``; ViSU: per ``tag``); attack:

* ``none``: training styles, train phrasings (the calibration distribution, new seeds);
* ``paraphrase``: the same scenes captioned with held-out phrasings and templates (RelWorld);
* ``ood:<style>``: the same pairs rendered in each held-out style, train phrasings (RelWorld).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relsafe.config import ConfigError
from relsafe.data.attacks import NONE, PARAPHRASE, ImageAttack, ood_attack
from relsafe.errors import InputError
from relsafe.eval.rows import Row
from relsafe.eval.safeground import METRICS, SafeGroundResult, safeground_from_embeddings
from relsafe.eval.suites import Headline, ReportTable, SuiteContext, register_suite
from relsafe.world.styles import OOD_STYLES


@dataclass
class SafeGroundConfig:
    """``n_per_pair`` RelWorld quadruplets per policy pair (``size`` px, seed ``TEST + seed``);
    ``visu_path`` (+ ``coco_root``) replaces RelWorld by a ViSU file; ``paraphrase`` and
    ``ood_styles`` choose the attacks (RelWorld only); ``per_tuple`` adds per-tuple/tag slices."""

    n_per_pair: int = 16
    size: int = 64
    seed: int = 0
    visu_path: str | None = None
    coco_root: str | None = None
    paraphrase: bool = True
    ood_styles: list[str] = field(default_factory=lambda: list(OOD_STYLES))
    per_tuple: bool = True

    def validate(self) -> None:
        if self.n_per_pair <= 0:
            raise ConfigError(f"n_per_pair must be positive, got {self.n_per_pair}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        bad = [s for s in self.ood_styles if s not in OOD_STYLES]
        if bad:
            raise ConfigError(f"ood_styles {bad} are not held-out styles {list(OOD_STYLES)}")

    def ood_attacks(self) -> list[ImageAttack]:
        """The ``ood:<style>`` attacks (the config's style names parsed here)."""
        return [ood_attack(s) for s in self.ood_styles]


def _embed(ctx: SuiteContext, data: Any) -> tuple[Any, Any, Any, Any]:
    eng = ctx.engine
    return (
        eng.embed_texts(data.S),
        eng.embed_images(data.V),
        eng.embed_texts(data.U),
        eng.embed_images(data.G),
    )


def safeground_rows(
    result: SafeGroundResult,
    tags: list[str],
    *,
    model: str,
    method: str,
    attack: str,
    per_tuple: bool = True,
) -> list[Row]:
    """Rows for one attack: slice ``all`` and, with ``per_tuple``, one per distinct tag."""
    rows: list[Row] = []
    slices: list[tuple[str, SafeGroundResult]] = [("all", result)]
    if per_tuple:
        arr = np.asarray(tags)
        for tag in dict.fromkeys(tags):
            slices.append((tag, result.subset(arr == tag)))
    for slice_, res in slices:
        for m in METRICS:
            # slice "all" keeps its per-quadruplet outcomes: the leaderboard's interval
            items = tuple(res.per_quadruplet[m].astype(float)) if slice_ == "all" else None
            rows.append(
                Row(model, method, "safeground", slice_, attack, m, res.metrics[m], res.n, items)
            )
    return rows


@register_suite(
    "safeground",
    "SafeGround pairwise safety metrics on quadruplets (policy pairs or a ViSU file)",
    SafeGroundConfig,
    headline=(
        Headline("all", "none", "ps", "SafeGround PS"),
        Headline("all", "none", "pu", "SafeGround PU"),
        Headline("all", "none", "gs", "SafeGround GS"),
    ),
    report=(
        ReportTable(
            "SafeGround",
            ("pt_s", "pt_u", "pv_s", "pv_u", "ps", "pu", "gs"),
            note="Pairwise preferences inside each quadruplet (S, V, U, G): fractions of "
            "quadruplets.",
            slices=lambda s: s == "all",
        ),
    ),
    order=30,
)
def safeground_suite(ctx: SuiteContext, cfg: SafeGroundConfig) -> list[Row]:
    from relsafe.data.visu import VisuData, load_visu
    from relsafe.world import splits

    rows: list[Row] = []

    def run(data: Any, attack: str, emb: tuple[Any, Any, Any, Any] | None = None) -> tuple:
        emb = emb or _embed(ctx, data)
        res = safeground_from_embeddings(*emb, ctx.model)
        rows.extend(
            safeground_rows(
                res,
                list(data.tags),
                model=ctx.model_label,
                method=ctx.method,
                attack=attack,
                per_tuple=cfg.per_tuple,
            )
        )
        return emb

    if cfg.visu_path:
        data = load_visu(cfg.visu_path, coco_root=cfg.coco_root)
        keep = data.valid("VG")
        if not keep:
            raise InputError(
                f"SafeGround needs safe and unsafe images for every quadruplet it scores, and "
                f"{data.summary()}; supply V/G image paths (or coco_root for COCO ids)"
            )
        run(data.subset(keep), NONE.name)
        return rows
    if ctx.policy is None:
        raise InputError("the safeground suite needs a policy (--policy) or visu_path")
    from relsafe.data.world import world_of
    from relsafe.eval.candidates import world_attacks

    base_seed = splits.TEST + cfg.seed
    base = VisuData.from_relworld(ctx.policy, cfg.n_per_pair, base_seed, size=cfg.size)
    s, v, u, g = run(base, NONE.name)
    if world_of(ctx.policy).visu is not None:  # a ViSU file: its test rows, no attacks on them
        return rows
    if cfg.paraphrase:
        para = VisuData.from_relworld(
            ctx.policy, cfg.n_per_pair, base_seed, size=cfg.size, caption_split="heldout"
        )
        # same seeds and styles: the images are the base images, only the captions differ
        run(
            para,
            PARAPHRASE.name,
            (ctx.engine.embed_texts(para.S), v, ctx.engine.embed_texts(para.U), g),
        )
    # quadruplets rendered in the attack's styles (not the probe images: SafeGround scores pairs)
    for attack in world_attacks(cfg.ood_attacks(), world_of(ctx.policy)):
        ood = VisuData.from_relworld(
            ctx.policy, cfg.n_per_pair, base_seed, size=cfg.size, styles=list(attack.styles)
        )
        run(ood, attack.name)
    return rows
