"""UWM speed: calibration forward, scoring, selection + edit, and statistics memory.

Two models (nothing is downloaded):

* ``relsafe-mini`` with the default policy, when its bundled weights load (skipped otherwise);
* a randomly initialised ``CLIPModel`` with the real CLIP ViT-L/14 sizes (vision 1024 wide,
  24 layers, 16 heads, patch 14, 224 px, MLP 4096; text 768 wide, 12 layers, 12 heads, MLP 3072;
  projection 768), a character-level tokenizer (``relsafe.testing``) standing in for CLIP's BPE.

Calibration data: RelWorld quadruplets of the default policy (train phrasings, training styles,
``EDIT`` seed, rendered at 64 px and resized by the model's preprocessing), ``--n-items`` pairs in
all (default 2000 on CUDA, 64 on CPU). Rendering is timed separately and not part of UWM's time.

Printed per model: data, calibration forward (incl. the hooks' per-sample reductions), scoring
(``R^T C`` matmuls and priors), input wait (the forward loop waiting for tokenising /
preprocessing threads), selection + edit (incl. the SHA-256 of every edited weight, before and
after), total; the peak per-batch statistics memory (every hooked layer's ``(2B, d_in)``
``a`` and ``sig`` plus one layer's ``R``, ``C``), the score memory (one float32 per scored
weight) and, on CUDA, the peak allocated GPU memory. ``--json`` also writes them to a file.

Examples::

    python benchmarks/uwm_speed.py --device cpu --n-items 64 --batch-size 16
    python benchmarks/uwm_speed.py --device cuda --n-items 2000 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

VIT_L_14 = {
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
}


def build_vit_l(tmp: Path, device: str) -> Any:
    """Random-init CLIP ViT-L/14 as a relsafe HFCLIPModel (SDPA attention, float32 weights)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    from transformers.utils import logging as hf_logging

    from relsafe.models.hf_clip import HFCLIPModel
    from relsafe.testing import write_char_clip_tokenizer

    hf_logging.set_verbosity_error()
    tok = write_char_clip_tokenizer(tmp / "tok")
    n_tok = len(tok)
    text = dict(
        VIT_L_14["text"],
        vocab_size=max(n_tok, 49408),
        bos_token_id=n_tok - 2,
        eos_token_id=n_tok - 1,
        pad_token_id=n_tok - 1,
    )
    cfg = CLIPConfig(
        text_config=text,
        vision_config=VIT_L_14["vision"],
        projection_dim=VIT_L_14["projection_dim"],
    )
    torch.manual_seed(0)
    model = CLIPModel._from_config(cfg, attn_implementation="sdpa").eval().to(device)
    proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return HFCLIPModel("random-vit-l-14", model, tok, proc)


def run_one(name: str, model: Any, policy: Any, n_items: int, batch_size: int) -> dict[str, Any]:
    from relsafe.methods.uwm import UWMConfig, calibration_data, uwm

    n_pairs = len(policy.pairs())
    cfg = UWMConfig(n_per_pair=max(1, math.ceil(n_items / n_pairs)), batch_size=batch_size)
    t0 = time.perf_counter()
    data = calibration_data(policy, cfg)
    t_data = time.perf_counter() - t0
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
        torch.cuda.synchronize(model.device)
    t0 = time.perf_counter()
    res = uwm(model, None, cfg, progress=False, data=data)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    total = time.perf_counter() - t0
    ex = res.record.extra
    out = {
        "model": name,
        "device": str(model.device),
        "pairs": len(data.S),
        "batch_size": batch_size,
        "data_render_s": t_data,
        "forward_s": ex["calibration_s"],
        "scoring_s": ex["scoring_s"],
        "input_wait_s": ex["input_wait_s"],
        "select_edit_s": ex["select_edit_s"],
        "uwm_total_s": total,
        "stats_peak_MiB": ex["stats_peak_bytes"] / 2**20,
        "scores_MiB": ex["score_bytes"] / 2**20,
        "negated": res.record.params_touched,
        "negated_per_tower": ex["selected_per_tower"],
        "scored_weights": sum(v["total"] for v in ex["layers"].values()),
        "layers": len(ex["layers"]),
    }
    if model.device.type == "cuda":
        out["gpu_peak_MiB"] = torch.cuda.max_memory_allocated(model.device) / 2**20
    return out


def report(r: dict[str, Any]) -> None:
    print(
        f"\n== {r['model']} on {r['device']}: {r['pairs']} pairs, batch {r['batch_size']}, "
        f"{r['layers']} layers, {r['scored_weights']:,} scored weights"
    )
    print(f"  data (render, not UWM)  {r['data_render_s']:8.2f} s")
    print(f"  calibration forward     {r['forward_s']:8.2f} s")
    print(f"  scoring (R^T C, priors) {r['scoring_s']:8.2f} s")
    print(f"  waiting for inputs      {r['input_wait_s']:8.2f} s")
    print(f"  selection + edit        {r['select_edit_s']:8.2f} s")
    print(f"  UWM total               {r['uwm_total_s']:8.2f} s")
    print(f"  peak statistics memory  {r['stats_peak_MiB']:8.2f} MiB (per-sample vectors)")
    print(f"  score memory            {r['scores_MiB']:8.2f} MiB (one float32 per weight)")
    if "gpu_peak_MiB" in r:
        print(f"  peak GPU allocated      {r['gpu_peak_MiB']:8.1f} MiB")
    print(f"  negated weights         {r['negated']:,} {r['negated_per_tower']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument(
        "--n-items", type=int, default=None, help="calibration pairs (2000 on CUDA, 64 on CPU)"
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="pairs per forward (128 CUDA, 16 CPU)"
    )
    ap.add_argument("--skip-mini", action="store_true")
    ap.add_argument("--skip-vit-l", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    from relsafe.engine.embed import resolve_device
    from relsafe.policy import load_policy

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n_items = args.n_items or (2000 if cuda else 64)
    bs = args.batch_size or (128 if cuda else 16)
    policy = load_policy("default")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if cuda else "")
    )
    results = []
    if not args.skip_mini:
        try:
            from relsafe.models.registry import load_model

            mini = load_model("relsafe-mini", device=str(device))
        except Exception as e:  # noqa: BLE001 - any failure means "not available yet"
            print(f"\n== relsafe-mini: skipped, the model does not load here ({e})")
        else:
            results.append(run_one("relsafe-mini", mini, policy, n_items, bs))
            report(results[-1])
            del mini
    if not args.skip_vit_l:
        with tempfile.TemporaryDirectory() as tmp:
            model = build_vit_l(Path(tmp), str(device))
            results.append(run_one("random CLIP ViT-L/14", model, policy, n_items, bs))
            report(results[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
