"""Training steps of every relsafe method on its own loss, reference style against relsafe style.

A randomly initialised ``CLIPModel`` (nothing is downloaded; ``--config vit-l-14``, the reduced
``small`` of ``embed_throughput.py`` for CPUs, or ``--model DIR`` for a saved HF CLIP folder such
as the tests' tiny random CLIP) wrapped as relsafe's ``HFCLIPModel``, built once and copied fresh
for every run. Each *profile* is one method's real step:

* ``relational-lora``, ``concept-erasure``, ``safeclip``, ``hysac``: the method's registered edit
  function (``relsafe.methods.base.get_method(name).fn``) on the ``tiny`` policy with ``--steps``
  + 1 steps and batch ``B`` (``--batch-size``; relational-lora / concept-erasure: ``B`` forget
  texts, ``B`` retain texts and ``B`` images per step; safeclip / hysac: ``B`` quadruplets).
  ``relsafe.methods.training.run_loop`` is wrapped to time each step (its ``step_losses``,
  backward, gradient sync and optimiser step, from one step's start to the next); the data
  building, frozen-feature caches and the evaluation before and after are not timed.
* ``pretraining``: every parameter of both towers, ``B`` image-caption pairs over ``B / 4``
  tuples, pretraining's own objective (``relsafe.pretrain.loss.multi_pos_nll``: multi-positive
  InfoNCE image->[prompts; captions] and [captions; prompts]->image, as ``contrastive_loss``;
  relsafe-mini's text bank and BatchNorm do not exist on a CLIP), AdamW(0.9, 0.98) and gradient
  clipping as ``relsafe.pretrain.loop``, sharded through ``relsafe.distributed`` in the same way.

The time is the median over the steps after the first (warm-up). **reference**: float32, eager
attention, ``torch.autograd.set_detect_anomaly(True)`` (as the HySAC reference code), unfused
AdamW. **relsafe**: what relsafe's loops do: SDPA attention, bf16 autocast on CUDA
(``relsafe.distributed``'s mixed precision; training on a CPU stays float32, as in the product),
fused AdamW on CUDA. Frozen-prefix caching (``relsafe.methods.text_prefix``) needs
``DualEncoder.split_tower``, which the HF CLIP backbone does not provide, so both styles run the
full forward here (relsafe-mini has it).

``--processes N`` also runs the relsafe style on ``N`` processes (``torchrun``; gloo on CPU, NCCL
on CUDA) through ``relsafe.distributed`` at the same global batch, and prints the step-time
ratio and whether the result equals the one-process one (max |diff| of the adapter weights; for
pretraining of the two projection heads and the logit scale). safeclip runs with dropout 0 so
that the comparison is exact (dropout masks are drawn per rank).

Examples::

    python benchmarks/train_step.py --config small --device cpu --batch-size 8 --steps 2
    python benchmarks/train_step.py --config vit-l-14 --device cuda --batch-size 32 --processes 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_throughput import CONFIGS, build, captions, preprocessed_tensors  # noqa: E402

PROFILES = {
    "relational-lora": "LoRA, text tower (top 2 layers)",
    "concept-erasure": "LoRA, text tower (top 2 layers)",
    "safeclip": "LoRA, both towers",
    "hysac": "LoRA, both towers, hyperbolic",
    "pretraining": "every parameter",
}
STYLES = ("reference", "relsafe")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def base_encoder(args: Any, tmp: Path) -> Any:
    """The random CLIP (built once, on the CPU) as an ``HFCLIPModel``."""
    if args.model:
        from relsafe.models.registry import load_model

        return load_model(str(args.model))
    from relsafe.models.hf_clip import HFCLIPModel

    model, tok, proc = build(args.config, tmp)
    return HFCLIPModel(f"bench:{args.config}", model, tok, proc)


def fresh(base: Any, style: str, device: torch.device) -> Any:
    """A copy of ``base`` on ``device`` with the style's attention."""
    enc = copy.deepcopy(base)
    enc.model.set_attn_implementation("eager" if style == "reference" else "sdpa")
    enc.model.to(device)
    return enc


def set_style(style: str, device: torch.device) -> Any:
    """Put this process's :class:`relsafe.distributed.Dist` in the style's precision."""
    from relsafe.distributed import current

    dist = current()
    bf16 = style == "relsafe" and device.type == "cuda"
    dist.mixed_precision = "bf16" if bf16 else "no"
    dist.device = device if dist.device is None else dist.device
    return dist


