"""Relationship-aware LoRA unlearning (METHODS.md section 1) and the isolated concept-erasure
baseline (section 2), which shares its machinery and differs only in what it forgets.

Longer than 500 lines because the two methods share one edit class whose loss terms (text, image,
retain) read the same frozen references and batches; splitting the terms from the data they use
would scatter one loss over several files.

From a policy alone (:mod:`relsafe.data.edit_sets`), a LoRA on the chosen tower(s) is trained with:

``forget`` (per forget text; the objective is selectable)
    * ``redirect`` (default): ``1 - cos(T(u), T0(c))`` where ``c`` is the minimal-pair caption of
      the safe counterpart (same template and phrasings, child|drinking|wine -> child|drinking|juice);
    * ``margin``: ``relu(cos(T(u), P0(u)) - cos(T(u), P0(c)) + margin)`` with ``P0`` the frozen
      image prototype of a tuple: the text must prefer the counterpart's images to its own;
    * ``neutral``: ``1 - cos(T(u), T0(anchor))`` toward a neutral anchor text (``"a picture"``).
``separation``
    for each forget text and an image ``g`` of its tuple (and the counterpart image ``v`` rendered
    from the same seed): ``relu(s(g, T(u)) - s(g, T(c)) + m) + relu(s(v, T(u)) - s(v, T(c)) + m)``.
    Redirecting ``T(u)`` onto ``T0(c)`` alone would leave the two captions tied for every image;
    this term makes the unsafe caption lose to its counterpart on both tuples' images, so it is top-1
    for neither and the counterpart's own images still pick their own caption.
``retain_distill``
    ``1 - cos(T(r), T0(r))`` on retain texts (marginals, safe neighbours, unrelated) and on the
    counterpart texts themselves.
``retain_align``
    cross-entropy of retain images against the (edited) *prototype* captions
    (:func:`~relsafe.world.captions.prototype_caption`, ``"a picture of a child drinking wine"``)
    of every tuple but the evaluation-only ones, with the frozen image features: neighbours keep
    being recognised, also against the moved unsafe captions;
``marginal_align`` (``w_marginal_align``)
    the same for the subject and the object of each retain image, against the prototype marginals
    (:func:`~relsafe.world.captions.prototype_marginal`, ``"a picture of wine"``).
``vision_forget`` / ``vision_retain`` (when ``vision`` is among ``towers``)
    ``vision_forget`` by ``vision_objective``:

    * ``counterpart``: ``1 - cos(V(g), V0(v))``, the unsafe image onto its same-seed counterpart
      render. The image then reads as the counterpart (image->text redirect), but for text->image
      it ties with the counterpart's own renders, so the unsafe caption, moved onto the
      counterpart's, ties between them too (a pessimistic hit) and the counterpart's caption
      retrieves unsafe images;
    * ``redirect``: the unsafe image classified as its counterpart among the prototype captions
      (cross-entropy, image->text redirect), plus ``vision_gallery`` (``w_vision_gallery``):
      ``relu(s(V(g), P(k)) - s(V(v), P(k)) + margin)`` for both prototype captions ``k`` of the
      pair, so the counterpart's own render stays the better image for either caption
      (text->image).

    ``vision_retain``: ``1 - cos(V(r), V0(r))`` on retain images.

All ``*0`` references are computed from the unedited model *before* the adapter is attached and
held as plain tensors, so they cannot drift (see ``tests/test_lora_methods.py``). The frozen lower
layers of each trained tower run once per distinct input for the whole edit: texts through
:class:`~relsafe.methods.text_prefix.TextPrefixCache`, images through the backbone's image cut
below the first adapted layer (:func:`~relsafe.methods.text_prefix.frozen_split`, as HySAC does).

No string a loss sees is an evaluation string: the edit sets come from the ``edit`` caption split,
and the alignment terms use the prototype forms, never the canonical captions or the marginal
probes ("a photo of ...") that the suites score (``tests/test_leakage.py``, docs/splits.md).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from relsafe.batching import in_input_order, length_order
from relsafe.config import to_dict
from relsafe.data.edit_sets import EditSets, SetSizes, concept_sets, relational_sets
from relsafe.distributed import current as current_dist
from relsafe.errors import ConfigError, InputError
from relsafe.methods.base import EditRecord, EditResult, Timer, register_method
from relsafe.methods.lora import attach_lora, target_module_names
from relsafe.methods.text_prefix import (
    TextPrefixCache,
    frozen_split,
    layer_index,
    prefix_activations,
    root_modules,
    top_layers,
)
from relsafe.methods.training import checkpoint_key, run_loop
from relsafe.models.base import TowerSplit
from relsafe.world.captions import prototype_caption, prototype_marginal
from relsafe.world.vocab import default_vocabulary

log = logging.getLogger(__name__)

Objective = Literal["redirect", "margin", "neutral"]
VisionObjective = Literal["counterpart", "redirect"]


@dataclass
class LoraEditConfig:
    """Config of ``relational-lora`` and ``concept-erasure`` (YAML keys are these field names)."""

    towers: list[str] = field(default_factory=lambda: ["text"])
    # adapt only the top N transformer layers of the text tower (0 = every layer of the preset);
    # on backbones with a frozen-prefix forward (relsafe-mini) the frozen layers run once per text
    text_layers: int = 2
    # also adapt the text projection head (preset group ``text_proj``): None = where the backbone
    # has one (relsafe-mini; HF CLIP's projection is outside its text tower), True = require it
    text_head: bool | None = None
    objective: Objective = "redirect"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    steps: int = 150
    batch_forget: int = 32
    batch_retain: int = 64
    batch_images: int = 64
    margin: float = 0.05
    w_forget: float = 1.0
    w_separation: float = 1.0
    w_retain_distill: float = 1.0
    w_retain_align: float = 0.5
    w_marginal_align: float = 0.5
    w_vision_forget: float = 1.0
    w_vision_retain: float = 1.0
    # what ``vision_forget`` moves an unsafe image to (module docstring): "counterpart" = onto
    # its counterpart's render; "redirect" = read as the counterpart's caption, ranked below the
    # counterpart's render for both captions of the pair (``w_vision_gallery``)
    vision_objective: VisionObjective = "counterpart"
    w_vision_gallery: float = 1.0
    # the neutral objective's anchor; not "a photo", the prefix of the evaluation-only probes
    anchor_text: str = "a picture"
    concept_role: Literal["subject", "relation", "object"] = "object"  # concept-erasure only
    data: SetSizes = field(default_factory=SetSizes)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50

    def validate(self) -> None:
        bad = [t for t in self.towers if t not in ("text", "vision")]
        if bad or not self.towers:
            raise ConfigError(
                f"towers must be a non-empty subset of ['text', 'vision'], got {self.towers}"
            )
        if self.vision_objective not in ("counterpart", "redirect"):
            raise ConfigError(
                "vision_objective must be 'counterpart' or 'redirect', "
                f"got {self.vision_objective!r}"
            )
        _check_numbers(self)


def _check_numbers(cfg: LoraEditConfig) -> None:
    """Every numeric key within its bound (:mod:`relsafe.validate`): the shared training fields,
    then this method's own (layers, batch sizes per kind of data, margin, loss weights)."""
    from relsafe.validate import MAX_BATCH, MAX_WEIGHT, check_number, check_training_fields

    w = "relational-lora/concept-erasure"
    check_training_fields(w, cfg)
    check_number(w, "text_layers (0 = all)", cfg.text_layers, lo=0, hi=1000, integer=True)
    for name in ("batch_forget", "batch_retain", "batch_images"):
        check_number(w, name, getattr(cfg, name), lo=1, hi=MAX_BATCH, integer=True)
    check_number(w, "margin", cfg.margin, lo=-2, hi=2)
    for name in [f for f in vars(cfg) if f.startswith("w_")]:  # the loss weights
        check_number(w, name, getattr(cfg, name), lo=0, hi=MAX_WEIGHT)


