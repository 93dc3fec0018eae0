"""Frozen-prefix caches for edits that adapt only the top layers of a tower.

A safety edit trains on a fixed set of inputs (forget captions, their targets, retain captions,
canonical captions, quadruplet images) for hundreds of steps. When the LoRA touches only the top
layers of a tower, the layers below are frozen and their output for a given input never changes,
so the edit runs them once per distinct input and every step runs only the adapted layers. The
result is the same function (``tests/test_lora_methods.py`` and ``tests/test_hysac.py`` check it
against the full forward), several times cheaper on the CPU.

The cut itself belongs to the backbone: :meth:`~relsafe.models.base.DualEncoder.split_tower`
returns a :class:`~relsafe.models.base.TowerSplit` (relsafe-mini cuts both towers; other
backbones return None and the edit uses the plain forward, where restricting the LoRA to the top
layers still shortens backward). Nothing here knows a backbone's module names:

* :func:`frozen_split` finds the deepest cut that keeps a set of trained modules out of the prefix;
* :class:`TextPrefixCache` keeps the prefix activations of a fixed set of texts, keyed by text;
* :func:`prefix_activations` runs a cut's prefix over a batch of inputs (images), in chunks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from relsafe.errors import InputError
from relsafe.methods.lora import lora_root
from relsafe.models.base import DualEncoder, TowerSplit

log = logging.getLogger(__name__)

_LAYER_RE = re.compile(r"\.(?:layers?|stages|blocks)\.(\d+)\.")


def layer_index(module_name: str) -> int | None:
    """The layer (or CNN stage) number in a module name (``...layer.4.attention...`` -> 4)."""
    m = _LAYER_RE.search(module_name)
    return int(m.group(1)) if m else None


def top_layers(names: Sequence[str], n: int) -> list[str]:
    """Keep the names that lie in the top ``n`` numbered layers and every name without a layer
    number (heads). ``n <= 0``, or names without any layer number, keep everything."""
    idx = [layer_index(x) for x in names]
    known = [i for i in idx if i is not None]
    if n <= 0 or not known:
        if n > 0:
            log.warning("no layer numbers in the LoRA target names: adapting all %d", len(names))
        return list(names)
    cut = max(known) + 1 - n
    return [x for x, i in zip(names, idx, strict=True) if i is None or i >= cut]


def root_modules(model: DualEncoder, names: Iterable[str]) -> list[nn.Module]:
    """The modules of ``names`` (full names relative to the LoRA root, as LoRA targets are)."""
    modules = dict(lora_root(model).named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise InputError(f"no module {missing[0]!r} in {type(model).__name__}'s LoRA root")
    return [modules[n] for n in names]


def frozen_split(
    model: DualEncoder, modality: str, trained: Iterable[nn.Module]
) -> TowerSplit | None:
    """The deepest cut of ``modality``'s tower whose prefix runs none of the ``trained`` modules,
    or None when the backbone cannot cut the tower (or not even its first cut keeps them out)."""
    trained = list(trained)
    best, at = None, 0
    while (split := model.split_tower(modality, at)) is not None and split.keeps_frozen(trained):
        best, at = split, at + 1
    return best


@torch.no_grad()
def prefix_activations(
    split: TowerSplit, inputs: torch.Tensor, batch_size: int = 128
) -> torch.Tensor:
    """``split.prefix`` over ``inputs`` (e.g. pixels ``(N, 3, H, W)``) in chunks of
    ``batch_size``; returns the activations ``(N, ...)`` on CPU."""
    out = [
        split.prefix(inputs[i : i + batch_size]).detach().cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(out)


class TextPrefixCache:
    """The prefix activations of a fixed set of texts for the text tower cut at ``layer``,
    computed once (unique texts, sorted, in batches of ``batch_size``).

    Raises :class:`InputError` when the model cannot cut its text tower there.
    """

    def __init__(
        self, model: DualEncoder, texts: Iterable[str], layer: int, batch_size: int = 256
    ) -> None:
        split = model.split_tower("text", int(layer))
        if split is None:
            raise InputError(
                f"{type(model).__name__} cannot cut its text tower at layer {layer} "
                "(no frozen-prefix text forward there)"
            )
        self.model, self.layer, self.split = model, int(layer), split
        uniq = sorted(set(texts))
        self.index: dict[str, int] = {}
        self.hidden: list[Any] = []
        for i in range(0, len(uniq), batch_size):
            chunk = uniq[i : i + batch_size]
            tok = {k: v.to(model.device) for k, v in model.tokenize(chunk).items()}
            for t, item in zip(chunk, split.unbatch(split.prefix(tok)), strict=True):
                self.index[t] = len(self.hidden)
                self.hidden.append(item)

    def __len__(self) -> int:
        return len(self.hidden)

    def __contains__(self, text: str) -> bool:
        return text in self.index

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw text features (as ``model.forward_text``) for texts that were cached."""
        missing = [t for t in texts if t not in self.index]
        if missing:
            raise InputError(f"text not in the frozen-prefix cache: {missing[0]!r}")
        return self.split.suffix(self.split.batch([self.hidden[self.index[t]] for t in texts]))