def method_config(profile: str, steps: int, b: int) -> Any:
    """The method's config: ``steps`` steps at batch ``b``, nothing evaluated or saved between."""
    if profile == "safeclip":
        from relsafe.methods.safeclip import SafeClipConfig

        return SafeClipConfig(
            steps=steps, log_every=1, batch_size=b, n_per_pair=b, size=32, dropout=0.0,
            checkpoint_every=10_000,
        )  # fmt: skip
    if profile == "hysac":
        from relsafe.methods.hysac import HySACConfig

        return HySACConfig(
            steps=steps, log_every=1, batch_size=b, n_per_pair=b, n_val_per_pair=2, size=32,
            eval_every=10_000, checkpoint_every=10_000,
        )  # fmt: skip
    from relsafe.data.edit_sets import SetSizes
    from relsafe.methods.relational_lora import LoraEditConfig

    data = SetSizes(
        texts_per_forget_tuple=b, images_per_forget_tuple=max(1, b // 2),
        texts_per_retain_tuple=max(1, b // 4), images_per_retain_tuple=max(1, b // 4),
        n_unrelated=b, size=32,
    )  # fmt: skip
    return LoraEditConfig(
        steps=steps, log_every=1, batch_forget=b, batch_retain=b, batch_images=b, data=data,
        checkpoint_every=10_000,
    )  # fmt: skip


@contextlib.contextmanager
def timed_loops(style: str, device: torch.device, out: dict[str, Any]) -> Any:
    """Wrap ``run_loop`` in every method module: per-step times, the curve and the final adapter
    go into ``out``; the reference style gets the unfused optimiser."""
    import relsafe.methods.hysac as hysac_mod
    import relsafe.methods.relational_lora as rl_mod
    import relsafe.methods.safeclip as sc_mod
    import relsafe.methods.training as training

    real = training.run_loop

    def spy(handle: Any, params: Any, step_losses: Callable[..., Any], *a: Any, **k: Any) -> Any:
        marks: list[float] = []

        def timed(step: int, rng: random.Random) -> Any:
            _sync(device)
            marks.append(time.perf_counter())
            return step_losses(step, rng)

        if style == "reference":
            k["fused"] = False
        res = real(handle, params, timed, *a, **k)
        _sync(device)
        marks.append(time.perf_counter())
        out["times"] = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        out["curve"] = res.curve
        out["stopped"] = res.stopped_early  # e.g. a non-finite loss: fewer steps were timed
        out["state"] = {n: v.detach().float().cpu() for n, v in handle.state_dict().items()}
        return res

    mods = (training, hysac_mod, rl_mod, sc_mod)
    for m in mods:
        m.run_loop = spy  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m in mods:
            m.run_loop = real  # type: ignore[attr-defined]


def run_method(enc: Any, profile: str, style: str, args: Any, device: torch.device) -> dict:
    """One method's edit on ``enc`` with ``args.steps + 1`` timed steps."""
    from relsafe.errors import NotMainProcess
    from relsafe.methods.base import get_method
    from relsafe.policy import find_policy, load_policy

    set_style(style, device)
    out: dict[str, Any] = {}
    cfg = method_config(profile, args.steps + 1, args.batch_size)
    anomaly = torch.autograd.set_detect_anomaly(style == "reference")
    with timed_loops(style, device, out), anomaly:
        try:
            get_method(profile).fn(enc, load_policy(find_policy("tiny")), cfg, progress=False)
        except NotMainProcess:
            pass  # a non-main rank of a launch: the main one writes
    if "times" not in out:
        raise RuntimeError(f"{profile}: the method ran no training loop")
    return out


def run_pretraining(enc: Any, style: str, args: Any, device: torch.device) -> dict:
    """Pretraining's objective on the CLIP, every parameter trained, the loop of
    ``relsafe.pretrain.loop`` (shard the towers' rows, all-reduce, clip, AdamW)."""
    from relsafe.pretrain.loss import multi_pos_nll

    dist = set_style(style, device)
    b = args.batch_size
    n_t = max(2, b // 4)
    tids = torch.arange(b) % n_t
    texts = captions(n_t, seed=4) + captions(b, seed=1)  # the tuples' prompts, then captions
    tokens = {k: v.to(device) for k, v in enc.tokenize(texts).items()}
    pix = preprocessed_tensors(enc.image_processor, b, seed=2).to(device)
    hf = enc.model
    params = [p for p in hf.parameters() if p.requires_grad]
    fused = style == "relsafe" and device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, fused=fused)
    same = (tids[:, None] == tids[None, :]).to(device)
    onehot = torch.nn.functional.one_hot(tids, n_t).bool().to(device)
    norm = torch.nn.functional.normalize
    dist.seed_torch(0)
    times, curve = [], []
    hf.train()
    with torch.autograd.set_detect_anomaly(style == "reference"):
        for step in range(args.steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            with dist.autocast():
                img = dist.shard_rows(enc.forward_image, pix)
                txt = dist.shard_rows(
                    lambda i: enc.forward_text({k: v[i] for k, v in tokens.items()}),
                    torch.arange(len(texts), device=device),
                )
                img, txt = norm(img.float(), dim=-1), norm(txt.float(), dim=-1)
                prompts, caps = txt[:n_t], txt[n_t:]
                scale = hf.logit_scale.exp()
                i2t = multi_pos_nll(
                    torch.cat([scale * img @ prompts.T, scale * img @ caps.T], 1),
                    torch.cat([onehot, same], 1),
                )
                t2i = multi_pos_nll(
                    scale * torch.cat([caps, prompts]) @ img.T, torch.cat([same, onehot.T])
                )
                loss = 0.5 * (i2t + t2i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dist.all_reduce_grads(params)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            _sync(device)
            times.append(time.perf_counter() - t0)
            curve.append({"step": float(step), "loss": float(loss.detach())})
    keep = ("text_projection.weight", "visual_projection.weight", "logit_scale")
    state = {n: p.detach().float().cpu() for n, p in hf.named_parameters() if n in keep}
    return {"times": times, "curve": curve, "state": state}


def run(base: Any, profile: str, style: str, args: Any) -> dict:
    device = torch.device(args.device)
    enc = fresh(base, style, device)
    if profile == "pretraining":
        res = run_pretraining(enc, style, args, device)
    else:
        res = run_method(enc, profile, style, args, device)
    del enc
    if device.type == "cuda":
        torch.cuda.empty_cache()
    timed = res["times"][1:] or res["times"]
    res["s_per_step"] = statistics.median(timed)
    return res


def worker(args: Any) -> int:
    """One process of a ``--processes`` launch: the relsafe style of ``args.profile``."""
    from safetensors.torch import save_file

    from relsafe.distributed import current

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    dist = current()
    if dist.device is not None and dist.device.type == "cuda":
        args.device = str(dist.device)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(base_encoder(args, Path(tmp)), args.profile, "relsafe", args)
    if dist.is_main:
        out = Path(args.worker_out)
        save_file({k: v.contiguous() for k, v in res["state"].items()}, str(out / "state.st"))
        (out / "run.json").write_text(json.dumps({k: res[k] for k in ("s_per_step", "curve")}))
    dist.barrier()
    return 0


def scaling(args: Any, profile: str, one: dict, tmp: Path) -> str:
    """``args.processes`` processes against the 1-process relsafe run ``one``."""
    from safetensors.torch import load_file

    n = args.processes
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
    got = json.loads((out / "run.json").read_text())
    state = load_file(str(out / "state.st"))
    diff = max(float((state[k] - v).abs().max()) for k, v in one["state"].items())
    loss_diff = max(
        abs(a["loss"] - b["loss"]) for a, b in zip(got["curve"], one["curve"], strict=True)
    )
    t_n, t_1 = got["s_per_step"], one["s_per_step"]
    return (
        f"{n} processes {t_n:.3f} s/step vs 1 process {t_1:.3f} s/step ({t_1 / t_n:.2f}x) at "
        f"the same global batch; max |loss diff| {loss_diff:.1e}, max |weight diff| after "
        f"{args.steps + 1} steps {diff:.1e}"
    )


def _passthrough(args: Any) -> list[str]:
    out = ["--config", args.config, "--device", args.device]
    out += ["--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    return out + (["--model", str(args.model)] if args.model else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--model", type=Path, default=None, help="a saved HF CLIP folder instead")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--batch-size", type=int, default=8, help="B (rows per step, see above)")
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
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    bad = [p for p in profiles if p not in PROFILES]
    if bad:
        ap.error(f"unknown profiles {bad}; use {list(PROFILES)}")
    if args.batch_size < 2 or args.steps < 1:
        ap.error("--batch-size must be >= 2 and --steps >= 1")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="relsafe-train-") as tmp_s:
        tmp = Path(tmp_s)
        base = base_encoder(args, tmp)
        for prof in profiles:
            res = {style: run(base, prof, style, args) for style in STYLES}
            r: dict[str, Any] = {s: res[s]["s_per_step"] for s in STYLES}
            r["curve"] = {s: res[s]["curve"] for s in STYLES}
            r["stopped"] = {s: res[s]["stopped"] for s in STYLES if res[s].get("stopped")}
            if args.processes > 1:
                r["scaling"] = scaling(args, prof, res["relsafe"], tmp)
            rows[prof] = r
            print(f"  {prof}: done", flush=True)
    cuda = torch.device(args.device).type == "cuda"
    what = f"HF CLIP {args.model}" if args.model else f"CLIP {args.config} random init"
    print()
    print(
        f"{what}, {args.device}, B={args.batch_size}, median of {args.steps} steps after 1 "
        "warm-up; relsafe style: SDPA"
        + (", bf16 autocast, fused AdamW" if cuda else ", float32 (training stays float32 on CPU)")
    )
    print()
    print("| method (trained) | reference s/step | relsafe s/step | speed-up |")
    print("|---|---:|---:|---:|")
    for prof, r in rows.items():
        print(
            f"| {prof} ({PROFILES[prof]}) | {r['reference']:.3f} | {r['relsafe']:.3f} | "
            f"{r['reference'] / r['relsafe']:.2f}x |"
        )
    for prof, r in rows.items():
        for style, why in r["stopped"].items():
            print(f"WARNING, {prof} {style}: stopped early ({why}); fewer steps were timed")
    for prof, r in rows.items():
        if "scaling" in r:
            print(f"scaling, {prof}: {r['scaling']}")
    if args.json:
        meta = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"args": meta, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