def _pixels(model: Any, arr: np.ndarray) -> torch.Tensor:
    from relsafe.data.images import to_pixels

    return to_pixels(model, arr, allow_empty=True)


@torch.no_grad()
def _frozen_text(
    model: Any, texts: list[str], bs: int = 256, prefix: TextPrefixCache | None = None
) -> torch.Tensor:
    """The unedited model's features of ``texts``, in batches of ``bs`` texts of similar length
    (characters stand in for tokens): through ``prefix`` when given (it must hold them; the same
    function, without rerunning its frozen layers), else the full forward."""
    if not texts:
        return torch.zeros(0, model.embed_dim)

    def raw(chunk: list[str]) -> torch.Tensor:
        if prefix is not None:
            return prefix.forward(chunk)
        return model.forward_text({k: v.to(model.device) for k, v in model.tokenize(chunk).items()})

    order = length_order(texts)
    out = torch.cat(
        [
            model.postprocess(raw([texts[k] for k in order[i : i + bs]]), "text").float()
            for i in range(0, len(texts), bs)
        ]
    ).detach()
    return in_input_order(out, order)


@torch.no_grad()
def _frozen_image(model: Any, pix: torch.Tensor, bs: int = 256) -> torch.Tensor:
    if len(pix) == 0:
        return torch.zeros(0, model.embed_dim)
    return torch.cat(
        [
            model.postprocess(
                model.forward_image(pix[i : i + bs].to(model.device)), "image"
            ).float()
            for i in range(0, len(pix), bs)
        ]
    ).detach()


