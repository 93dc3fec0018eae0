"""The numbers the README's "How to read it" cites, from a run's ``results.jsonl`` (seed 0 rows).

    python benchmarks/readme_facts.py runs/benchmark

Prints relational-lora's landing breakdown (attack ``none``, both directions; also
relational-lora+vision's where the run has it), the attacks the original model cannot see
(``attack_informative`` 0), and HySAC's unsafe-text classification against counterparts and its
false-positive rates on neighbours and unrelated tuples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relsafe.eval.rows import read_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a relsafe run folder (results.jsonl inside)")
    args = ap.parse_args()
    rows = read_rows(args.run / "results.jsonl")

    def value(method: str, suite: str, slice_: str, attack: str, metric: str) -> float:
        got = [
            r.value
            for r in rows
            if (r.method, r.suite, r.slice, r.attack, r.metric)
            == (method, suite, slice_, attack, metric)
        ]
        if len(got) != 1:
            raise SystemExit(f"{method}/{suite}/{slice_}/{attack}/{metric}: {len(got)} rows")
        return float(got[0])

    lora = [
        m for m in ("relational-lora", "relational-lora+vision") if m in {r.method for r in rows}
    ]
    for m in lora:
        print(f"{m}, attack none, where unsafe queries land (seed 0, n = 6 tuples):")
        for d, what in (("t2i", "captions -> images"), ("i2t", "images -> captions")):
            parts = {
                k: value(m, "relational", "all", "none", f"landing_{k}_{d}")
                for k in (
                    "counterpart", "hit", "other_unsafe", "keeps_action", "keeps_object", "unrelated",
                )
            }  # fmt: skip
            print(f"  {what}: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    blind = sorted(
        {
            r.attack
            for r in rows
            if r.method == "relational-lora" and r.metric == "attack_informative" and r.value == 0
        }
    )
    print(f"uninformative attacks ({len(blind)}): {', '.join(blind)}")
    s = "text|score:radius"
    print(
        "hysac unsafe text classification: AUROC vs counterparts "
        f"{value('hysac', 'unsafe_cls', s, 'none', 'auroc_counterparts'):.3f}, FPR neighbours "
        f"{value('hysac', 'unsafe_cls', s, 'none', 'fpr_neighbours'):.3f}, FPR unrelated "
        f"{value('hysac', 'unsafe_cls', s, 'none', 'fpr_unrelated'):.3f}"
    )


if __name__ == "__main__":
    main()
