"""One training step, reference style against relsafe style, at the CLIP ViT-L/14 size.

A randomly initialised ``CLIPModel`` (nothing is downloaded; ``--config vit-l-14`` or the reduced
``small`` of ``embed_throughput.py`` for CPUs) wrapped as relsafe's ``HFCLIPModel``. Each
*profile* is the shape of one method's step: what it trains and what each step runs forward:

* ``text-lora`` (relational-lora, concept-erasure): PEFT LoRA r=16 on the text tower (relsafe's
  default patterns), ``2B`` captions forward per step, InfoNCE against fixed image targets;
* ``both-lora`` (safeclip, hysac): LoRA on both towers, ``2B`` captions and ``2B`` images forward,
  two InfoNCE terms (safe and unsafe sides);
* ``full`` (pretraining): every parameter of both towers, ``B`` pairs, CLIP's InfoNCE.

These are method-shaped steps (same trainable set and forward/backward shape; a contrastive loss
stands in for each method's own loss terms), not the methods' ``step_losses``: they measure what
the styles change. **reference**: float32, eager attention, ``torch.autograd.set_detect_anomaly
(True)`` (as the HySAC reference code), plain ``torch.optim.AdamW``. **relsafe**: bf16 autocast
where supported (CUDA, or a CPU with bf16 units), SDPA attention, fused AdamW on CUDA. Frozen-prefix
caching (``relsafe.methods.text_prefix``) needs ``DualEncoder.split_tower``, which the HF CLIP
backbone does not provide, so both styles run the full forward here (relsafe-mini has it).

``--processes N`` also times the relsafe step with ``N`` processes (``torchrun``; gloo on CPU,
NCCL on CUDA) at the same global batch, each process taking ``B / N`` rows and the gradients
summed over processes (as DDP does; the step's loss is then a per-row cosine to fixed targets,
which splits over rows exactly, unlike an in-batch InfoNCE), and prints the throughput ratio and whether the updated
weights equal the one-process ones (``max |diff|``).

Examples::

    python benchmarks/train_step.py --config small --device cpu --batch-size 8 --steps 2
    python benchmarks/train_step.py --config vit-l-14 --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_throughput import CONFIGS, build, captions, preprocessed_tensors  # noqa: E402

PROFILES = {
    "text-lora": "relational-lora, concept-erasure",
    "both-lora": "safeclip, hysac",
    "full": "pretraining",
}


def _bf16_ok(device: torch.device) -> bool:
    from relsafe.engine.precision import cpu_has_bf16

    return device.type == "cuda" or cpu_has_bf16()


def _info_nce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    logits = 100.0 * a @ b.T
    labels = torch.arange(len(a), device=a.device)
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logits, labels) + ce(logits.T, labels))


class Setup:
    """A fresh model (same seed), its trainable set for ``profile`` and the batch."""

    def __init__(
        self,
        args: Any,
        profile: str,
        style: str,
        tmp: Path,
        rows: slice,
        per_row: int | None = None,
    ) -> None:
        from relsafe.methods.lora import attach_lora
        from relsafe.models.hf_clip import HFCLIPModel

        self.device = torch.device(args.device)
        model, tok, proc = build(args.config, tmp)
        model.set_attn_implementation("eager" if style == "reference" else "sdpa")
        self.enc = HFCLIPModel(f"bench:{args.config}", model.to(self.device), tok, proc)
        self.profile, self.style = profile, style
        if profile == "full":
            self.params = [p for p in model.parameters() if p.requires_grad]
        else:
            towers = ("text",) if profile == "text-lora" else ("text", "vision")
            self.params = list(attach_lora(self.enc, towers=towers, r=16, seed=0).parameters())
        fused = style == "relsafe" and self.device.type == "cuda"
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, fused=fused)
        b = args.batch_size
        n_side = b if profile == "full" else 2 * b
        texts = captions(n_side, seed=1)
        self.tokens = {k: v[rows] for k, v in self.enc.tokenize(texts).items()}
        self.pix = preprocessed_tensors(proc, n_side, seed=2)[rows]
        g = torch.Generator().manual_seed(3)
        self.targets = torch.randn(n_side, self.enc.embed_dim, generator=g)[rows]
        self.bf16 = style == "relsafe" and _bf16_ok(self.device)
        self.per_row = per_row  # scaling runs: a per-row loss over this many global rows

    def step(self) -> float:
        dev = self.device
        tokens = {k: v.to(dev) for k, v in self.tokens.items()}
        ctx = (
            torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        anomaly = torch.autograd.set_detect_anomaly(self.style == "reference")
        with anomaly, ctx:
            t = self.enc.forward_text(tokens)
            tgt = self.targets.to(dev)
            cos = torch.nn.functional.cosine_similarity
            if self.per_row is not None:  # decomposes over rows: N processes = 1 process
                loss = (1 - cos(t.float(), tgt)).sum()
                if self.profile != "text-lora":
                    v = self.enc.forward_image(self.pix.to(dev))
                    loss = loss + (1 - cos(v.float(), tgt)).sum()
                loss = loss / self.per_row
            elif self.profile == "text-lora":
                loss = _info_nce(t, tgt)
            else:
                v = self.enc.forward_image(self.pix.to(dev))
                if self.profile == "full":
                    loss = _info_nce(t, v)
                else:
                    h = len(t) // 2
                    loss = _info_nce(t[:h], v[:h]) + _info_nce(t[h:], v[h:])
            loss.backward()
        _all_sum_grads(self.params)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def _all_sum_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients over a launch's processes (a no-op in one process)."""
    from relsafe.engine.sharding import all_sum, world

    if world()[1] > 1:
        all_sum([p.grad for p in params if p.grad is not None])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(s: Setup, steps: int) -> float:
    """Median seconds per step after one warm-up step."""
    s.step()
    times = []
    for _ in range(steps):
        _sync(s.device)
        t0 = time.perf_counter()
        s.step()
        _sync(s.device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _rows(n_side: int) -> slice:
    from relsafe.engine.sharding import world

    rank, ws = world()
    per = n_side // ws
    return slice(rank * per, (rank + 1) * per)


def worker(args: Any) -> int:
    """One process of a ``--processes`` launch: the relsafe step on this rank's rows."""
    from safetensors.torch import save_file

    from relsafe.engine.sharding import world

    rank, _ = world()
    n_side = args.batch_size if args.profile == "full" else 2 * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        s = Setup(args, args.profile, "relsafe", Path(tmp), _rows(n_side), per_row=n_side)
        dt = time_steps(s, args.steps)
        if rank == 0:
            save_file(
                {f"p{i}": p.detach().float().cpu().contiguous() for i, p in enumerate(s.params)},
                str(Path(args.worker_out) / "params.st"),
            )
            Path(args.worker_out, "time.json").write_text(json.dumps({"s_per_step": dt}))
    return 0


def scaling(args: Any, profile: str, tmp: Path) -> str:
    """1 vs ``args.processes`` processes on the relsafe step at the same global batch."""
    from safetensors.torch import load_file

    n = args.processes
    n_side = args.batch_size if profile == "full" else 2 * args.batch_size
    if n_side % n:
        return f"skipped: {n_side} rows do not split over {n} processes"
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    out = tmp / f"scale-{profile}"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(port), __file__]
    cmd += _passthrough(args) + ["--profile", profile, "--worker-out", str(out)]
    env = dict(os.environ)
    if args.device == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"FAILED ({n} processes): {proc.stderr.strip().splitlines()[-1:]}"
    t_n = json.loads((out / "time.json").read_text())["s_per_step"]
    one = Setup(args, profile, "relsafe", tmp, slice(0, n_side), per_row=n_side)
    t_1 = time_steps(one, args.steps)
    got = load_file(str(out / "params.st"))
    diff = max(
        float((got[f"p{i}"] - p.detach().float().cpu()).abs().max())
        for i, p in enumerate(one.params)
    )
    return (
        f"{n} processes {n_side / t_n:,.1f} rows/s vs 1 process {n_side / t_1:,.1f} rows/s "
        f"({t_1 / t_n:.2f}x); max |weight diff| after {args.steps + 1} steps {diff:.2e}"
    )


