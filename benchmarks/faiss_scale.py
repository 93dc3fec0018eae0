"""FAISS at scale: flat vs IVF on synthetic clustered unit vectors, and a text search end to end.

Part 1: ``--n`` (default 1,000,000) unit vectors of dimension ``--dim`` (256) drawn from a mixture
of ``--clusters`` (1,000) Gaussian clusters (noise of standard deviation 1.6 around
standard-normal centres, so clusters overlap and IVF needs several probes: at 1.0 one probe
already finds 99 % of the neighbours, which flatters IVF) and normalised (real embeddings are clustered; uniform
random vectors would make every index look bad). Flat (``IndexFlatIP``, exact) against IVF built
by relsafe's own rule (:func:`relsafe.gallery.faiss_index.build_faiss`: ``nlist = 4 sqrt(N)``,
``nprobe`` calibrated to recall@10 >= 0.95 on held-out gallery vectors): build time, recall@10 of
IVF against flat on fresh queries from the same mixture, and latency p50/p99 per single query and
per batch of 32.

Part 2: a ``--gallery-n`` (100,000) item gallery of synthetic vectors in relsafe-mini's embedding
space (IVF, as ``--faiss auto`` picks above 50,000), searched end to end through
:func:`relsafe.gallery.search.search_embeddings` with a text embedded by relsafe-mini for each
query (embed + classify + search + re-rank + hits), modes ``off`` and ``filter``: p50/p99 per
query. Target: p99 < 100 ms on the 2-core CPU.

    python benchmarks/faiss_scale.py            # 1M vectors: ~1 GB of RAM, minutes of CPU
    python benchmarks/faiss_scale.py --quick    # 50k vectors, 20k gallery
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")


def clustered(n: int, d: int, k: int, seed: int, spread: float = 1.6) -> np.ndarray:
    """``n`` unit vectors from a mixture of ``k`` Gaussian clusters (built in chunks)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        x = centres[rng.integers(0, k, hi - lo)]
        x = x + spread * rng.standard_normal((hi - lo, d)).astype(np.float32)
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def latency(index: Any, queries: np.ndarray, k: int, batch: int, reps: int) -> dict[str, float]:
    """p50/p99 in ms of ``index.search`` on ``batch`` queries at a time, ``reps`` times."""
    times = []
    for r in range(reps):
        lo = (r * batch) % (len(queries) - batch + 1)
        q = np.ascontiguousarray(queries[lo : lo + batch])
        t = time.perf_counter()
        index.search(q, k)
        times.append(time.perf_counter() - t)
    return {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "n": reps}


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def part1(n: int, d: int, k_clusters: int, n_queries: int) -> dict[str, Any]:
    import faiss

    from relsafe.gallery.faiss_index import build_faiss

    t = time.perf_counter()
    data = clustered(n + n_queries, d, k_clusters, seed=0)
    x, q = data[:n], data[n:]
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    flat_build = time.perf_counter() - t
    t = time.perf_counter()
    ivf, params = build_faiss(x, lambda rows: x[rows], "ivf", seed=0)
    ivf_build = time.perf_counter() - t
    _, truth = flat.search(q, 10)
    _, found = ivf.search(q, 10)
    reps_single = min(200, n_queries)
    return {
        "n": n,
        "dim": d,
        "clusters": k_clusters,
        "generate_s": gen_s,
        "flat": {
            "build_s": flat_build,
            "single": latency(flat, q, 10, 1, reps_single),
            "batch32": latency(flat, q, 10, 32, 20),
        },
        "ivf": {
            "build_s": ivf_build,
            "params": params,
            "recall_at_10": recall_at_10(found, truth),
            "recall_queries": int(len(q)),
            "single": latency(ivf, q, 10, 1, reps_single),
            "batch32": latency(ivf, q, 10, 32, 20),
        },
    }


