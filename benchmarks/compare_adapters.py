"""The largest absolute difference between the adapter weights of two edit folders.

Used to show that a method trains exactly as before a change (e.g. safeclip and hysac with the
retain pool off)::

    git worktree add /tmp/old REV
    PYTHONPATH=/tmp/old/src relsafe edit --method safeclip --policy tiny --set steps=4 --out /tmp/a
    relsafe edit --method safeclip --policy tiny --set steps=4 --out /tmp/b
    python benchmarks/compare_adapters.py /tmp/a /tmp/b

Prints one line per adapter file and exits 1 when any tensor differs in name, shape or value.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = (Path(p) / "adapter" for p in argv)
    files = sorted(p.name for p in a.glob("*.safetensors"))
    if not files or files != sorted(p.name for p in b.glob("*.safetensors")):
        print(f"adapter files differ or are missing: {a} vs {b}")
        return 1
    same = True
    for name in files:
        x, y = load_file(a / name), load_file(b / name)
        if x.keys() != y.keys() or any(x[k].shape != y[k].shape for k in x):
            print(f"{name}: tensor names or shapes differ")
            same = False
            continue
        diff = max((float(np.abs(x[k] - y[k]).max()) for k in x), default=0.0)
        print(f"{name}: {len(x)} tensors, max |diff| {diff:.3g}")
        same = same and diff == 0.0
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
