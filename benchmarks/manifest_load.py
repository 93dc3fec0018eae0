"""How long a 10,000-row Parquet manifest takes to load, with and without decoding its images
(docs/benchmarks.md, "Manifests"). Writes 16x16 PNGs and the manifest under ``--root`` (default
a temporary folder), then times ``load_manifest`` and traces its peak Python allocation::

    python benchmarks/manifest_load.py [--rows 10000] [--root DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from relsafe.data.manifest import load_manifest
    from relsafe.world.vocab import default_vocabulary

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--root", type=Path, default=None)
    args = ap.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="manifest_load_"))
    (root / "img").mkdir(parents=True, exist_ok=True)
    vocab = default_vocabulary()
    tuples = vocab.valid_tuples()
    rng = np.random.default_rng(0)
    recs = []
    for i in range(args.rows):
        f = root / "img" / f"{i}.png"
        if not f.exists():
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(f)
        t = tuples[i % len(tuples)]
        recs.append(
            {
                "image": f"img/{i}.png",
                "subject": t.subject,
                "relation": t.relation,
                "object": t.object,
                "split": ("train", "val", "test")[i % 3],
                "domain": ("photo", "sketch")[i % 2],
            }
        )
    pq.write_table(pa.Table.from_pylist(recs), root / "m.parquet")
    for decode in (False, True):
        tracemalloc.start()
        t0 = time.perf_counter()
        m = load_manifest(root / "m.parquet", vocab, decode=decode)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"decode={decode}: {len(m.rows)} rows in {seconds:.2f} s, peak traced {peak / 2**20:.1f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