def part2(gallery_n: int, n_queries: int) -> dict[str, Any]:
    import torch

    from relsafe import api
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.unsafe_cls import UnsafeClassifier, unsafe_prompts
    from relsafe.gallery.faiss_index import build_faiss, choose_kind, gallery_matrix
    from relsafe.gallery.search import search_embeddings
    from relsafe.gallery.store import GalleryIndex
    from relsafe.safety import SafetyModel
    from relsafe.world.captions import all_captions

    model = api.load_model("relsafe-mini")
    engine = EmbeddingEngine(model, device="cpu", progress=False, num_workers=0)
    policy = api.load_policy("default")
    up, sp = unsafe_prompts(policy)
    clf = UnsafeClassifier(
        "prompt", {"text": 0.0}, {"unsafe": engine.embed_texts(up), "safe": engine.embed_texts(sp)}
    )
    safety = SafetyModel(model, clf, None, engine=engine, spec="relsafe-mini")
    d = model.embed_dim
    vectors = torch.from_numpy(clustered(gallery_n, d, 1000, seed=1))
    scores = clf.score(model, vectors[:50_000], "text")
    clf.thresholds["text"] = float(torch.quantile(scores, 0.8))  # ~20 % flagged
    all_scores = torch.cat(
        [clf.score(model, vectors[i : i + 50_000], "text") for i in range(0, gallery_n, 50_000)]
    )
    kind = choose_kind("auto", gallery_n)
    t = time.perf_counter()
    mat = gallery_matrix(vectors, "cosine", 1.0)
    index, params = (
        build_faiss(mat, lambda rows: mat[rows], kind, seed=0) if kind != "flat" else (None, {})
    )
    if index is None:
        import faiss

        index = faiss.IndexFlatIP(d)
        index.add(mat)
        params = {"kind": "flat"}
    build_s = time.perf_counter() - t
    meta = {
        "modality": "image",
        "size": gallery_n,
        "model": {"spec": "relsafe-mini", "fingerprint": safety.fingerprint, "geometry": "cosine"},
        "faiss": params,
    }
    items = [{"id": f"synthetic:{i}"} for i in range(gallery_n)]
    gallery = GalleryIndex(
        Path("(memory)"),
        meta,
        items,
        vectors,
        all_scores,
        all_scores > clf.thresholds["text"],
        index,
    )
    texts = []
    for t_ in list(policy.unsafe) + [c for _, c in policy.pairs()]:
        texts += all_captions(t_, "eval")
    texts = (texts * (n_queries // max(1, len(texts)) + 1))[:n_queries]
    out: dict[str, Any] = {"gallery_n": gallery_n, "faiss": params, "build_s": build_s}
    for mode in ("off", "filter"):
        search_embeddings(safety, gallery, safety.embed_texts([texts[0]]), "text", k=10, mode=mode)
        times, embed_t = [], []
        for text in texts:
            t = time.perf_counter()
            emb = safety.embed_texts([text])
            t_emb = time.perf_counter()
            res = search_embeddings(safety, gallery, emb, "text", k=10, mode=mode)
            times.append(time.perf_counter() - t)
            embed_t.append(t_emb - t)
            assert len(res[0].hits) == 10
        out[mode] = {
            "p50_ms": pct(times, 50),
            "p99_ms": pct(times, 99),
            "embed_p50_ms": pct(embed_t, 50),
            "search_p99_ms": pct([a - b for a, b in zip(times, embed_t, strict=True)], 99),
            "n": len(times),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000, help="fresh queries for recall/latency")
    ap.add_argument("--gallery-n", type=int, default=100_000)
    ap.add_argument("--search-queries", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="50k vectors, 20k gallery")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.gallery_n, args.search_queries = 50_000, 20_000, 100
    res = {
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "part1": part1(args.n, args.dim, args.clusters, args.queries),
    }
    p1 = res["part1"]
    print(f"## {args.n:,} vectors, dim {args.dim}, {args.clusters} clusters")
    print("| index | build s | recall@10 | single p50 / p99 ms | batch 32 p50 / p99 ms |")
    print("|---|---|---|---|---|")
    for name in ("flat", "ivf"):
        e = p1[name]
        rec = f"{e['recall_at_10']:.3f}" if "recall_at_10" in e else "1 (exact)"
        print(
            f"| {name} | {e['build_s']:.1f} | {rec} | {e['single']['p50_ms']:.2f} / "
            f"{e['single']['p99_ms']:.2f} | {e['batch32']['p50_ms']:.2f} / "
            f"{e['batch32']['p99_ms']:.2f} |"
        )
    ivfp = p1["ivf"]["params"]
    print(f"IVF: nlist {ivfp['nlist']}, nprobe {ivfp['nprobe']}, calibration {ivfp['calibration']}")
    res["part2"] = part2(args.gallery_n, args.search_queries)
    p2 = res["part2"]
    print(f"## text search end to end, {args.gallery_n:,}-item gallery ({p2['faiss']['kind']})")
    for mode in ("off", "filter"):
        m = p2[mode]
        print(
            f"{mode}: p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms over {m['n']} queries "
            f"(text embedding p50 {m['embed_p50_ms']:.1f} ms; search alone p99 "
            f"{m['search_p99_ms']:.1f} ms)"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
