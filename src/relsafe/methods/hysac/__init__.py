"""HySAC: hyperbolic safety-aware fine-tuning (METHODS.md section 4; Poppi et al., CVPR 2025).

The model is wrapped in a :class:`~relsafe.models.hyperbolic.HyperbolicDualEncoder` (learned
curvature, per-modality feature scales, logit scale) and fine-tuned with LoRA (r=16) on both towers
of its base plus those scalars, on quadruplets ``(S, V, U, G)`` = (safe text, safe image, unsafe
text, unsafe image). The package, by concern:

* :mod:`~relsafe.methods.hysac.config`: :class:`HySACConfig`;
* :mod:`~relsafe.methods.hysac.data`: :class:`QuadData`, quadruplets from a policy or a dict;
* :mod:`~relsafe.methods.hysac.losses`: the contrastive and entailment terms, :func:`loss_terms`;
* :mod:`~relsafe.methods.hysac.targets`: the LoRA layers and the frozen-prefix cuts;
* :mod:`~relsafe.methods.hysac.trainer`: the run (validation, early stopping, resume state);
* here: the method's entry point :func:`hysac`, registered as ``hysac``.

Losses: **hyperbolic contrastive** on the pairs ``(S,V)``, ``(U,G)``, ``(S,G)``, ``(U,V)``
(``nce_*``) and **entailment** ``S=>V``, ``U=>G`` and ``V=>U`` (``ent_*``). In ``A=>B``, ``A``
is the *general* concept and the cone's apex ``x``: it must sit closer to the origin, and ``B``
(the specific one, ``y``) must lie inside the cone of ``A``, i.e. further out. So ``S=>V`` puts
the safe text inside-out of the safe image, ``V=>U`` puts unsafe text beyond the safe image and
``U=>G`` the unsafe image beyond its text: the radial order ``S < V < U < G`` (safe content near
the origin, unsafe content further out), exactly the reference's ``entailmentLoss_A(S, V)``,
``entailmentLoss_A(U, G)`` and ``entailmentLoss_D(V, U)``.

**Retain pool** (issue 14, equal data budget; ``retain_pool: true``, off by default since VAL
chose off, and only when a policy is given): the policy's retain pool
(:mod:`relsafe.data.retain_pool`, relational-lora's retain tuples, texts and images) gives safe
S-V anchor pairs; each step adds ``pool_batch`` of them to the ``batch_size`` quadruplets' S and
V rows in ``nce_SV`` (multi-positive by tuple) and ``ent_SV``,
HySAC's "safe anchors across the whole dataset". Validation stays on quadruplets.
With ``pool_entailment: true`` (and the pool on; alone it does nothing) each pool image also
entails an unsafe text, the step's quadruplet unsafe text of batch row ``i mod B`` for pool row
``i``, in ``ent_VU``: every safe image of the world, not only the counterparts, then lies nearer the
origin than unsafe content, which is what the unsafe classifier (distance from the origin) reads.
The reference has no such term: in ViSU every safe pair has an unsafe twin, so its ``V=>U``
covers all its safe content; RelWorld's neighbours and unrelated tuples have none. Measured in
docs/benchmarks.md ("HySAC with the retain pool").

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

LoRA layers and frozen-prefix caches: see :mod:`~relsafe.methods.hysac.targets`. Validation and
early stopping: see :mod:`~relsafe.methods.hysac.trainer`.

After training, on the validation embeddings: traversal radii (the ``traversal_quantile`` of the
distances from the origin of safe texts S and safe images V) and per-modality unsafe thresholds
(distance from the origin, best balanced accuracy) are fitted and stored in the model.

**Multi-process / multi-GPU**: like every training method, through :mod:`relsafe.distributed`
(``accelerate launch --num_processes N -m relsafe.cli edit --method hysac ...``, see
docs/distributed.md): ``batch_size`` is the *global* batch, each process embeds its shard and
every contrastive term sees the negatives of the whole global batch; gradients are all-reduced,
checkpoints hold global state written by the main process (resumable on any process count), and
only the main process writes the output folder (the others raise
:class:`~relsafe.errors.NotMainProcess`, on which the command line exits 0). The config key
``distributed`` is kept for old configs and no longer needed: the launcher decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relsafe.config import to_dict
from relsafe.distributed import current as current_dist
from relsafe.distributed import gather_with_local_grad
from relsafe.methods.base import EditRecord, EditResult, Timer, register_method
from relsafe.methods.hysac.config import HySACConfig
from relsafe.methods.hysac.data import (
    KINDS,
    QuadData,
    policy_quadruplets,
    pool_pairs,
    quad_data,
    train_val,
)
from relsafe.methods.hysac.losses import (
    CONTRASTIVE_LABELS,
    CONTRASTIVE_TERMS,
    DEFAULT_WEIGHTS,
    ENTAILMENT_TERMS,
    entailment_loss,
    hyperbolic_contrastive,
    loss_terms,
)
from relsafe.methods.hysac.targets import image_split, lora_targets, text_split
from relsafe.methods.hysac.trainer import (
    EarlyStop,
    HySACRun,
    traversal_check,
    unit_norm_alphas,
)
from relsafe.methods.lora import attach_lora
from relsafe.methods.training import ExtraState, checkpoint_key, run_loop
from relsafe.models.hyperbolic import HyperbolicDualEncoder

__all__ = [
    "CONTRASTIVE_LABELS",
    "CONTRASTIVE_TERMS",
    "DEFAULT_WEIGHTS",
    "ENTAILMENT_TERMS",
    "KINDS",
    "HySACConfig",
    "HySACRun",
    "QuadData",
    "entailment_loss",
    "gather_with_local_grad",
    "hyperbolic_contrastive",
    "hysac",
    "image_split",
    "lora_targets",
    "loss_terms",
    "policy_quadruplets",
    "quad_data",
    "text_split",
]


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
    dist = current_dist()  # a world of one unless started by `accelerate launch`
    if isinstance(model, HyperbolicDualEncoder):
        hmodel = model
    else:
        hmodel = HyperbolicDualEncoder(
            model, curvature=cfg.curvature_init, aperture_k=cfg.aperture_k
        )
    if dist.enabled:
        hmodel.to(dist.device)
        progress = progress and dist.is_main
    with Timer() as timer:
        hmodel.eval()
        train, val = train_val(hmodel, policy, cfg, data)
        pool_data, pool = pool_pairs(hmodel, policy, cfg, train)
        if cfg.alpha_init == "unit_norm" and hmodel is not model:
            unit_norm_alphas(hmodel, train)
        alpha_start = {m: float(hmodel.alpha(m).detach()) for m in ("text", "image")}
        base_fp = hmodel.fingerprint()
        targets = lora_targets(hmodel, cfg)
        text_cut = image_cut = None
        if cfg.cache_frozen:  # chosen before LoRA wraps the target modules
            text_cut = text_split(hmodel, targets["text"])
            image_cut = image_split(hmodel, targets["vision"])
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
        fp = checkpoint_key("hysac", cfg, base_fp, train, val, pool_data)
        wd = Path(workdir) if workdir else None  # global state, written by the main process
        run = HySACRun(hmodel, handle, train, val, cfg, dist, wd, fp, pool_data)
        with Timer() as cache_timer:
            run.use_caches(text_cut, image_cut)
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
                extra=ExtraState("hysac", run.checkpoint_state, run.restore_state),
            )
        except EarlyStop:
            pass
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
            run.load_state(run.best_state)
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
        val_traversal = traversal_check(hmodel, emb)
        warnings += hmodel.clamp_warnings()
        dist.finish("hysac")
    record = EditRecord(
        method="hysac",
        config=to_dict(cfg),
        model=getattr(model, "spec", type(model).__name__),
        data_sizes={
            "train_quadruplets": len(train),
            "val_quadruplets": len(val),
            **(pool.sizes() if pool is not None else {}),
        },
        curve=run.curve,
        params_touched=handle.num_parameters() + sum(p.numel() for p in scalars),
        params_total=sum(p.numel() for p in hmodel.parameters()),
        time_s=timer.elapsed,
        warnings=warnings,
        extra={
            "lora_targets": handle.targets,
            "frozen_prefix": {
                "text_layer": None if text_cut is None else text_cut.at,
                "vision_stage": None if image_cut is None else image_cut.at,
                "cache_s": cache_timer.elapsed,
            },
            "weights_normalised": run.weights,
            "steps_done": steps_done,
            **(
                {
                    "retained_tuples": pool.retained_ids(),
                    "retain_pool_pairs": 0 if pool_data is None else len(pool_data),
                }
                if pool is not None
                else {}
            ),
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
            "distributed": {"world_size": dist.world},
        },
    )
    return EditResult(model=hmodel, record=record, adapter=handle)
