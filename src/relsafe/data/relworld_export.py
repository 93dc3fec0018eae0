"""Write RelWorld images to disk as a tuple-labelled manifest (DATA.md), for tools that take files.

``relsafe data export-relworld --out DIR`` renders ``n_per_tuple`` images of every valid tuple from a
probe split's seed (``test`` by default: the images the suites score, so an index of them is the
RelWorld test gallery) and writes::

    DIR/images/<subject>-<relation>-<object>/<i>.png
    DIR/manifest.csv      image,subject,relation,object,split,domain,scene

``image`` is relative to the manifest's folder; ``domain`` is the image's style (``plain``,
``pastel``, ... or a held-out style when asked for). The images are exactly
:func:`~relsafe.data.probes.render_probe_images`' for the same arguments, so numbers computed on the
files match the suites'. The folder is written whole (built beside it and renamed into place).

**A run's material** (``edit_seeds > 0``): RelWorld is a manifest nobody wrote down (every tuple
and every ordered pair has its own sequence of scenes per use,
:class:`relsafe.data.image_sources.RenderedImages`), and the exporter writes the first scenes of each
sequence a run draws, as rows the manifest world's seed block rule takes in the same order:

* ``train``: ``edit_seeds * edit_per_tuple`` minimal pairs (one ``scene``, both tuples) of every
  policy pair and every concept-erasure pair, ``edit_seeds * quad_per_pair`` of the policy pairs
  (the quadruplet methods'), and ``edit_seeds * retain_per_tuple`` own scenes of every tuple;
* ``val``: ``edit_seeds * val_per_pair`` minimal pairs of the policy pairs (HySAC's validation)
  and ``val_per_tuple`` own scenes of every tuple (tuning, the unsafe classifier's fit);
* ``test``: ``test_per_pair`` minimal pairs of the policy pairs (the quadruplet suites), in the
  training styles and again in each of ``ood_styles``; the probes above are the test split's own
  scenes, and ``ood_styles`` adds each held-out style's probes as its own domain.

A run on ``world: {vocabulary: relworld, data: DIR/manifest.csv}`` then sees RelWorld's own images
(``tests/test_world_identity.py``); its OOD attacks are named ``domain:<style>``, not
``ood:<style>``.
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
from relsafe.world.styles import ALL_STYLES, OOD_STYLES, TRAIN_STYLES

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
    quad_per_pair: int = 0,
    val_per_pair: int = 0,
    val_per_tuple: int = 0,
    test_per_pair: int = 0,
    ood_styles: Sequence[str] = (),
    concept_role: str = "object",
) -> Path:
    """Render and write the gallery and, with ``edit_seeds``, a run's material (see the module
    docs); returns the manifest's path.

    ``out`` must not exist yet or be empty of anything but an earlier export (the caller checks
    with :mod:`relsafe.outputs`); ``styles`` cycle over each tuple's images like the suites'."""
    from tqdm.auto import tqdm

    from relsafe.utils_io import atomic_dir

    check_probe_split(split)
    _count("n_per_tuple", n_per_tuple, 1, 1000)
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
        raise InputError(f"size must be an integer in [16, 1024], got {size!r}")
    bad = [s for s in styles if s not in ALL_STYLES]
    if bad or not styles:
        raise InputError(f"unknown styles {bad or '(none given)'}; valid: {list(ALL_STYLES)}")
    bad = [s for s in ood_styles if s not in OOD_STYLES]
    if bad:
        raise InputError(f"ood_styles {bad} are not held-out styles {list(OOD_STYLES)}")
    tuples = probe_tuples(None)
    dest = Path(out)
    with atomic_dir(dest) as tmp:
        rows: list[dict[str, str]] = []
        for probe_styles, folder in [(tuple(styles), "images")] + [
            ((s,), f"images-{s}") for s in ood_styles
        ]:
            images, labels, _ = render_probe_images(
                n_per_tuple, size, seed, tuples, split, probe_styles
            )
            counts: dict[int, int] = {}
            for arr, lab in tqdm(
                list(zip(images, labels, strict=True)),
                desc=f"RelWorld {split} images ({'/'.join(probe_styles)})",
                disable=not progress,
            ):
                i = counts.get(int(lab), 0)
                counts[int(lab)] = i + 1
                style = probe_styles[(seed * n_per_tuple + i) % len(probe_styles)]
                rows.append(_write_image(tmp, folder, str(i), arr, tuples[int(lab)], split, style))
        if edit_seeds:
            rows.extend(
                _run_rows(
                    tmp,
                    policy,
                    size=size,
                    progress=progress,
                    n_seeds=edit_seeds,
                    edit_per_tuple=edit_per_tuple,
                    retain_per_tuple=retain_per_tuple,
                    quad_per_pair=quad_per_pair,
                    val_per_pair=val_per_pair,
                    val_per_tuple=0 if split == "val" else val_per_tuple,
                    test_per_pair=test_per_pair,
                    ood_styles=tuple(ood_styles),
                    concept_role=concept_role,
                )
            )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "manifest.csv").write_text(buf.getvalue(), encoding="utf-8")
    return dest / "manifest.csv"


def _count(name: str, v: Any, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InputError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")


def _run_rows(
    tmp: Path,
    policy: Any,
    *,
    size: int,
    progress: bool,
    n_seeds: int,
    edit_per_tuple: int,
    retain_per_tuple: int,
    quad_per_pair: int,
    val_per_pair: int,
    val_per_tuple: int,
    test_per_pair: int,
    ood_styles: tuple[str, ...],
    concept_role: str,
) -> list[dict[str, str]]:
    """The rows of a run's material (module docs), use by use: minimal pairs share a scene
    ``<split>-<p>-<pos>`` (``p`` the pair's index, ``pos`` its scene), own scenes have none."""
    from tqdm.auto import tqdm

    from relsafe.data.edit_sets import concept_sets
    from relsafe.world import splits
    from relsafe.world.dataset import render_scenes, scene_seed, scene_style

    _count("edit_seeds", n_seeds, 0, 100)
    for name, v in (
        ("edit_per_tuple", edit_per_tuple),
        ("retain_per_tuple", retain_per_tuple),
        ("quad_per_pair", quad_per_pair),
        ("val_per_pair", val_per_pair),
        ("val_per_tuple", val_per_tuple),
        ("test_per_pair", test_per_pair),
    ):
        _count(name, v, 0, 1000)
    if policy is None:
        from relsafe.policy import find_policy, load_policy

        policy = load_policy(find_policy("default"))
    own = list(policy.pairs())
    concept = [p for p in concept_sets(policy, concept_role).counterparts.items() if p not in own]
    every = probe_tuples(None)
    # (split, pair index, a, b, scenes, styles): b None for a tuple's own scenes
    plan: list[tuple[str, int, Any, Any, int, tuple[str, ...]]] = []
    for p, (a, b) in enumerate(own + concept):
        n = max(edit_per_tuple, quad_per_pair if p < len(own) else 0)
        plan.append(("train", p, a, b, n_seeds * n, TRAIN_STYLES))
    plan += [("train", -1, t, None, n_seeds * retain_per_tuple, TRAIN_STYLES) for t in every]
    for p, (a, b) in enumerate(own):
        plan.append(("val", p, a, b, n_seeds * val_per_pair, TRAIN_STYLES))
        for st in (TRAIN_STYLES, *((s,) for s in ood_styles)):
            plan.append(("test", p, a, b, test_per_pair, st))
    plan += [("val", -1, t, None, val_per_tuple, TRAIN_STYLES) for t in every]
    use = {"train": splits.EDIT, "val": splits.VAL, "test": splits.TEST}
    rows: list[dict[str, str]] = []
    for split, p, a, b, n, styles in tqdm(plan, desc="RelWorld run material", disable=not progress):
        if not n:
            continue
        sides = [a] if b is None else [a, b]
        seeds = [scene_seed(use[split], a, b, pos) for pos in range(n)]
        imgs = [render_scenes([t] * n, seeds, range(n), styles, size) for t in sides]
        tag = "" if len(styles) > 1 else f"-{styles[0]}"
        for pos in range(n):  # in scene order: the order the seed block rule counts in
            style = scene_style(pos, styles)
            scene = "" if b is None else f"{split}-{p}-{pos}{tag}"
            for si, t in enumerate(sides):
                name = f"{split}-{pos}{tag}" if b is None else f"{scene}-{'ab'[si]}"
                rows.append(_write_image(tmp, "run", name, imgs[si][pos], t, split, style, scene))
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
