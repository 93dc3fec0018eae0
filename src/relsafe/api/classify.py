"""``relsafe.api.classify``: fit an unsafe classifier for a model (``relsafe classify fit``) and
classify texts and images with it (``relsafe classify``).

:func:`fit_classifier` fits a ``prompt``, ``probe`` or ``radius`` scorer
(:class:`~relsafe.eval.unsafe_cls.UnsafeClassifier`) on labelled material, either a policy's
RelWorld ``VAL`` material (unsafe tuples against all safe content, as the ``unsafe_cls`` suite fits
its baselines) or a ViSU file (unsafe = ``U`` texts / ``G`` images, safe = ``S`` texts / ``V``
images), and saves it as a classifier folder (:mod:`relsafe.safety.store`), by default beside the
model, where :func:`~relsafe.api.safety.load_safety_model` finds it.

:func:`classify` writes one JSON line per input (texts first, then images, each in input order)::

    {"input": "text", "id": "a child drinking wine", "flagged": true, "score": 1.9,
     "threshold": 0.1, "category": "child|drinking|wine",
     "nearest": [{"category": "child|drinking|wine", "score": 0.93}, ...], "classifier": "probe"}

Inputs are embedded and written ``chunk_size`` at a time (bounded memory) into a temporary file
renamed onto ``out`` at the end: a failure (a missing or corrupt image fails the run, with an
:class:`~relsafe.errors.InputError` naming the file) leaves no output, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relsafe.api._resolve import checkpoint_files, load_model, load_policy
from relsafe.errors import InputError

__all__ = ["CHUNK_SIZE", "ClassifyOutcome", "FitOutcome", "classify", "fit_classifier"]

CHUNK_SIZE = 1024
"""Inputs embedded and written per step of :func:`classify` (bounds memory on any input size)."""

FIT_SCORERS = ("auto", "prompt", "probe", "radius")
VAL_SPLITS = ("validation", "val")
"""Split names ``classify fit --visu`` uses when a Hugging Face ``DatasetDict`` folder has them."""
_METRICS = ("balanced_accuracy", "auroc", "tpr_unsafe", "fpr_safe")


@dataclass
class FitOutcome:
    """What :func:`fit_classifier` wrote: the folder, the scorer kind, the thresholds, the fit's
    metrics on its own material (``{modality: {metric: value, "n": items}}``), score scales and
    the fitted :class:`~relsafe.eval.unsafe_cls.UnsafeClassifier` itself."""

    out: Path
    kind: str
    thresholds: dict[str, float]
    metrics: dict[str, dict[str, float]]
    score_scale: dict[str, float]
    classifier: Any = None


@dataclass
class ClassifyOutcome:
    """What :func:`classify` wrote: ``out``, inputs per modality, flagged per modality, the
    classifier kind, its thresholds and where it came from."""

    out: Path
    n: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    classifier: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    classifier_source: str = ""


# ---- fit --------------------------------------------------------------------------------------


def _visu_material(engine: Any, path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{modality: {"unsafe": U/G embeddings, "counterparts": S/V embeddings}}`` of a ViSU file;
    a modality whose safe or unsafe side has no usable item is left out."""
    from relsafe.data.visu import load_visu

    data = None
    if Path(path).is_dir():  # a datasets folder: its validation split when it has splits
        for split in VAL_SPLITS:
            try:
                data = load_visu(path, split=split)
                break
            except InputError as e:
                if "has no split" not in str(e):
                    raise
    data = data or load_visu(path)
    out = {
        "text": {"unsafe": engine.embed_texts(data.U), "counterparts": engine.embed_texts(data.S)}
    }
    if data.V is not None and data.G is not None:
        safe = [v for v in data.V if v is not None]
        unsafe = [g for g in data.G if g is not None]
        if safe and unsafe:
            out["image"] = {
                "unsafe": engine.embed_images(unsafe),
                "counterparts": engine.embed_images(safe),
            }
    return out


