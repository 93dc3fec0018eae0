"""Tiny, randomly initialised models of the real architectures, for tests and benchmarks.

Nothing here downloads: the CLIP tokenizer is built from a character-level byte-pair vocabulary
written to the folder, so the saved checkpoint loads through the real folder path offline.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_char_clip_tokenizer(folder: Path, max_length: int = 77) -> Any:
    """Write a character-level CLIP BPE tokenizer (no merges) to ``folder`` and return it."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    vocab = {t: i for i, t in enumerate(tokens)}
    if "vocab_file" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers 4.x
        tok = CLIPTokenizer(
            str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length
        )
    else:  # transformers 5.x builds the BPE from a dict and a merge list
        tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    tok.save_pretrained(folder)
    return tok


def tiny_clip_config(
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    image_size: int = 32,
    patch: int = 8,
    proj: int = 16,
) -> Any:
    from transformers import CLIPConfig

    vocab = 256 * 2 + 2
    return CLIPConfig(
        text_config=dict(
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            vocab_size=vocab,
            max_position_embeddings=77,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch,
        ),
        projection_dim=proj,
    )


def make_tiny_clip(folder: str | Path, seed: int = 0, **config_kwargs: Any) -> Path:
    """Save a randomly initialised tiny ``CLIPModel`` with tokenizer and processor to ``folder``."""
    from transformers import CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    torch.manual_seed(seed)
    cfg = tiny_clip_config(**config_kwargs)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    write_char_clip_tokenizer(folder)
    size = cfg.vision_config.image_size
    CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(folder)
    return folder
