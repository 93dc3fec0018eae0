"""Embedding throughput: reference-style CLIP inference vs relsafe's EmbeddingEngine.

Builds a randomly initialised ``CLIPModel`` (nothing is downloaded) with either the real ViT-L/14
sizes (``--config vit-l-14``) or a reduced config that runs on a laptop CPU (``--config small``)
and measures, in one run on the same weights:

* **per-item**: how most reference safety code embeds: float32, eager attention, one input per
  forward (timed on the first ``--per-item-n`` inputs; reported per second);
* **reference**: the same batched: float32 weights, ``attn_implementation="eager"``, one plain
  ``get_*_features`` call per batch under ``torch.no_grad`` after CLIPProcessor-style
  preprocessing (HF tokenizer / ``CLIPImageProcessor`` on PIL images);
* **relsafe**: :class:`relsafe.engine.EmbeddingEngine` on the SDPA model, inference mode,
  prefetching worker threads, once per ``--modes`` entry: ``auto`` (what the engine picks here:
  see docs/performance.md) and each forced dtype (``float32``, ``bfloat16``, ``int8-text`` on
  CPU). A forced mode whose probe fails falls back to float32 in the engine; the benchmark then
  also times it forced past the probe (marked ``!``) so its speed is known, with its cosine.

Rows: images from preprocessed ``(N, 3, 224, 224)`` tensors, texts, and with ``--from-jpeg``
images end-to-end from JPEG files (written first to DIR or a temporary folder).

Examples::

    python benchmarks/embed_throughput.py --config small --device cpu --from-jpeg
    python benchmarks/embed_throughput.py --config small --device cpu --n-images 64 --n-texts 256
    python benchmarks/embed_throughput.py --config vit-l-14 --device cuda --n-images 8192 \\
        --n-texts 16384 --batch-size 256 --from-jpeg
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONFIGS: dict[str, dict[str, Any]] = {
    # The real CLIP ViT-L/14 (openai/clip-vit-large-patch14) sizes.
    "vit-l-14": {
        "vision": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            patch_size=14,
            image_size=224,
        ),
        "text": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
        ),
        "projection_dim": 768,
    },
    # A reduced ViT-B/32-like model: 224 px, patch 32 (50 tokens), 6 layers, width 384.
    "small": {
        "vision": dict(
            hidden_size=384,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=6,
            patch_size=32,
            image_size=224,
        ),
        "text": dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=77,
        ),
        "projection_dim": 256,
    },
}

SUBJECTS = ["child", "adult", "dog", "woman", "man", "teenager", "cat", "robot"]
VERBS = ["drinking", "holding", "riding", "eating", "painting", "throwing"]
OBJECTS = ["wine", "water", "bicycle", "apple", "fence", "ball", "knife", "book"]
PLACES = ["park", "kitchen", "street", "beach", "garden", "office"]


def build(config: str, tmp: Path) -> tuple[Any, Any, Any]:
    """Random-init CLIPModel (eager attention, float32), an offline tokenizer and a processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    from transformers.utils import logging as hf_logging

    from relsafe.testing import write_char_clip_tokenizer

    hf_logging.set_verbosity_error()
    spec = CONFIGS[config]
    tokenizer = write_char_clip_tokenizer(tmp / "tok")  # character-level: no download
    n_tok = len(tokenizer)
    text = dict(
        spec["text"],
        vocab_size=max(n_tok, 49408),
        bos_token_id=n_tok - 2,
        eos_token_id=n_tok - 1,
        pad_token_id=n_tok - 1,
    )
    cfg = CLIPConfig(
        text_config=text, vision_config=spec["vision"], projection_dim=spec["projection_dim"]
    )
    torch.manual_seed(0)
    model = CLIPModel._from_config(cfg, attn_implementation="eager").eval()
    size = spec["vision"]["image_size"]
    processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    return model, tokenizer, processor


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"a photo of a {rng.choice(SUBJECTS)} {rng.choice(VERBS)} a {rng.choice(OBJECTS)} in the {rng.choice(PLACES)}"
        for _ in range(n)
    ]


def _features(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


REPEATS = 1


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall time of one run of ``fn`` (synchronising CUDA around it) and its output."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


# ---- reference style ---------------------------------------------------------------------------
def ref_images_from_tensor(
    model: Any, pix: torch.Tensor, bs: int, device: torch.device
) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(pix), bs):
            f = _features(model.get_image_features(pixel_values=pix[i : i + bs].to(device)))
            out.append((f / f.norm(dim=-1, keepdim=True)).cpu())
    return torch.cat(out)