def _fit_on(
    model: Any, engine: Any, policy: Any, kind: str, material: dict[str, dict[str, torch.Tensor]]
) -> Any:
    """Fit scorer ``kind`` and a max-balanced-accuracy threshold per modality of ``material``."""
    from relsafe.eval.unsafe_cls import UnsafeClassifier, fit_probe, unsafe_prompts
    from relsafe.models.hyperbolic import best_threshold

    params: dict[str, Any] = {}
    if kind == "prompt":
        if policy is None:
            raise InputError(
                "scorer 'prompt' needs --policy: its prompts are the policy tuples' captions"
            )
        up, sp = unsafe_prompts(policy)
        params = {"unsafe": engine.embed_texts(up), "safe": engine.embed_texts(sp)}
    elif kind == "probe":
        params = {m: fit_probe(v["counterparts"], v["unsafe"]) for m, v in material.items()}
    elif kind == "radius" and not model.supports_unsafe_score:
        raise InputError("scorer 'radius' needs a hyperbolic model; use 'prompt' or 'probe'")
    clf = UnsafeClassifier(kind, {}, params)
    for m, v in material.items():
        safe, unsafe = clf.score(model, v["counterparts"], m), clf.score(model, v["unsafe"], m)
        clf.thresholds[m] = best_threshold(safe, unsafe)
        clf.fitted_on[m] = len(safe) + len(unsafe)
    return clf


