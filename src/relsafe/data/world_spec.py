"""A run config's ``world:`` entry (and ``visu:``) turned into a :class:`relsafe.data.world.World`.

Kept apart from :mod:`relsafe.data.world` because opening a world reads files of every kind
(vocabulary, manifest, ViSU file), and the ViSU reader itself builds quadruplets from a world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relsafe.data.world import ManifestImages, World, relworld, text_only_world
from relsafe.errors import ConfigError
from relsafe.world.vocab import Vocabulary, default_vocabulary, load_vocabulary

__all__ = ["WORLD_KEYS", "check_world_spec", "open_world"]

WORLD_KEYS = ("vocabulary", "data", "skip_bad", "visu")
"""The keys of a ``world:`` mapping."""


def check_world_spec(spec: Any, where: str = "world") -> None:
    """Refuse a ``world:`` entry that is neither None, ``relworld`` nor a mapping of
    :data:`WORLD_KEYS` (before any file is read)."""
    if spec is None or spec == "relworld":
        return
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: 'relworld' or a mapping {{vocabulary: ..., data: ...}}, got {spec!r}"
        )
    bad = sorted(set(spec) - set(WORLD_KEYS))
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; expected {list(WORLD_KEYS)}")


def open_world(
    spec: Any, policy_vocab: Vocabulary | None = None, base: Path | None = None
) -> World:
    """A world from a run config's ``world:`` entry: ``relworld`` (or None) for the built-in
    world, or ``{vocabulary: NAME|PATH, data: MANIFEST, skip_bad: false}``.

    The vocabulary defaults to the policy's; a world whose vocabulary differs from the policy's
    is refused (the policy's words would not be the data's)."""
    from relsafe.data.manifest import load_manifest

    check_world_spec(spec)
    if spec is None or spec == "relworld":
        w = relworld()
    elif isinstance(spec, dict):
        vocab = (
            load_vocabulary(spec["vocabulary"], base=base)
            if spec.get("vocabulary") is not None
            else (policy_vocab or default_vocabulary())
        )
        data = spec.get("data")
        if data is None:
            w = relworld() if vocab is default_vocabulary() else text_only_world(vocab)
        else:
            path = Path(data)
            if base is not None and not path.is_absolute() and not path.exists():
                path = base / path
            manifest = load_manifest(path, vocab, skip_bad=bool(spec.get("skip_bad", False)))
            w = World(vocab, ManifestImages(manifest), f"{vocab.name} + {path.name}")
    else:
        raise ConfigError(
            f"world must be 'relworld' or a mapping {{vocabulary: ..., data: ...}}, got {spec!r}"
        )
    if isinstance(spec, dict) and spec.get("visu") is not None:
        from relsafe.data.visu import load_visu

        w = w.with_visu(load_visu(Path(spec["visu"]) if base is None else base / spec["visu"]))
    if policy_vocab is not None and w.vocabulary.sha256 != policy_vocab.sha256:
        raise ConfigError(
            f"the world's vocabulary {w.vocabulary.name!r} ({w.vocabulary.source}) is not the "
            f"policy's {policy_vocab.name!r} ({policy_vocab.source}): name the same vocabulary "
            "in both"
        )
    return w
