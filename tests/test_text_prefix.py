"""Length buckets of the frozen-prefix text cache: the split is the cheapest one, and running a
call's texts in buckets (deduplicated, in any order) is the same function, with the same LoRA
gradients, as one padded batch and as the full forward."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from relsafe.errors import InputError
from relsafe.methods.text_prefix import TextPrefixCache, length_buckets
from relsafe.models.mini import MiniConfig, RelsafeMini

TINY = MiniConfig(
    embed_dim=16, stem_dim=8, vision_dims=(8, 16, 24), vision_depths=(1, 2, 1), text_hidden=32
)


def _cost(groups: list[list[int]], lengths: list[int], overhead: float) -> float:
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def test_length_buckets_hand_worked() -> None:
    # sorted lengths 5 5 9 10 30, overhead 8: one batch costs 5 * 30 + 8 = 158;
    # {5 5} {9 10} {30} costs (10 + 8) + (20 + 8) + (30 + 8) = 84, the cheapest
    # ({5 5 9 10} {30}: 86; {5 5} {9} {10} {30}: 91; {5 5 9} {10} {30}: 91)
    lengths = [30, 5, 10, 5, 9]
    groups = length_buckets(lengths, 8)
    assert groups == [[1, 3], [4, 2], [0]]
    assert _cost(groups, lengths, 8) == 84
    assert length_buckets(lengths, float("inf")) == [[1, 3, 4, 2, 0]]
    assert length_buckets(lengths, 0) == [[1, 3], [4], [2], [0]]
    assert length_buckets([], 8) == []
    with pytest.raises(InputError, match="overhead"):
        length_buckets(lengths, -1)
    with pytest.raises(InputError, match="lengths"):
        length_buckets([3, -1], 8)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=7),
    st.sampled_from([0.0, 1.0, 3.5, 8.0, 40.0]),
)
def test_length_buckets_is_the_cheapest_split(lengths: list[int], overhead: float) -> None:
    """Against brute force: every way of cutting the sorted items into contiguous groups."""
    groups = length_buckets(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    assert [i for g in groups for i in g] == order
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        split, cur = [], [order[0]]
        for c, i in zip(cuts, order[1:], strict=True):
            if c:
                split.append(cur)
                cur = []
            cur.append(i)
        split.append(cur)
        best = min(best, _cost(split, lengths, overhead))
    assert _cost(groups, lengths, overhead) == pytest.approx(best)


TEXTS = [
    "a photo of a child drinking wine",
    "a dog",
    "an adult holding a gun next to a small wooden table in a quiet park at noon",
    "a kid sipping juice",
    "a picture of a dog eating bread",
    "wine",
]


def test_bucketed_forward_is_the_full_forward_with_the_same_gradients() -> None:
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.relational_lora import LoraEditConfig, lora_targets

    model = RelsafeMini(TINY, seed=0)
    n = len(model.text.encoder.encoder.layer)
    targets = lora_targets(model, LoraEditConfig(text_layers=1, text_head=True))
    cache = TextPrefixCache(model, TEXTS, n - 1, bucket_overhead=0.0)
    handle = attach_lora(model, r=4, alpha=8, targets=targets, seed=0)
    for name, p in handle.peft_model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.05)
    # repeats and an order that is not the cache's: the rows come back as asked
    call = [TEXTS[2], TEXTS[1], TEXTS[2], TEXTS[5], TEXTS[0], TEXTS[3], TEXTS[1], TEXTS[4]]
    lengths = [cache.split.item_length(cache.hidden[cache.index[t]]) for t in dict.fromkeys(call)]
    assert len(length_buckets(lengths, 0.0)) > 2  # the call really runs in several buckets
    weights = torch.randn(len(call), 16, generator=torch.Generator().manual_seed(0))

    def run(overhead: float | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if overhead is None:
            out = model.forward_text(model.tokenize(call))
        else:
            cache.bucket_overhead = overhead
            out = cache.forward(call)
        loss = (out * weights[:, : out.shape[1]]).sum()
        return out.detach(), list(torch.autograd.grad(loss, list(handle.parameters())))

    full, g_full = run(None)
    for overhead in (0.0, 32.0, float("inf")):
        out, grads = run(overhead)
        torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
        assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[6])
        for a, b in zip(grads, g_full, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in g_full)
    with pytest.raises(InputError, match="zero cached texts"):
        cache.forward([])


def test_texts_run_shortest_first_and_come_back_in_input_order(tmp_path: Any) -> None:
    """The engine, ``encode_text`` and the edit's frozen references batch texts by length; each
    row is still its own text's embedding (against one text per forward), cached or not."""
    from relsafe.batching import in_input_order, length_order
    from relsafe.engine import EmbeddingEngine
    from relsafe.methods.relational_lora import _frozen_text

    model = RelsafeMini(TINY, seed=0)
    texts = [*TEXTS, TEXTS[0], "a"]
    order = length_order(texts)
    assert [len(texts[i]) for i in order] == sorted(map(len, texts))
    assert order != list(range(len(texts)))  # the test inputs are not already sorted
    with torch.no_grad():
        alone = torch.cat(
            [model.postprocess(model.forward_text(model.tokenize([t])), "text") for t in texts]
        )
    engine = EmbeddingEngine(
        model, dtype="float32", progress=False, cache_dir=tmp_path, batch_size=3
    )
    for got in (
        engine.embed_texts(texts),
        engine.embed_texts(texts),  # from the cache
        model.encode_text(texts, batch_size=3),
        _frozen_text(model, texts, bs=3),
    ):
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
    assert engine.stats["cache_hits"] == 1
    rows = torch.arange(8.0)[:, None]
    assert in_input_order(rows[order], order).flatten().tolist() == list(range(8))
    with pytest.raises(ValueError, match="7 rows for an order of 8"):
        in_input_order(rows[:7], order)
