"""Shared pytest fixtures. Keep each fixture small and documented; add new ones below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("CI", "true")  # no progress bars in test output
# ``dtype: auto`` is float32 in every test, on any CPU (also in the CLI subprocesses): on a CPU
# with bf16 units auto would pick bfloat16, whose scores depend on the batch's size and
# composition (~1e-3), so tests that compare batchings would pass or fail by machine. Tests of the
# bf16 path ask for ``bfloat16``, or lift this (test_engine_precision).
os.environ.setdefault("RELSAFE_CPU_BF16", "0")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel folder (seed 0, see relsafe.testing.tiny_clip_config). Read-only:
    tests that change weights load their own copy with ``load_model(str(tiny_clip_dir))``."""
    from relsafe.testing import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir: Path):  # noqa: ANN201 - HFCLIPModel
    """The tiny CLIP loaded once per session through the registry. Do not modify its weights."""
    from relsafe.models.registry import load_model

    return load_model(str(tiny_clip_dir))


@pytest.fixture(scope="session")
def serve_safety():  # noqa: ANN201 - relsafe.safety.SafetyModel
    """relsafe-mini with a ``prompt`` unsafe classifier fitted on the default policy (a few
    seconds), wrapped in a SafetyModel: what the ``serve`` tests run the service on."""
    from relsafe.api import load_model, load_policy
    from relsafe.eval.unsafe_cls import fit_unsafe_classifier
    from relsafe.safety.model import SafetyModel

    model, policy = load_model("relsafe-mini"), load_policy("default")
    clf = fit_unsafe_classifier(model, policy, "prompt", attach=False)
    return SafetyModel(model, clf, policy, spec="relsafe-mini", classifier_source="test fit")


@pytest.fixture(scope="session")
def serve_index(serve_safety, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """A small image gallery index for the ``serve`` tests: 2 RelWorld test images (PNG files,
    labelled subject/relation/object) of every unsafe tuple, counterpart and neighbour of the
    default policy, indexed with ``serve_safety``."""
    from PIL import Image

    from relsafe.data.probes import render_probe_images
    from relsafe.eval.unsafe_cls import content_groups
    from relsafe.gallery import build_index

    groups = content_groups(serve_safety.policy, "all")
    tuples = tuple(groups["unsafe"] + groups["counterparts"] + groups["neighbours"])
    imgs, labels, _ = render_probe_images(2, 64, 0, tuples, "test")
    root = tmp_path_factory.mktemp("serve_gallery")
    paths, rows = [], []
    for i, (im, lab) in enumerate(zip(imgs, labels, strict=True)):
        t = tuples[int(lab)]
        p = root / f"{i:03d}_{t.id.replace('|', '_')}.png"
        Image.fromarray(im).save(p)
        paths.append(p)
        rows.append({"subject": t.subject, "relation": t.relation, "object": t.object})
    return build_index(
        serve_safety,
        images=paths,
        labels=rows,
        root=root,
        out=root.parent / "serve_index",
        progress=False,
    )
