"""Putting a model to work for safety: :class:`SafetyModel` (classify, categories, redirect) and the
classifier files ``relsafe classify fit`` writes (:mod:`relsafe.safety.store`). Loading one from
what a user names is :func:`relsafe.api.load_safety_model`. Shared by the
``classify``, ``search`` and ``serve`` commands."""

from relsafe.safety.model import (
    Assessment,
    Redirect,
    SafetyModel,
)
from relsafe.safety.store import (
    CLASSIFIER_DIR,
    default_classifier_dir,
    load_classifier,
    save_classifier,
)

__all__ = [
    "CLASSIFIER_DIR",
    "Assessment",
    "Redirect",
    "SafetyModel",
    "default_classifier_dir",
    "load_classifier",
    "save_classifier",
]
