"""Write RelWorld images to disk as a tuple-labelled manifest (DATA.md), for tools that take files.

``relsafe data export-relworld --out DIR`` renders ``n_per_tuple`` images of every valid tuple from a
probe split's seed (``test`` by default: the images the suites score, so an index of them is the
RelWorld test gallery) and writes::

    DIR/images/<subject>-<relation>-<object>/<i>.png
    DIR/manifest.csv      image,subject,relation,object,split,domain

``image`` is relative to the manifest's folder; ``domain`` is the image's style (``plain``,
``pastel``, ... or a held-out style when asked for). The images are exactly
:func:`~relsafe.data.probes.render_probe_images`' for the same arguments, so numbers computed on the
files match the suites'. The folder is written whole (built beside it and renamed into place).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from relsafe.data.probes import check_probe_split, probe_tuples, render_probe_images
from relsafe.errors import InputError
from relsafe.world.styles import ALL_STYLES, TRAIN_STYLES

__all__ = ["MANIFEST_COLUMNS", "export_relworld"]

MANIFEST_COLUMNS = ("image", "subject", "relation", "object", "split", "domain")


def export_relworld(
    out: str | os.PathLike[str],
    *,
    split: str = "test",
    n_per_tuple: int = 4,
    size: int = 64,
    seed: int = 0,
    styles: Sequence[str] = TRAIN_STYLES,
    progress: bool = True,
) -> Path:
    """Render and write the gallery (see the module docs); returns the manifest's path.

    ``out`` must not exist yet or be empty of anything but an earlier export (the caller checks
    with :mod:`relsafe.outputs`); ``styles`` cycle over each tuple's images like the suites'."""
    from PIL import Image
    from tqdm.auto import tqdm

    from relsafe.utils_io import atomic_dir

    check_probe_split(split)
    if isinstance(n_per_tuple, bool) or not isinstance(n_per_tuple, int) or n_per_tuple < 1:
        raise InputError(f"n_per_tuple must be a positive integer, got {n_per_tuple!r}")
    if n_per_tuple > 1000:
        raise InputError(f"n_per_tuple must be at most 1000, got {n_per_tuple}")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
        raise InputError(f"size must be an integer in [16, 1024], got {size!r}")
    bad = [s for s in styles if s not in ALL_STYLES]
    if bad or not styles:
        raise InputError(f"unknown styles {bad or '(none given)'}; valid: {list(ALL_STYLES)}")
    tuples = probe_tuples(None)
    images, labels, _ = render_probe_images(n_per_tuple, size, seed, tuples, split, styles)
    rows: list[dict[str, str]] = []
    dest = Path(out)
    with atomic_dir(dest) as tmp:
        counts: dict[int, int] = {}
        for arr, lab in tqdm(
            list(zip(images, labels, strict=True)),
            desc=f"RelWorld {split} images",
            disable=not progress,
        ):
            t = tuples[int(lab)]
            i = counts.get(int(lab), 0)
            counts[int(lab)] = i + 1
            rel = Path("images") / f"{t.subject}-{t.relation}-{t.object}" / f"{i}.png"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp / rel, format="PNG")
            rows.append(
                {
                    "image": rel.as_posix(),
                    "subject": t.subject,
                    "relation": t.relation,
                    "object": t.object,
                    "split": split,
                    "domain": styles[i % len(styles)],
                }
            )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "manifest.csv").write_text(buf.getvalue(), encoding="utf-8")
    return dest / "manifest.csv"
