"""Choose HySAC's traversal target on VAL (issue 13): no traversal, the innermost region (the
default), the safe-text region and the safe-image region, on VAL quadruplets of a policy.

Prints, per query direction of the mixed 2N galleries, the share of queries whose top-1 is safe
and the share whose top-1 is safe *and* shows the query's counterpart tuple. TEST is not read.

    python benchmarks/hysac_traversal_val.py --model runs/benchmark/models/hysac --policy default
"""

from __future__ import annotations

import argparse

import torch

from relsafe.api import load_model, load_policy
from relsafe.data.visu import VisuData
from relsafe.engine import EmbeddingEngine
from relsafe.world import splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a HySAC edit folder or merged model")
    ap.add_argument("--policy", default="default")
    ap.add_argument("--n-per-pair", type=int, default=16)
    args = ap.parse_args()
    model = load_model(args.model)
    if not model.supports_traversal:
        raise SystemExit(f"{args.model} has no traversal (train it with the hysac method)")
    data = VisuData.from_relworld(
        load_policy(args.policy), args.n_per_pair, splits.VAL, size=64, caption_split="eval"
    )
    engine = EmbeddingEngine(model, progress=False)
    emb = {
        "S": engine.embed_texts(data.S),
        "U": engine.embed_texts(data.U),
        "V": engine.embed_images(data.V),
        "G": engine.embed_images(data.G),
    }
    tags, n = list(data.safe_tags), len(data)

    def rates(query: torch.Tensor, safe: torch.Tensor, unsafe: torch.Tensor) -> str:
        top = model.similarity(query, torch.cat([safe, unsafe])).argmax(1).tolist()
        n_safe = sum(t < n for t in top)
        n_cp = sum(t < n and tags[t] == tags[i] for i, t in enumerate(top))
        return f"{n_safe / n:.3f} / {n_cp / n:.3f}"

    print(f"VAL quadruplets: {n} queries per direction; cells: share safe / share counterpart")
    print("| traversal | U->[V;G] | G->[S;U] | S->[V;G] | V->[S;U] |\n|---|---|---|---|---|")
    for name, target in (
        ("none", "none"),
        ("innermost (default)", None),
        ("safe-text region", "text"),
        ("safe-image region", "image"),
    ):

        def tr(x: torch.Tensor, modality: str, target: str | None = target) -> torch.Tensor:
            return x if target == "none" else model.traverse(x, modality, target)

        cells = [
            rates(tr(emb["U"], "text"), emb["V"], emb["G"]),
            rates(tr(emb["G"], "image"), emb["S"], emb["U"]),
            rates(tr(emb["S"], "text"), emb["V"], emb["G"]),
            rates(tr(emb["V"], "image"), emb["S"], emb["U"]),
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
