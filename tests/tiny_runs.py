"""Tiny method and suite configs for end-to-end tests of ``relsafe run`` / ``api.run`` on the
tiny random CLIP (``tiny_clip_dir``): seconds per stage, every stage exercised. Shared by
test_api, test_run_report and test_run_faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_DATA = {
    "texts_per_forget_tuple": 2,
    "images_per_forget_tuple": 1,
    "texts_per_retain_tuple": 1,
    "images_per_retain_tuple": 1,
    "n_unrelated": 2,
    "size": 32,
}
TINY_LORA = {"steps": 2, "data": TINY_DATA}
TINY_SAFECLIP = {"steps": 2, "n_per_pair": 2, "batch_size": 2, "size": 32}
# every registered method, tiny (each stage a few seconds on the tiny CLIP at 32 px)
EVERY_METHOD = [
    {"name": "relational-lora", "config": {"steps": 2, "data": TINY_DATA}},
    {"name": "concept-erasure", "config": {"steps": 2, "data": TINY_DATA}},
    {"name": "safeclip", "config": {"steps": 2, "n_per_pair": 2, "batch_size": 2, "size": 32}},
    {"name": "uwm", "config": {"n_per_pair": 2, "size": 32, "batch_size": 4}},
    {
        "name": "hysac",
        "config": {"steps": 2, "batch_size": 4, "n_per_pair": 2, "n_val_per_pair": 1, "size": 32},
    },
]
TINY_ZS = {"n_per_tuple": 1, "ood_styles": [], "corruptions": [], "paraphrase_variants": 1}
TINY_REL = {"n_per_tuple": 1, "ood_styles": [], "corruptions": [], "text_variants": 1}


def tiny_run_config(
    model_dir: Path,
    methods: list[dict[str, Any]] | None = None,
    suites: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A run config on ``model_dir`` with policy ``tiny``: ``methods`` (default: relational-lora
    with :data:`TINY_LORA`), ``suites`` (default: zeroshot with :data:`TINY_ZS`) and any other
    top-level key (``examples``, ``report``)."""
    return {
        "model": str(model_dir),
        "policy": "tiny",
        "methods": methods or [{"name": "relational-lora", "config": TINY_LORA}],
        "suites": suites or {"zeroshot": TINY_ZS},
        "seeds": 1,  # one training seed keeps end-to-end tests fast; tests of seeds ask for more
        **top,
    }