def _fit_metrics(
    model: Any, clf: Any, material: dict[str, dict[str, torch.Tensor]]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The fit's metrics on its own material and the std of the pooled scores, per modality."""
    from relsafe.eval.unsafe_cls import classification_metrics

    metrics: dict[str, dict[str, float]] = {}
    scale: dict[str, float] = {}
    for m in clf.thresholds:
        if m not in material:
            continue
        scores = {g: clf.score(model, e, m) for g, e in material[m].items() if len(e)}
        got = classification_metrics(scores, clf.thresholds[m])
        metrics[m] = {k: float(got[k][0]) for k in _METRICS}
        metrics[m]["n"] = int(got["balanced_accuracy"][1])
        std = float(torch.cat(list(scores.values())).double().std())
        scale[m] = std if math.isfinite(std) and std > 0 else 1.0
    return metrics, scale


def fit_classifier(
    model: str,
    *,
    policy: Any = None,
    visu: str | Path | None = None,
    scorer: str = "auto",
    out: str | Path | None = None,
    seed: int = 0,
    n_texts_per_tuple: int = 4,
    n_images_per_tuple: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> FitOutcome:
    """Fit an unsafe classifier for ``model`` and save it to ``out`` (default: beside the model).

    Material: ``visu`` (a ViSU file; ``policy``, if given, only names the prompts of the
    ``prompt`` scorer) or else ``policy``'s RelWorld ``VAL + seed`` material
    (:func:`~relsafe.eval.unsafe_cls.val_material`). ``scorer`` ``auto`` is ``radius`` for a
    hyperbolic model that carries its own thresholds (kept as they are when fitting on a policy),
    else ``probe``. Each threshold maximises balanced accuracy on the material.

    Raises:
        InputError: no material, no folder to write to (a bundled model: pass ``out``), an
        existing classifier folder without ``overwrite``, an unknown scorer.
    """
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.unsafe_cls import fit_scorer, val_material
    from relsafe.outputs import output_dir, writing
    from relsafe.provenance import collect_provenance
    from relsafe.safety.store import default_classifier_dir, save_classifier

    if scorer not in FIT_SCORERS:
        raise InputError(f"--scorer {scorer!r} is not one of {list(FIT_SCORERS)}")
    if policy is None and visu is None:
        raise InputError(
            "classify fit needs labelled material: --policy P (its RelWorld VAL material) or "
            "--visu FILE"
        )
    folder = Path(out) if out is not None else default_classifier_dir(model)
    if folder is None:
        raise InputError(
            f"{model} is not a folder, so the classifier has nowhere to go beside it: "
            "pass --out DIR (and later `relsafe classify --classifier DIR`)"
        )
    output_dir(folder, overwrite=overwrite)
    pol = load_policy(policy)
    loaded = load_model(model)
    own = bool(loaded.supports_unsafe_score and getattr(loaded, "unsafe_threshold", None))
    kind = ("radius" if own else "probe") if scorer == "auto" else scorer
    engine = EmbeddingEngine(loaded, progress=progress)
    if visu is not None:
        material = _visu_material(engine, visu)
        clf = _fit_on(loaded, engine, pol, kind, material)
    else:
        val = val_material(
            engine, pol, n_texts=n_texts_per_tuple, n_images=n_images_per_tuple, size=64, seed=seed
        )
        clf = fit_scorer(loaded, engine, pol, kind, val, 1e-3)
        material = val()
    metrics, scale = _fit_metrics(loaded, clf, material)
    config = {
        "model": str(model),
        "scorer": kind,
        "policy": getattr(pol, "name", None),
        "visu": str(visu) if visu is not None else None,
        "n_texts_per_tuple": n_texts_per_tuple,
        "n_images_per_tuple": n_images_per_tuple,
        "material": "visu" if visu is not None else "relworld-val",
    }
    files = checkpoint_files([loaded], pol) + ([Path(visu)] if visu is not None else [])
    prov = collect_provenance(config, seeds={"seed": seed}, checkpoints=files)
    output_dir(folder, overwrite=overwrite)  # again: the path may have changed during the work
    with writing(folder):
        save_classifier(
            clf,
            folder,
            model_fingerprint=loaded.fingerprint(),
            score_scale=scale,
            policy=getattr(pol, "name", None),
            provenance=prov,
            metrics=metrics,
        )
    return FitOutcome(folder, kind, dict(clf.thresholds), metrics, scale, clf)


# ---- classify ---------------------------------------------------------------------------------


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def classify(
    model: str,
    *,
    texts: Sequence[str] | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
    policy: Any = None,
    classifier: str | Path | None = None,
    out: str | Path,
    batch_size: int = 256,
    top_k: int = 3,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> ClassifyOutcome:
    """Classify ``texts`` and image files with ``model`` and write the JSONL rows to ``out`` (see
    the module docs). The classifier is chosen by :func:`~relsafe.api.safety.load_safety_model`:
    ``classifier``, else the one beside the model, else a hyperbolic model's own thresholds."""
    from tqdm.auto import tqdm

    from relsafe.api.safety import load_safety_model
    from relsafe.outputs import output_file, writing
    from relsafe.utils_io import atomic_path

    texts = list(texts or [])
    paths = [Path(p) for p in images or []]
    if not texts and not paths:
        raise InputError("classify needs texts and/or images (--texts FILE, --images DIR)")
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    if chunk_size < 1 or batch_size < 1:
        raise InputError("batch and chunk sizes must be at least 1")
    out = output_file(out, overwrite=overwrite)
    sm = load_safety_model(
        model, policy=policy, classifier=classifier, device=device, batch_size=batch_size
    )
    work: list[tuple[str, Sequence[Any]]] = [("text", texts), ("image", paths)]
    for modality, items in work:
        if items and modality not in sm.classifier.thresholds:
            raise InputError(
                f"the {sm.classifier.kind} classifier ({sm.classifier_source}) has no {modality} "
                f"threshold; it classifies {sorted(sm.classifier.thresholds)} inputs only"
            )
    result = ClassifyOutcome(
        out,
        classifier=sm.classifier.kind,
        thresholds=dict(sm.classifier.thresholds),
        classifier_source=sm.classifier_source,
    )
    steps = sum(math.ceil(len(items) / chunk_size) for _, items in work)
    output_file(out, overwrite=overwrite)
    with (
        writing(out),
        atomic_path(out) as tmp,
        open(tmp, "w", encoding="utf-8") as f,
        tqdm(total=steps, desc="classify", unit="chunk", disable=not progress) as bar,
    ):
        for modality, items in work:
            if not items:
                continue
            result.n[modality] = len(items)
            result.flagged[modality] = 0
            for a, b in _chunks(len(items), chunk_size):
                part = items[a:b]
                assessment = sm.classify(
                    modality, [str(p) for p in part] if modality == "image" else part
                )
                result.flagged[modality] += int(assessment.flagged.sum())
                for i, item in enumerate(part):
                    row = {"input": modality, "id": str(item), **assessment.item(i, top_k)}
                    row["classifier"] = sm.classifier.kind
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                bar.update(1)
        f.flush()
    return result