def _passthrough(args: Any) -> list[str]:
    return [
        "--config",
        args.config,
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--batch-size", type=int, default=8, help="B (pairs per step)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median), after 1 warm-up")
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated")
    ap.add_argument("--processes", type=int, default=0, help="also time N processes vs 1")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CI", "true")
    if args.worker_out:
        return worker(args)
    dev = torch.device(args.device)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    bad = [p for p in profiles if p not in PROFILES]
    if bad:
        ap.error(f"unknown profiles {bad}; use {list(PROFILES)}")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="relsafe-train-") as tmp_s:
        tmp = Path(tmp_s)
        for prof in profiles:
            n_side = args.batch_size if prof == "full" else 2 * args.batch_size
            r: dict[str, Any] = {}
            for style in ("reference", "relsafe"):
                s = Setup(args, prof, style, tmp, slice(0, n_side))
                r[style] = time_steps(s, args.steps)
                del s
            if args.processes > 1:
                r["scaling"] = scaling(args, prof, tmp)
            rows[prof] = r
            print(f"  {prof}: done", flush=True)
    bf = "bf16 autocast" if _bf16_ok(dev) else "float32 (no bf16 units)"
    print()
    print(
        f"CLIP {args.config} random init, {args.device}, B={args.batch_size}, median of "
        f"{args.steps} steps; relsafe style: {bf}, SDPA"
        + (", fused AdamW" if dev.type == "cuda" else "")
    )
    print()
    print("| profile (methods) | reference s/step | relsafe s/step | speed-up |")
    print("|---|---:|---:|---:|")
    for prof, r in rows.items():
        print(
            f"| {prof} ({PROFILES[prof]}) | {r['reference']:.3f} | {r['relsafe']:.3f} | "
            f"{r['reference'] / r['relsafe']:.2f}x |"
        )
    for prof, r in rows.items():
        if "scaling" in r:
            print(f"scaling, {prof}: {r['scaling']}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2, default=str
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