def _cos_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1 - nn.functional.cosine_similarity(a, b, dim=-1)).mean()


def lora_targets(model: Any, cfg: LoraEditConfig) -> list[str]:
    """The module names the edit adapts: the preset's layers of each tower, narrowed by
    ``text_layers`` and widened by ``text_head``."""
    out: list[str] = []
    if "text" in cfg.towers:
        out += top_layers(target_module_names(model, ["text"]), cfg.text_layers)
        pats = model.preset.globs("text", ("proj",))
        if cfg.text_head is True and not pats:
            raise ConfigError(
                f"text_head: {type(model).__name__}'s layer preset names no text projection "
                "head (role 'proj' of the text tower); set text_head: false or leave it unset"
            )
        if pats and cfg.text_head is not False:
            out += target_module_names(model, ["text"], {"text": pats})
    if "vision" in cfg.towers:
        out += target_module_names(model, ["vision"])
    return sorted(set(out))


class _LoraEdit:
    """Holds the data, frozen references and loss terms of one edit."""

    def __init__(
        self, model: Any, sets: EditSets, cfg: LoraEditConfig, targets: list[str] | None = None
    ) -> None:
        self.model, self.sets, self.cfg = model, sets, cfg
        self.targets = targets if targets is not None else lora_targets(model, cfg)
        vocab = sets.vocabulary or default_vocabulary()
        # the classes of retain_align: every tuple but the evaluation-only ones, which no loss
        # may touch (not even as a negative class); a large vocabulary: the tuples the sets name
        self.all_tuples = sets.class_tuples()
        self.tuple_index = {t: i for i, t in enumerate(self.all_tuples)}
        missing = sorted({t.id for t in sets.retain_image_tuples if t not in self.tuple_index})
        if missing:
            raise InputError(f"retain images of evaluation-only tuples {missing}")
        self.proto_caps = [prototype_caption(t, vocab) for t in self.all_tuples]
        words = {role: list(vocab.words(role)) for role in ("subject", "object")}
        self.marg_caps = {
            role: [prototype_marginal(role, w, vocab) for w in words[role]] for role in words
        }
        self.r_marg_labels = {
            role: torch.tensor(
                [words[role].index(getattr(t, role)) for t in sets.retain_image_tuples],
                dtype=torch.long,
            )
            for role in words
        }
        model.eval()
        self.train_text = "text" in cfg.towers
        self.train_vision = "vision" in cfg.towers
        # the frozen-prefix cache of every text a loss runs (before any adapter exists, too)
        self.prefix: TextPrefixCache | None = None
        if self.train_text and cfg.text_layers > 0 and model.split_tower("text", 0) is not None:
            text_names = set(target_module_names(model, ["text"], {"text": ("*",)}))
            starts = [
                i for t in self.targets if t in text_names and (i := layer_index(t)) is not None
            ]
            split = model.split_tower("text", min(starts)) if starts else None
            if split is not None and split.keeps_frozen(root_modules(model, self.targets)):
                self.prefix = TextPrefixCache(
                    model,
                    [
                        *sets.forget_texts,
                        *sets.forget_text_targets,
                        *sets.retain_texts,
                        *self.proto_caps,
                        *self.marg_caps["subject"],
                        *self.marg_caps["object"],
                    ],
                    min(starts),
                )
        # ---- frozen references, computed before any adapter exists ----------------------
        self.f_pix = _pixels(model, sets.forget_images)
        self.ft_pix = _pixels(model, sets.forget_image_targets)
        self.r_pix = _pixels(model, sets.retain_images)
        self.T0_target = _frozen_text(model, sets.forget_text_targets, prefix=self.prefix)
        self.T0_retain = _frozen_text(model, sets.retain_texts, prefix=self.prefix)
        self.T0_anchor = (
            _frozen_text(model, [cfg.anchor_text]) if cfg.objective == "neutral" else None
        )
        self.V0_forget = _frozen_image(model, self.f_pix)
        self.V0_ftarget = _frozen_image(model, self.ft_pix)
        self.V0_retain = _frozen_image(model, self.r_pix)
        # training the vision tower: its frozen lower layers (relsafe-mini: the stem and the first
        # adapted stage's convolutions) run once per image, here; the losses run only the rest
        # (:meth:`V`), so f_pix, ft_pix and r_pix hold those activations from now on
        self.image_split: TowerSplit | None = None
        if self.train_vision:
            self.image_split = frozen_split(model, "image", root_modules(model, self.targets))
        if self.image_split is not None:
            self.f_pix, self.ft_pix, self.r_pix = (
                prefix_activations(self.image_split, x) if len(x) else x
                for x in (self.f_pix, self.ft_pix, self.r_pix)
            )
        scale = model.contrastive_logit_scale()
        self.scale = float(scale.detach().exp().clamp(max=100.0)) if scale is not None else 100.0
        # image indices per forget tuple (to pair forget texts with images of their tuple)
        self.img_by_tuple: dict[Any, list[int]] = {}
        for i, t in enumerate(sets.forget_image_tuples):
            self.img_by_tuple.setdefault(t, []).append(i)
        self.proto0 = {
            t: nn.functional.normalize(self.V0_forget[idx].mean(0), dim=-1)
            for t, idx in self.img_by_tuple.items()
        }
        self.proto0_cp = {
            t: nn.functional.normalize(self.V0_ftarget[idx].mean(0), dim=-1)
            for t, idx in self.img_by_tuple.items()
        }
        self.r_labels = torch.tensor(
            [self.tuple_index[t] for t in sets.retain_image_tuples], dtype=torch.long
        )
        # vision_objective "redirect": each forget image's own and counterpart class, and the
        # frozen prototype captions (the text tower's, when it is not trained)
        self.vis_redirect = self.train_vision and cfg.vision_objective == "redirect"
        if self.vis_redirect:
            pairs = [(t, sets.counterparts.get(t)) for t in sets.forget_image_tuples]
            absent = sorted(
                {
                    f"(none for {t.id})" if c is None else c.id
                    for t, c in pairs
                    if c not in self.tuple_index
                }
            )
            if absent:
                raise InputError(
                    "vision_objective 'redirect' needs every forget image's counterpart among "
                    f"the class tuples; missing: {absent}"
                )
            self.f_own = torch.tensor([self.tuple_index[t] for t, _ in pairs], dtype=torch.long)
            self.f_cp = torch.tensor([self.tuple_index[c] for _, c in pairs], dtype=torch.long)
            self.protos0 = None if self.train_text else _frozen_text(model, self.proto_caps)

    # ---- forward helpers -----------------------------------------------------------------
    def T(self, texts: list[str]) -> torch.Tensor:
        if self.prefix is not None:
            return self.model.postprocess(self.prefix.forward(texts), "text")
        tok = {k: v.to(self.model.device) for k, v in self.model.tokenize(texts).items()}
        return self.model.postprocess(self.model.forward_text(tok), "text")

    def V(self, pix: torch.Tensor) -> torch.Tensor:
        """The edited image features of ``pix``: pixels, or with :attr:`image_split` the frozen
        prefix's activations of them (the same function)."""
        if self.image_split is not None:
            return self.model.postprocess(
                self.image_split.suffix(pix.to(self.model.device)), "image"
            )
        return self.model.postprocess(self.model.forward_image(pix.to(self.model.device)), "image")

    def sim_rows(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model.pair_similarity(a, b)

    # ---- one step ------------------------------------------------------------------------
    def losses(self, step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        cfg, s = self.cfg, self.sets
        # every rank draws the same global batch; each batched forward runs on this rank's shard
        # and is gathered (relsafe.distributed); in one process ``sh(f, x)`` is exactly ``f(x)``
        sh = current_dist().shard_rows
        out: dict[str, torch.Tensor] = {}
        protos: torch.Tensor | None = None  # the edited prototype captions, once per step
        fi = (
            rng.sample(range(len(s.forget_texts)), min(cfg.batch_forget, len(s.forget_texts)))
            if s.forget_texts
            else []
        )
        if self.train_text and fi:
            f_texts = [s.forget_texts[i] for i in fi]
            t_texts = [s.forget_text_targets[i] for i in fi]
            Tu = sh(self.T, f_texts)
            Tc = sh(self.T, t_texts)
            if cfg.objective == "redirect":
                out["forget"] = _cos_loss(Tu, self.T0_target[fi])
            elif cfg.objective == "neutral":
                assert self.T0_anchor is not None
                out["forget"] = _cos_loss(Tu, self.T0_anchor.expand_as(Tu))
            else:  # margin
                own = torch.stack([self.proto0[s.forget_text_tuples[i]] for i in fi])
                cp = torch.stack([self.proto0_cp[s.forget_text_tuples[i]] for i in fi])
                out["forget"] = torch.relu(
                    self.sim_rows(Tu, own) - self.sim_rows(Tu, cp) + cfg.margin
                ).mean()
            # separation on a random image of each text's tuple and its same-seed counterpart
            gi = [rng.choice(self.img_by_tuple[s.forget_text_tuples[i]]) for i in fi]
            g = sh(self.V, self.f_pix[gi]) if self.train_vision else self.V0_forget[gi]
            v = self.V0_ftarget[gi]
            sep = torch.relu(self.sim_rows(g, Tu) - self.sim_rows(g, Tc) + cfg.margin)
            sep = sep + torch.relu(self.sim_rows(v, Tu) - self.sim_rows(v, Tc) + cfg.margin)
            out["separation"] = sep.mean()
            ri = rng.sample(range(len(s.retain_texts)), min(cfg.batch_retain, len(s.retain_texts)))
            distill = _cos_loss(Tc, self.T0_target[fi])
            if ri:
                distill = 0.5 * (
                    distill
                    + _cos_loss(sh(self.T, [s.retain_texts[i] for i in ri]), self.T0_retain[ri])
                )
            out["retain_distill"] = distill
            if len(self.r_pix):
                ii = rng.sample(range(len(self.r_pix)), min(cfg.batch_images, len(self.r_pix)))
                protos = sh(self.T, self.proto_caps)
                img = sh(self.V, self.r_pix[ii]) if self.train_vision else self.V0_retain[ii]
                logits = self.scale * self.model.similarity(img, protos)
                out["retain_align"] = nn.functional.cross_entropy(logits, self.r_labels[ii])
                if cfg.w_marginal_align > 0:
                    terms = []
                    for role, caps in self.marg_caps.items():
                        m_logits = self.scale * self.model.similarity(img, sh(self.T, caps))
                        terms.append(
                            nn.functional.cross_entropy(m_logits, self.r_marg_labels[role][ii])
                        )
                    out["marginal_align"] = sum(terms) / len(terms)
        if self.train_vision and len(self.f_pix):
            gi = rng.sample(range(len(self.f_pix)), min(cfg.batch_images, len(self.f_pix)))
            if self.vis_redirect:
                if self.protos0 is not None:
                    protos = self.protos0
                elif protos is None:
                    protos = sh(self.T, self.proto_caps)
                g, v = sh(self.V, self.f_pix[gi]), sh(self.V, self.ft_pix[gi])
                own, cp = self.f_own[gi], self.f_cp[gi]
                logits = self.scale * self.model.similarity(g, protos)
                out["vision_forget"] = nn.functional.cross_entropy(logits, cp)
                out["vision_gallery"] = sum(
                    torch.relu(
                        self.sim_rows(g, protos[k]) - self.sim_rows(v, protos[k]) + cfg.margin
                    ).mean()
                    for k in (own, cp)
                )
            else:
                out["vision_forget"] = _cos_loss(sh(self.V, self.f_pix[gi]), self.V0_ftarget[gi])
            if len(self.r_pix):
                ri = rng.sample(range(len(self.r_pix)), min(cfg.batch_images, len(self.r_pix)))
                out["vision_retain"] = _cos_loss(sh(self.V, self.r_pix[ri]), self.V0_retain[ri])
        if not out:
            raise InputError(
                "nothing to train: the forget set has no texts for the text tower and no images for the vision tower"
            )
        return out


def _run_lora_edit(
    method: str,
    model: Any,
    sets: EditSets,
    cfg: LoraEditConfig,
    *,
    progress: bool,
    workdir: str | None,
) -> EditResult:
    dist = current_dist()  # a world of one unless started by `accelerate launch`
    if dist.enabled:
        model.to(dist.device)
        progress = progress and dist.is_main
    with Timer() as timer:
        edit = _LoraEdit(model, sets, cfg)
        handle = attach_lora(
            model,
            r=cfg.rank,
            alpha=cfg.alpha,
            dropout=cfg.dropout,
            seed=cfg.seed,
            targets=edit.targets,
        )
        weights = {
            "forget": cfg.w_forget,
            "separation": cfg.w_separation,
            "retain_distill": cfg.w_retain_distill,
            "retain_align": cfg.w_retain_align,
            "marginal_align": cfg.w_marginal_align,
            "vision_forget": cfg.w_vision_forget,
            "vision_retain": cfg.w_vision_retain,
            "vision_gallery": cfg.w_vision_gallery,
        }
        fp = checkpoint_key(method, cfg, model.fingerprint(), sets)
        loop = run_loop(
            handle,
            handle.parameters(),
            edit.losses,
            weights,
            steps=cfg.steps,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            log_every=cfg.log_every,
            progress=progress,
            desc=method,
            workdir=workdir,
            checkpoint_every=cfg.checkpoint_every,
            fingerprint=fp,
        )
    dist.finish(method)
    model.eval()
    total = sum(p.numel() for p in model.parameters())
    record = EditRecord(
        method=method,
        config=to_dict(cfg),
        model=getattr(model, "spec", type(model).__name__),
        data_sizes=sets.sizes(),
        curve=loop.curve,
        params_touched=handle.num_parameters(),
        params_total=total,
        time_s=timer.elapsed,
        warnings=list(sets.warnings) + ([loop.stopped_early] if loop.stopped_early else []),
        extra={
            "counterparts": {u.id: c.id for u, c in sets.counterparts.items()},
            "retained_tuples": sets.retained_ids(),
            "align_classes": len(edit.all_tuples),
            "lora_targets": handle.targets,
            "steps_done": loop.steps_done,
            "frozen_text_prefix_layer": edit.prefix.layer if edit.prefix is not None else None,
            "frozen_image_prefix_at": (
                edit.image_split.at if edit.image_split is not None else None
            ),
            "resumed_from": loop.resumed_from,
        },
    )
    refs = {
        "T0_target": edit.T0_target,
        "T0_retain": edit.T0_retain,
        "V0_forget": edit.V0_forget,
        "V0_ftarget": edit.V0_ftarget,
        "V0_retain": edit.V0_retain,
    }
    return EditResult(model=model, record=record, adapter=handle, artifacts={"references": refs})


@register_method(
    "relational-lora",
    "LoRA unlearning of unsafe O-R-O tuples, keeping marginals and safe neighbours",
    LoraEditConfig,
)
def relational_lora(
    model: Any,
    policy: Any,
    cfg: LoraEditConfig | None = None,
    *,
    progress: bool = True,
    workdir: str | None = None,
) -> EditResult:
    """Edit ``model`` (in place) so the policy's unsafe tuples stop aligning; see module docs."""
    cfg = cfg or LoraEditConfig()
    if policy is None:
        raise InputError("relational-lora needs a safety policy")
    sets = relational_sets(policy, cfg.data)
    return _run_lora_edit("relational-lora", model, sets, cfg, progress=progress, workdir=workdir)


@register_method(
    "concept-erasure",
    "baseline: LoRA erasure of each unsafe tuple's isolated concept (every tuple with its object)",
    LoraEditConfig,
)
def concept_erasure(
    model: Any,
    policy: Any,
    cfg: LoraEditConfig | None = None,
    *,
    progress: bool = True,
    workdir: str | None = None,
) -> EditResult:
    """Same machinery as relational-lora, but forgets every tuple containing the concept."""
    cfg = cfg or LoraEditConfig()
    if policy is None:
        raise InputError(
            "concept-erasure needs a safety policy (its concepts come from the unsafe tuples)"
        )
    sets = concept_sets(policy, cfg.concept_role, cfg.data)
    return _run_lora_edit("concept-erasure", model, sets, cfg, progress=progress, workdir=workdir)
