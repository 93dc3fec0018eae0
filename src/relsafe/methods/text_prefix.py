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
* :func:`prefix_activations` runs a cut's prefix over a batch of inputs (images), in chunks;
* :func:`length_buckets` groups texts of similar length, so a batch pads little.

Texts differ in length and a batch pads every text to its longest one: a step's batches of
captions (6 to 38 tokens, 12 on average) were about half padding. :meth:`TextPrefixCache.forward`
runs each distinct text once, in groups of similar length, and returns the rows in the order
asked; the function and its gradients are the same (``tests/test_text_prefix.py``), the work about
halves (``benchmarks/text_buckets.py``).
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


BUCKET_OVERHEAD = 32
"""What one more batch costs, in padded positions (a text's tokens), when
:func:`length_buckets` weighs splitting a batch against padding it; measured on relsafe-mini's
MiniLM on the CPU (``benchmarks/text_buckets.py``)."""


def length_buckets(lengths: Sequence[int], overhead: float = BUCKET_OVERHEAD) -> list[list[int]]:
    """Split the items ``0..N-1`` into groups of similar length that minimise the padded work.

    A group costs ``len(group) * max(length) + overhead``: a batch is padded to its longest item
    and each batch has a fixed cost. The best split of the items sorted by length into contiguous
    groups is found exactly, by dynamic programming over the distinct lengths (items of one length
    are never worth splitting: in the earlier group they cost no more than in a later one).
    Returns the groups (lists of item indices, shortest items first); every index appears exactly
    once. ``overhead=inf`` gives one group, ``0`` one group per distinct length.
    """
    if any(n < 0 for n in lengths):
        raise InputError(f"lengths must be >= 0, got {min(lengths)}")
    if not overhead >= 0:
        raise InputError(f"overhead must be >= 0, got {overhead}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if not order or overhead == float("inf"):
        return [order] if order else []
    runs: list[list[int]] = []  # the items of each distinct length, shortest first
    for i in order:
        if runs and lengths[runs[-1][0]] == lengths[i]:
            runs[-1].append(i)
        else:
            runs.append([i])
    n = len(runs)
    count = [0]
    for r in runs:
        count.append(count[-1] + len(r))
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest split of the first j runs
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        top = lengths[runs[j - 1][0]]
        for i in range(j):  # the last group is runs i..j-1, padded to their longest
            c = best[i] + (count[j] - count[i]) * top + overhead
            if c < best[j]:
                best[j], cut[j] = c, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append([k for r in runs[cut[j] : j] for k in r])
        j = cut[j]
    return groups[::-1]


class TextPrefixCache:
    """The prefix activations of a fixed set of texts for the text tower cut at ``layer``,
    computed once (unique texts, shortest first, in batches of ``batch_size``).

    ``bucket_overhead`` is :func:`length_buckets`' cost of one more batch in :meth:`forward`
    (``inf``: every call one padded batch, as the plain forward does).

    Raises :class:`InputError` when the model cannot cut its text tower there.
    """

    def __init__(
        self,
        model: DualEncoder,
        texts: Iterable[str],
        layer: int,
        batch_size: int = 256,
        bucket_overhead: float = BUCKET_OVERHEAD,
    ) -> None:
        split = model.split_tower("text", int(layer))
        if split is None:
            raise InputError(
                f"{type(model).__name__} cannot cut its text tower at layer {layer} "
                "(no frozen-prefix text forward there)"
            )
        self.model, self.layer, self.split = model, int(layer), split
        self.bucket_overhead = float(bucket_overhead)
        # shortest first (characters stand in for tokens), so each batch pads little
        uniq = sorted(set(texts), key=lambda t: (len(t), t))
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
        """Raw text features (as ``model.forward_text``) for texts that were cached, one row per
        text in the order given; each distinct text runs once, in length groups."""
        missing = [t for t in texts if t not in self.index]
        if missing:
            raise InputError(f"text not in the frozen-prefix cache: {missing[0]!r}")
        if not texts:
            raise InputError("cannot batch zero cached texts")
        uniq = list(dict.fromkeys(texts))
        items = [self.hidden[self.index[t]] for t in uniq]
        lengths = [self.split.item_length(h) for h in items]
        if any(n is None for n in lengths):
            groups = [list(range(len(items)))]
        else:
            groups = length_buckets([int(n) for n in lengths], self.bucket_overhead)
        out = torch.cat(
            [self.split.suffix(self.split.batch([items[i] for i in g])) for g in groups]
        )
        # row r of ``out`` is the text uniq[order[r]]; gather the rows back into the call's order
        order = [i for g in groups for i in g]
        row_of = {uniq[i]: r for r, i in enumerate(order)}
        rows = [row_of[t] for t in texts]
        if rows == list(range(len(out))):
            return out
        return out[torch.tensor(rows, device=out.device)]
