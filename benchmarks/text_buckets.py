"""Padding on the text side: a LoRA edit's text steps with and without length buckets, and
text embedding in the order given vs shortest first, side by side in one run.

    python benchmarks/text_buckets.py [--steps 6] [--overheads inf 0 16 32 64] [--threads 1]
        [--config configs/tuned/default/relational-lora.yaml] [--policy default]
        [--embed-texts 1752] [--repeats 2]

Builds relational-lora's edit on relsafe-mini (the given tuned config and policy), attaches its
LoRA, and times training steps (the loss terms' forwards and one backward) through the
frozen-prefix cache at each ``bucket_overhead`` (``inf`` = one padded batch per call, as before
the buckets; 0 = one batch per distinct length), the modes interleaved step by step so drift in
the machine's speed hits each alike. Every mode runs the same steps (the same random batches),
so it also prints how far each mode's losses and LoRA gradients are from the ``inf`` mode's (they
agree up to float rounding), and the padding each mode computes.

Then (``--embed-texts N``, 0 to skip) it embeds N captions of mixed length (edit-split captions
of every tuple, a third of them inside a train context wrapper, shuffled) with relsafe-mini twice
per repeat: batches of 256 in the order given (as ``encode_text`` and the engine did before) and
:class:`relsafe.engine.EmbeddingEngine` (float32, shortest first, rows put back in order), and
prints both times, their ratio and the largest difference. Absolute times on a shared CPU are
noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--overheads", type=float, nargs="+", default=[float("inf"), 0, 16, 32, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default=str(ROOT / "configs/tuned/default/relational-lora.yaml"))
    ap.add_argument("--policy", default="default")
    ap.add_argument("--embed-texts", type=int, default=1752)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from relsafe.api._resolve import load_model, load_policy
    from relsafe.config import from_dict
    from relsafe.data.edit_sets import relational_sets
    from relsafe.methods.lora import attach_lora
    from relsafe.methods.relational_lora import LoraEditConfig, _LoraEdit
    from relsafe.methods.text_prefix import length_buckets

    model = load_model("relsafe-mini")
    cfg = from_dict(LoraEditConfig, yaml.safe_load(Path(args.config).read_text()))
    sets = relational_sets(load_policy(args.policy), cfg.data)
    t0 = time.perf_counter()
    edit = _LoraEdit(model, sets, cfg)
    print(f"edit set-up (frozen references and prefix cache): {time.perf_counter() - t0:.1f} s")
    cache = edit.prefix
    if cache is None:
        raise SystemExit("this config trains no text tower through a frozen prefix")
    handle = attach_lora(
        model, r=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, seed=cfg.seed, targets=edit.targets
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a live adapter (B = 0 at init would make every gradient path alike)
        for p in handle.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    params = list(handle.parameters())

    # the padded positions each mode computes, over the texts of one step's calls
    calls: list[list[str]] = []
    forward = cache.forward
    cache.forward = lambda texts: (calls.append(list(texts)), forward(texts))[1]  # type: ignore[method-assign]
    edit.losses(0, random.Random(0))
    cache.forward = forward  # type: ignore[method-assign]
    length = {t: cache.split.item_length(cache.hidden[cache.index[t]]) for t in cache.index}
    real = sum(length[t] for c in calls for t in c)
    print(f"one step: {len(calls)} text calls, {sum(map(len, calls))} texts, {real} tokens")

    times: dict[float, list[float]] = {o: [] for o in args.overheads}
    first: dict[float, list[tuple[torch.Tensor, list[torch.Tensor]]]] = {
        o: [] for o in args.overheads
    }
    for step in range(args.steps):
        for o in args.overheads:
            cache.bucket_overhead = o
            t = time.perf_counter()
            out = edit.losses(step, random.Random(step))
            loss = sum(out.values())
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            times[o].append(time.perf_counter() - t)
            if step < 2:
                g = [x.detach().clone() if x is not None else torch.zeros(1) for x in grads]
                first[o].append((loss.detach().clone(), g))
    ref = args.overheads[0]
    base = statistics.median(times[ref][1:] or times[ref])
    print(
        f"\n{'overhead':>9} {'padded/real':>12} {'batches':>8} {'step s':>8} {'speed-up':>9} "
        f"{'|d loss|':>9} {'|d grad|':>9}"
    )
    for o in args.overheads:
        padded = batches = 0
        for c in calls:
            uniq = list(dict.fromkeys(c))
            groups = length_buckets([length[t] for t in uniq], o)
            batches += len(groups)
            padded += sum(len(g) * max(length[uniq[i]] for i in g) for g in groups)
        med = statistics.median(times[o][1:] or times[o])
        dl = max(abs(float(a[0] - b[0])) for a, b in zip(first[o], first[ref], strict=True))
        dg = max(
            float((x - y).abs().max())
            for a, b in zip(first[o], first[ref], strict=True)
            for x, y in zip(a[1], b[1], strict=True)
        )
        print(
            f"{o:>9} {padded / real:>12.2f} {batches:>8} {med:>8.3f} {base / med:>8.2f}x "
            f"{dl:>9.1e} {dg:>9.1e}"
        )
    print(
        f"\n(median of steps 2..{args.steps}, {args.threads} thread(s); d = against overhead {ref})"
    )
    if args.embed_texts > 0:
        embed_orders(model, args.embed_texts, args.repeats)


def mixed_captions(n: int) -> list[str]:
    from relsafe.world.captions import all_captions, contexts
    from relsafe.world.vocab import default_vocabulary

    rng = random.Random(0)
    pool = [c for t in default_vocabulary().valid_tuples() for c in all_captions(t, "edit")]
    wrappers = contexts()["edit"]
    texts = [rng.choice(pool) for _ in range(n)]
    texts = [
        rng.choice(wrappers).format(caption=t) if i % 3 == 0 else t for i, t in enumerate(texts)
    ]
    rng.shuffle(texts)
    return texts


def embed_orders(model: torch.nn.Module, n: int, repeats: int) -> None:
    from relsafe.engine import EmbeddingEngine

    texts = mixed_captions(n)
    engine = EmbeddingEngine(model, dtype="float32", progress=False, num_workers=0)

    @torch.inference_mode()
    def as_given() -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 256):
            tok = model.tokenize(texts[i : i + 256])
            out.append(model.postprocess(model.forward_text(tok), "text").float())
        return torch.cat(out)

    rows = []
    for _ in range(repeats):
        t = time.perf_counter()
        a = as_given()
        t_given = time.perf_counter() - t
        t = time.perf_counter()
        b = engine.embed_texts(texts)
        rows.append((t_given, time.perf_counter() - t, float((a - b).abs().max())))
    lens = [len(model.tokenize([x])["input_ids"][0]) for x in texts]
    print(
        f"\nembedding {n} mixed captions ({min(lens)}-{max(lens)} tokens, mean "
        f"{statistics.mean(lens):.1f}); float32"
    )
    print(
        f"{'repeat':>6} {'as given s':>11} {'shortest first s':>17} {'speed-up':>9} {'max |diff|':>11}"
    )
    for i, (g, e, d) in enumerate(rows, 1):
        print(f"{i:>6} {g:>11.2f} {e:>17.2f} {g / e:>8.2f}x {d:>11.1e}")


if __name__ == "__main__":
    main()
