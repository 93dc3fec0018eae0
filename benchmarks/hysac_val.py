"""HySAC settings on VAL (issue 14): the relational summary *and* the radius classifier per group.

The benchmark's hysac row misses two targets: unsafe-classification AUROC >= 0.9 against all safe
content (TEST: text 0.559, image 0.807) and zero-shot within 0.05. Per group the TEST AUROC is
high against the counterparts HySAC trains on (text 0.95) and near chance against the other
neighbours and unrelated tuples, which its quadruplets never show. This script scores HySAC
variants on VAL only, so that a setting can be chosen without reading TEST:

* the relational suite on VAL images and canonical captions, against the original (the numbers
  ``relsafe tune`` picks by: summary, harmful landing, preservation on unseen strings);
* the model's own radius classifier (distance from the origin, the threshold the method fitted)
  on VAL material: ``eval``-split captions (the canonical template, never trained on) and VAL
  probe images, per tuple of every class, with the unrelated tuples a method may retain on
  (:func:`relsafe.eval.unsafe_cls.val_scores`, what ``relsafe tune`` records as ``auroc_*``;
  the evaluation-only third of the unrelated tuples is TEST's).

Every variant starts from :data:`BASE` (the benchmark's hysac lr, alpha and steps) and applies
its ``KEY=VALUE`` overrides (comma-separated; ``base`` for none). Evaluations in float32, as
``relsafe tune`` and the benchmark::

    python benchmarks/hysac_val.py --variants base retain_pool=true 'retain_pool=true,pool_batch=8'
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch

from relsafe import api
from relsafe.engine import EmbeddingEngine
from relsafe.eval.relational_suite import RelationalConfig
from relsafe.eval.unsafe_cls import classification_metrics, val_scores

# the start of every variant: the benchmark's hysac entry as it was when the exploratory table in
# docs/benchmarks.md was made (configs/benchmark.yaml now also sets pool_entailment: true, which
# acts only with the pool; a pool variant here gets it only when it asks for it)
BASE = ["lr=1e-4", "lora_alpha=16.0", "steps=600"]
GROUPS = ("counterparts", "neighbours", "unrelated")


def pick_row(rows: list, metric: str, slice_: str = "all", attack: str = "none") -> float | None:
    for r in rows:
        if r.metric == metric and r.slice == slice_ and r.attack == attack:
            return float(r.value)
    return None


def radius_metrics(model, policy) -> dict[str, dict]:
    """``{modality: classification_metrics}`` of the model's radius classifier (its own
    threshold) on the VAL material of :func:`relsafe.eval.unsafe_cls.val_scores`."""
    scores = val_scores(model, EmbeddingEngine(model, dtype="float32"), policy)
    out = {}
    for modality, groups in scores.items():
        out[modality] = classification_metrics(groups, model.unsafe_threshold[modality])
        out[modality]["median"] = {c: float(torch.median(s)) for c, s in groups.items()}
    return out


def edit_and_score(
    model_name: str,
    policy,
    original,
    overrides: list[str],
    dtype: str = "float32",
    rad: Callable | None = None,
):
    """One ``hysac`` edit with ``overrides`` (in a temporary folder), then the relational suite on
    VAL against ``original`` in ``dtype``: ``(edit seconds, rows, rad(edited model) or None)``."""
    rel_cfg = api.build_config(
        RelationalConfig, {"split": "val", "ood_styles": [], "corruptions": []}
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = api.edit(
            "hysac",
            out=f"{tmp}/e",
            model=model_name,
            policy=policy,
            overrides=overrides,
            progress=False,
        )
        secs = time.perf_counter() - t0
        model = api.load_model(str(out.model_spec))
        rel = api.evaluate_model(
            "relational",
            rel_cfg,
            model,
            model_label="hysac",
            method="hysac",
            policy=policy,
            reference=original,
            engine=EmbeddingEngine(model, dtype=dtype),
            reference_engine=EmbeddingEngine(original, dtype=dtype),
        )
        return secs, rel, None if rad is None else rad(model)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="relsafe-mini")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--variants", nargs="+", default=["base"])
    args = ap.parse_args(argv)
    policy = api.load_policy(args.policy)
    original = api.load_model(args.model)
    lines = []
    for spec in args.variants:
        extra = [] if spec == "base" else [s for s in spec.split(",") if s]
        secs, rel, rad = edit_and_score(
            args.model, policy, original, [*BASE, *extra], rad=lambda m: radius_metrics(m, policy)
        )
        cells = [
            pick_row(rel, "summary", attack="all"),
            pick_row(rel, "harmful_landing_rate"),
            pick_row(rel, "preservation", attack="all"),
            pick_row(rel, "accuracy_delta", "unrelated:unseen"),
        ]
        for modality in ("text", "image"):
            m = rad[modality]
            cells += [m["auroc"][0], *(m[f"auroc_{g}"][0] for g in GROUPS), m["fpr_safe"][0]]
        txt = " | ".join("–" if c is None else f"{c:.3f}" for c in cells)
        line = f"| {spec} | {secs:.0f} | {txt} |"
        lines.append(line)
        print(line, "medians:", {k: rad[k]["median"] for k in rad}, flush=True)
    print(
        "\n| variant | edit s | summary | harmful landing | preservation | unrelated (unseen) "
        "| AUROC text | cp | nb | un | FPR text | AUROC image | cp | nb | un | FPR image |"
    )
    print("|---|" + "---:|" * 15)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
