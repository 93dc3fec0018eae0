"""``relsafe.api.safety``: load a model put to work (:class:`~relsafe.safety.SafetyModel`) from
what a user names: a model spec or edit folder, a policy, a classifier folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relsafe.api._resolve import load_model, load_policy
from relsafe.errors import InputError
from relsafe.eval.unsafe_cls import UnsafeClassifier
from relsafe.safety.model import SafetyModel, radius_score_scale

__all__ = ["load_safety_model", "policy_of_model"]


def policy_of_model(spec: str | Path) -> str | None:
    """The policy an edit output folder was made under (its ``provenance.json``), else None."""
    from relsafe.utils_io import read_json_file

    path = Path(spec).expanduser()
    prov = path / "provenance.json"
    if not (path.is_dir() and prov.is_file()):
        return None
    try:
        data = read_json_file(prov, "edit provenance")
    except InputError:
        return None
    pol = (data.get("config") or {}).get("policy") if isinstance(data, dict) else None
    return pol if isinstance(pol, str) and pol else None


def load_safety_model(
    model: str,
    *,
    policy: Any = None,
    classifier: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 256,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> SafetyModel:
    """Load model spec ``model`` with its classifier (see the module docs for the order) and its
    policy: ``policy`` (a name, path or Policy), else the one an edit folder was made under, else
    none. ``policy=False`` forces none."""
    from relsafe.engine import EmbeddingEngine
    from relsafe.safety.store import default_classifier_dir, load_classifier

    loaded = load_model(model)
    if policy is None:
        policy = policy_of_model(model)
    pol = None if policy is False else load_policy(policy)
    engine = EmbeddingEngine(
        loaded, device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress
    )
    fp = loaded.fingerprint()
    folder = Path(classifier) if classifier is not None else default_classifier_dir(model)
    if classifier is not None or (folder is not None and folder.is_dir()):
        assert folder is not None
        clf, meta = load_classifier(folder, model_fingerprint=fp)
        sm = SafetyModel(
            loaded,
            clf,
            pol,
            engine=engine,
            score_scale=meta.get("score_scale"),
            spec=str(model),
            classifier_source=str(folder),
        )
    elif loaded.supports_unsafe_score and getattr(loaded, "unsafe_threshold", None):
        th = {m: float(t) for m, t in loaded.unsafe_threshold.items()}
        clf = UnsafeClassifier("radius", th, {}, {m: 0 for m in th})
        sm = SafetyModel(
            loaded,
            clf,
            pol,
            engine=engine,
            score_scale=radius_score_scale(loaded),
            spec=str(model),
            classifier_source="model's own radius thresholds",
        )
    else:
        hint = f" --policy {policy}" if isinstance(policy, str) else " --policy default"
        raise InputError(
            f"{model} has no unsafe classifier: fit one with `relsafe classify fit --model {model}"
            f"{hint}` (written beside the model, or pass --out and then --classifier)"
        )
    sm._fingerprint = fp
    return sm
