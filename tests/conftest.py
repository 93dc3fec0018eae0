"""Shared pytest fixtures. Keep each fixture small and documented; add new ones below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("CI", "true")  # no progress bars in test output


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
