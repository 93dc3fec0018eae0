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
from typing import Any

from relsafe.data.probes import check_probe_split, probe_tuples, render_probe_images
from relsafe.errors import InputError
from relsafe.world.styles import ALL_STYLES, TRAIN_STYLES

__all__ = ["MANIFEST_COLUMNS", "export_relworld"]

MANIFEST_COLUMNS = ("image", "subject", "relation", "object", "split", "domain", "scene")


def export_relworld(
    out: str | os.PathLike[str],
    *,
    split: str = "test",
    n_per_tuple: int = 4,
    size: int = 64,
    seed: int = 0,
    styles: Sequence[str] = TRAIN_STYLES,
    progress: bool = True,
    edit_seeds: int = 0,
    edit_per_tuple: int = 24,
    policy: Any = None,
    retain_per_tuple: int = 6,
) -> Path:
    """Render and write the gallery (see the module docs); returns the manifest's path.

    ``out`` must not exist yet or be empty of anything but an earlier export (the caller checks
    with :mod:`relsafe.outputs`); ``styles`` cycle over each tuple's images like the suites'."""
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
            rows.append(_write_image(tmp, "images", str(i), arr, t, split, styles[i % len(styles)]))
        if edit_seeds:
            rows.extend(
                _edit_rows(
                    tmp, policy, edit_seeds, edit_per_tuple, size, progress, retain_per_tuple
                )
            )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "manifest.csv").write_text(buf.getvalue(), encoding="utf-8")
    return dest / "manifest.csv"


def _retain_sets(policy: Any, k: int, n: int, size: int) -> Any:
    """RelWorld's relational edit sets of seed ``k`` with ``n`` retain images per tuple (and
    none of the forget tuples: those are :func:`_edit_rows`' pairs)."""
    from relsafe.data.edit_sets import SetSizes, relational_sets

    return relational_sets(policy, SetSizes(
        texts_per_forget_tuple=1, images_per_forget_tuple=0, texts_per_retain_tuple=1,
        images_per_retain_tuple=n, size=size, seed=k,
    ))  # fmt: skip


def _retain_rows(
    tmp: Path, sets: Any, every: set[Any], k: int, n: int, size: int
) -> list[dict[str, str]]:
    """The retain images RelWorld's relational edit sets render for seed ``k`` (``n`` per
    retained tuple, each its own scene), and ``n`` filler renders (a seed of their own) of every
    tuple retained by another seed but not by ``k``, so each tuple's ``k``-th block of unpaired
    rows is seed ``k``'s."""

    from relsafe.data.world import RenderedImages

    kept = sorted({t for ts in sets.retain_tuples.values() for t in ts})
    imgs, tuples = list(sets.retain_images), list(sets.retain_image_tuples)
    fill = [t for t in sorted(every) if t not in set(kept)]
    if fill:
        f_img, _, f_t, _ = RenderedImages().pair_images(
            [(t, t) for t in fill], n, size, k, 50_000_000
        )
        imgs.extend(f_img)
        tuples.extend(f_t)
    return [
        _write_image(tmp, "edit", f"retain{k}-{i}", img, t, "train",
                     TRAIN_STYLES[(i % n) % len(TRAIN_STYLES)], scene=f"retain{k}-{i}")
        for i, (img, t) in enumerate(zip(imgs, tuples, strict=True))
    ]  # fmt: skip


def _edit_rows(
    tmp: Path, policy: Any, n_seeds: int, n: int, size: int, progress: bool, n_retain: int = 6
) -> list[dict[str, str]]:
    """Write the forget pairs RelWorld's edit sets render for seeds ``0..n_seeds-1`` (seed-major,
    pair by pair, as :meth:`relsafe.data.world.RenderedImages.pair_images` orders them) and
    return their manifest rows: each pair a scene ``edit<k>-<i>``, both rows in ``train``."""
    from tqdm.auto import tqdm

    from relsafe.data.world import RenderedImages

    for name, v, hi in (("edit_seeds", n_seeds, 100), ("edit_per_tuple", n, 1000)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
            raise InputError(f"{name} must be an integer in [0, {hi}], got {v!r}")
    if policy is None:
        from relsafe.policy import find_policy, load_policy

        policy = load_policy(find_policy("default"))
    pairs = list(policy.pairs())
    rows: list[dict[str, str]] = []
    retain = [_retain_sets(policy, k, n_retain, size) for k in range(n_seeds)] if n_retain else []
    every = {t for s in retain for ts in s.retain_tuples.values() for t in ts}
    for k in tqdm(range(n_seeds), desc="RelWorld edit pairs", disable=not progress):
        a_img, b_img, a_t, b_t = RenderedImages().pair_images(pairs, n, size, k, 0)
        if retain:
            rows.extend(_retain_rows(tmp, retain[k], every, k, n_retain, size))
        for i in range(len(a_t)):
            scene, domain = f"edit{k}-{i}", TRAIN_STYLES[(i % n) % len(TRAIN_STYLES)]
            for img, t in ((a_img[i], a_t[i]), (b_img[i], b_t[i])):
                rows.append(_write_image(tmp, "edit", scene, img, t, "train", domain, scene=scene))
    return rows


def _write_image(
    tmp: Path, folder: str, name: str, img: Any, t: Any, split: str, domain: str, scene: str = ""
) -> dict[str, str]:
    """Save ``img`` as ``<folder>/<subject>-<relation>-<object>/<name>.png`` under ``tmp`` and
    return its manifest row."""
    from PIL import Image

    rel = Path(folder) / f"{t.subject}-{t.relation}-{t.object}" / f"{name}.png"
    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(tmp / rel, format="PNG")
    return {
        "image": rel.as_posix(),
        "subject": t.subject,
        "relation": t.relation,
        "object": t.object,
        "split": split,
        "domain": domain,
        "scene": scene,
    }