def ref_texts(
    model: Any, tokenizer: Any, texts: list[str], bs: int, device: torch.device
) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), bs):
            tok = tokenizer(
                texts[i : i + bs], padding=True, truncation=True, max_length=77, return_tensors="pt"
            )
            f = _features(
                model.get_text_features(
                    input_ids=tok["input_ids"].to(device),
                    attention_mask=tok["attention_mask"].to(device),
                )
            )
            out.append((f / f.norm(dim=-1, keepdim=True)).cpu())
    return torch.cat(out)


def ref_images_from_files(
    model: Any, processor: Any, paths: list[Path], bs: int, device: torch.device
) -> torch.Tensor:
    from PIL import Image

    out = []
    with torch.no_grad():
        for i in range(0, len(paths), bs):
            imgs = [Image.open(p).convert("RGB") for p in paths[i : i + bs]]
            pix = processor(images=imgs, return_tensors="pt")["pixel_values"]
            f = _features(model.get_image_features(pixel_values=pix.to(device)))
            out.append((f / f.norm(dim=-1, keepdim=True)).cpu())
    return torch.cat(out)


def synthetic_image(rng: np.random.Generator) -> Any:
    """One 320x256 photo-like RGB image: a smooth random colour field plus mild noise.

    Photo-like content matters on CPU: ``torch.randn`` pixels drive a random-init network into
    extreme activations (partly denormal floats) that ran up to ~1.8x slower than photo-like
    pixels in our CPU runs, which would skew the timings.
    """
    from PIL import Image

    base = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((320, 256), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (256, 320, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def preprocessed_tensors(processor: Any, n: int, seed: int = 0, chunk: int = 256) -> torch.Tensor:
    """``(n, 3, S, S)`` float32 pixels of synthetic photos, preprocessed once (not timed)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(0, n, chunk):
        imgs = [synthetic_image(rng) for _ in range(min(chunk, n - i))]
        out.append(processor(images=imgs, return_tensors="pt")["pixel_values"])
    return torch.cat(out)


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` synthetic 320x256 photos as JPEG (quality 90) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:06d}.jpg"
        synthetic_image(rng).save(p, quality=90)
        paths.append(p)
    return paths


def _engine(enc: Any, mode: str, device: torch.device, bs: int, workers: int | None) -> Any:
    """An engine in ``mode``; a mode whose probe failed is forced past it (label ends in ``!``)."""
    from relsafe.engine import EmbeddingEngine
    from relsafe.engine.precision import Precision

    eng = EmbeddingEngine(
        enc, device=device, dtype=mode, batch_size=bs, progress=False, num_workers=workers
    )
    eng.label = f"{mode} ({eng.dtype_name})" if mode == "auto" else mode
    if mode not in ("auto", eng.dtype_name):
        autocast = torch.bfloat16 if mode == "bfloat16" else torch.float32
        eng.precision = Precision(mode, autocast, eng.precision.min_cosine, "forced")
        eng.dtype = autocast
        eng.label = f"{mode}!"
    return eng


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--n-texts", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--per-item-n", type=int, default=64, help="inputs timed one per forward")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument(
        "--modes",
        default=None,
        help="engine modes, comma-separated (default: auto,float32,bfloat16 plus int8-text on CPU)",
    )
    ap.add_argument(
        "--workers", type=int, default=None, help="engine worker threads (default min(8, cpus))"
    )
    ap.add_argument(
        "--from-jpeg",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="also measure end-to-end from JPEG files written to DIR (default: a temp dir)",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="time each measurement this often, keep the best"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    global REPEATS
    REPEATS = max(1, args.repeats)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)

    from relsafe.engine import resolve_device
    from relsafe.engine.precision import cpu_has_bf16
    from relsafe.models.hf_clip import HFCLIPModel

    device = resolve_device(args.device)
    bs = args.batch_size
    modes = args.modes or "auto,float32,bfloat16" + (",int8-text" if device.type == "cpu" else "")
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    k = max(1, args.per_item_n)
    with tempfile.TemporaryDirectory(prefix="relsafe-bench-") as tmp_s:
        tmp = Path(tmp_s)
        t_build = time.perf_counter()
        model, tokenizer, processor = build(args.config, tmp)
        model.to(device)
        size = model.config.vision_config.image_size
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"model: CLIP {args.config} random init, {n_params:.0f}M params, built in "
            f"{time.perf_counter() - t_build:.1f}s; device {device}",
            flush=True,
        )
        texts = captions(args.n_texts)
        pix = preprocessed_tensors(processor, args.n_images)
        assert pix.shape[-1] == size
        paths: list[Path] = []
        if args.from_jpeg is not None:
            jdir = Path(args.from_jpeg) if args.from_jpeg else tmp / "jpeg"
            paths = write_jpegs(jdir, args.n_images)
        enc = HFCLIPModel(f"bench:{args.config}", model, tokenizer, processor)
        engines = [_engine(enc, m, device, bs, args.workers) for m in mode_list]
        # input -> (n, per-item fn on the first k, batched reference fn, engine fn)
        cases: dict[str, tuple[int, Callable[[], Any], Callable[[], Any], Callable]] = {
            "images (preprocessed tensors)": (
                args.n_images,
                lambda: ref_images_from_tensor(model, pix[:k], 1, device),
                lambda: ref_images_from_tensor(model, pix, bs, device),
                lambda e: e.embed_images(pix),
            ),
            "texts": (
                args.n_texts,
                lambda: ref_texts(model, tokenizer, texts[:k], 1, device),
                lambda: ref_texts(model, tokenizer, texts, bs, device),
                lambda e: e.embed_texts(texts),
            ),
        }
        if paths:
            cases["images (JPEG files, end-to-end)"] = (
                len(paths),
                lambda: ref_images_from_files(model, processor, paths[:k], 1, device),
                lambda: ref_images_from_files(model, processor, paths, bs, device),
                lambda e: e.embed_images(paths),
            )
        warm = min(bs, args.n_images)
        for impl in ("eager", "sdpa"):  # warm-up: kernels, allocator, thread pools
            model.set_attn_implementation(impl)
            ref_images_from_tensor(model, pix[:warm], bs, device)
            ref_texts(model, tokenizer, texts[:bs], bs, device)
            for e in engines:
                e.embed_images(pix[:warm])
                e.embed_texts(texts[:bs])

        results: dict[str, dict[str, float]] = {}
        agree: dict[str, dict[str, float]] = {}
        for name, (n, item_fn, ref_fn, rel_fn) in cases.items():
            best = {"per-item": float("inf"), "reference": float("inf")}
            best.update({e.label: float("inf") for e in engines})
            outs: dict[str, torch.Tensor] = {}
            for _ in range(REPEATS):  # interleaved, so background load hits every column alike
                model.set_attn_implementation("eager")
                t, _ = timed(item_fn, device)
                best["per-item"] = min(best["per-item"], t / min(k, n) * n)
                t, outs["reference"] = timed(ref_fn, device)
                best["reference"] = min(best["reference"], t)
                model.set_attn_implementation("sdpa")
                for e in engines:
                    t, outs[e.label] = timed(lambda e=e, f=rel_fn: f(e), device)
                    best[e.label] = min(best[e.label], t)
            results[name] = {c: n / v for c, v in best.items()}
            cos = torch.nn.functional.cosine_similarity
            agree[name] = {
                e.label: float(cos(outs[e.label], outs["reference"]).min()) for e in engines
            }
            print(f"  {name}: done", flush=True)

    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} "
        f"torch threads, bf16 units: {'yes' if cpu_has_bf16() else 'no'}"
    )
    cols = ["per-item", "reference"] + [e.label for e in engines]
    print()
    print(
        f"CLIP {args.config}, {dev_name}, batch {bs}, {args.n_images} images, {args.n_texts} "
        f"texts, per-item loop on {k}, best of {REPEATS} (items/s; x = over the batched "
        "fp32 reference; ! = forced past a failed probe)"
    )
    print()
    print(
        "| input | per-item fp32 | batched fp32 (eager) | "
        + " | ".join(f"relsafe {c}" for c in cols[2:])
        + " |"
    )
    print("|---|" + "---:|" * len(cols))
    for name, r in results.items():
        ref = r["reference"]
        cells = [f"{r['per-item']:,.1f}", f"{ref:,.1f}"] + [
            f"{r[c]:,.1f} ({r[c] / ref:.2f}x, {r[c] / r['per-item']:.1f}x per-item)"
            for c in cols[2:]
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for name, a in agree.items():
        print(
            f"min cosine to the reference, {name}: "
            + ", ".join(f"{c} {v:.5f}" for c, v in a.items())
        )
    if args.json:
        payload = {
            "config": args.config,
            "device": dev_name,
            "batch_size": bs,
            "n_images": args.n_images,
            "n_texts": args.n_texts,
            "per_item_n": k,
            "modes": [e.label for e in engines],
            "results": results,
            "min_cosine": agree,
            "torch": torch.__version__,
            "argv": sys.argv,
        }
        with contextlib.suppress(OSError):
            args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
