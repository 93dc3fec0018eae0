"""Large-vocabulary derivation: a 50-tuple policy over 100 subjects x 50 relations x 2,000 objects.

Issue 15's scale target: derivations (neighbours, counterparts, unrelated samples) and the edit
sets of such a policy take seconds, without listing the vocabulary's combinations. This script
writes a synthetic vocabulary YAML (20 object kinds of 100 objects; relation ``r`` takes 10 of
the kinds, so the vocabulary has 5,000,000 tuples), loads it, loads a 50-tuple policy naming it,
derives every unsafe tuple, samples the unrelated pools and builds the relational edit sets
(default sizes; text only, as a vocabulary without a manifest has no images).

Each phase is timed; peak memory is the process's peak RSS, and with ``--traced`` also the
traced Python allocation peak (``tracemalloc``, which slows allocation-heavy phases about 2x, so
its timings are not the ones to quote). Run::

    python benchmarks/vocab_scale.py [--subjects 100 --relations 50 --objects 2000 --policy 50]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import yaml


def synthetic_vocabulary(n_subj: int, n_rel: int, n_obj: int, n_kinds: int = 20) -> dict:
    """A vocabulary mapping: words ``s<i>``/``r<i>``/``o<i>``, kinds ``k<i>``, each relation
    taking half of the kinds, two train and one held-out phrasing per word."""
    per_kind = max(1, n_obj // n_kinds)
    subjects = {
        f"s{i}": {"train": [f"person {i}", f"human {i}"], "heldout": [f"someone {i}"]}
        for i in range(n_subj)
    }
    objects = {
        f"o{i}": {
            "kind": f"k{min(i // per_kind, n_kinds - 1)}",
            "train": [f"thing {i}", f"object {i}"],
            "heldout": [f"item {i}"],
        }
        for i in range(n_obj)
    }
    relations = {
        f"r{i}": {
            "train": [f"using {i}", f"handling {i}"],
            "heldout": [f"operating {i}"],
            "takes": [f"k{(i + j) % n_kinds}" for j in range(n_kinds // 2)],
        }
        for i in range(n_rel)
    }
    return {
        "name": f"synthetic-{n_subj}x{n_rel}x{n_obj}",
        "subjects": subjects,
        "relations": relations,
        "objects": objects,
        "templates": {
            "train": ["a photo of {s} {r} {o}", "a picture of {s} {r} {o}", "{s} {r} {o}"],
            "heldout": ["a snapshot showing {s} {r} {o}"],
        },
        "contexts": {"train": ["{c}, indoors"], "heldout": ["alt text: {c}"]},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=100)
    ap.add_argument("--relations", type=int, default=50)
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--policy", type=int, default=50, help="unsafe tuples in the policy")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--traced", action="store_true", help="also trace Python allocations")
    args = ap.parse_args(argv)

    from relsafe.data.edit_sets import relational_sets
    from relsafe.policy import load_policy
    from relsafe.world.vocab import load_vocabulary

    if args.traced:
        tracemalloc.start()
    out: dict[str, float | int | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        data = synthetic_vocabulary(args.subjects, args.relations, args.objects)
        (root / "vocab.yaml").write_text(yaml.safe_dump(data, sort_keys=False), "utf-8")
        out["write_yaml_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        vocab = load_vocabulary(root / "vocab.yaml")
        out["load_vocabulary_s"] = time.perf_counter() - t0
        out["valid_tuples"] = vocab.count_valid()

        unsafe = vocab.sample_tuples(args.policy, seed=123)
        (root / "policy.yaml").write_text(
            yaml.safe_dump(
                {"name": "big", "vocabulary": "vocab.yaml", "unsafe": [t.id for t in unsafe]}
            ),
            "utf-8",
        )
        t0 = time.perf_counter()
        policy = load_policy(root / "policy.yaml")
        out["load_policy_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        derivs = policy.derivations
        out["derive_s"] = time.perf_counter() - t0
        out["neighbours"] = sum(len(d.neighbours) for d in derivs)

        t0 = time.perf_counter()
        out["unrelated_retain"] = len(policy.unrelated("retain"))
        out["unrelated_unseen"] = len(policy.unrelated("unseen"))
        out["unrelated_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        sets = relational_sets(policy)
        out["edit_sets_s"] = time.perf_counter() - t0
        out["forget_texts"] = len(sets.forget_texts)
        out["retain_texts"] = len(sets.retain_texts)
        out["retained_tuples"] = sum(len(v) for v in sets.retain_tuples.values())
    if args.traced:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["peak_traced_mib"] = peak / 2**20
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["total_after_yaml_s"] = sum(
        float(out[k])
        for k in ("load_vocabulary_s", "load_policy_s", "derive_s", "unrelated_s", "edit_sets_s")
    )
    for k, v in out.items():
        print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v:,}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
