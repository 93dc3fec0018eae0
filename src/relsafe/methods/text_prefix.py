"""Frozen-prefix text forward for LoRA edits that adapt only the top layers of the text tower.

A safety edit trains on a fixed set of texts (forget captions, their targets, retain captions,
canonical captions) for hundreds of steps. When the LoRA touches only the top ``k`` transformer
layers, the layers below are frozen and their output for a given text never changes, so
:class:`TextPrefixCache` runs them once per distinct text and every step runs only the adapted
layers. The result is the same function (``tests/test_lora_methods.py`` checks it against the full
forward), several times cheaper on the CPU.

A backbone opts in by implementing ``text_hidden_at(tokens, layer)`` and
``forward_text_from_hidden(hidden, attention_mask, layer)`` (relsafe-mini does); for others the
edit uses the plain forward, and restricting the LoRA to the top layers still shortens backward.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from relsafe.errors import InputError

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


def supports_prefix(model: Any) -> bool:
    return callable(getattr(model, "text_hidden_at", None)) and callable(
        getattr(model, "forward_text_from_hidden", None)
    )


class TextPrefixCache:
    """Hidden states of a fixed set of texts entering text layer ``layer``, computed once."""

    def __init__(self, model: Any, texts: Iterable[str], layer: int, batch_size: int = 256):
        if not supports_prefix(model):
            raise InputError(f"{type(model).__name__} has no frozen-prefix text forward")
        self.model, self.layer = model, int(layer)
        uniq = sorted(set(texts))
        self.index: dict[str, int] = {}
        self.hidden: list[torch.Tensor] = []
        for i in range(0, len(uniq), batch_size):
            chunk = uniq[i : i + batch_size]
            tok = {k: v.to(model.device) for k, v in model.tokenize(chunk).items()}
            h = model.text_hidden_at(tok, self.layer)
            lens = tok["attention_mask"].sum(1).tolist()
            for j, t in enumerate(chunk):
                self.index[t] = len(self.hidden)
                self.hidden.append(h[j, : int(lens[j])].detach().clone())

    def __len__(self) -> int:
        return len(self.hidden)

    def __contains__(self, text: str) -> bool:
        return text in self.index

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw text features (as ``model.forward_text``) for texts that were cached."""
        missing = [t for t in texts if t not in self.index]
        if missing:
            raise InputError(f"text not in the frozen-prefix cache: {missing[0]!r}")
        hs = [self.hidden[self.index[t]] for t in texts]
        length = max(h.shape[0] for h in hs)
        width = hs[0].shape[1]
        batch = hs[0].new_zeros(len(hs), length, width)
        mask = torch.zeros(len(hs), length, dtype=torch.long, device=batch.device)
        for i, h in enumerate(hs):
            batch[i, : h.shape[0]] = h
            mask[i, : h.shape[0]] = 1
        return self.model.forward_text_from_hidden(batch, mask, self.layer)
