"""``relsafe data check MANIFEST``: validate a tuple-labelled dataset manifest and show its counts.

The checking is :func:`relsafe.data.manifest.load_manifest`'s (every row against the vocabulary,
the images, duplicates and split leaks); this module resolves the vocabulary the user names and
lays the resulting :class:`~relsafe.data.manifest.Manifest` out as plain-text tables: rows per
tuple x split, rows per split x domain (with the test domains absent from train marked OOD), the
scenes per split (with any scene holding two rows of one tuple in one split flagged), and the rows
``--skip-bad`` left out.
"""

from __future__ import annotations

import os
from pathlib import Path

from relsafe.data.manifest import SPLITS, Manifest, load_manifest

__all__ = ["check_manifest", "counts_table", "summary"]


def check_manifest(
    path: str | os.PathLike[str],
    vocabulary: str | Path | None = None,
    *,
    decode: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> Manifest:
    """Load and validate the manifest at ``path`` against ``vocabulary`` (a built-in name such as
    ``relworld``, the default, or a vocabulary YAML path); raises what :func:`load_manifest`
    raises."""
    from relsafe.world.vocab import load_vocabulary

    vocab = load_vocabulary(vocabulary)
    return load_manifest(path, vocab, skip_bad=skip_bad, decode=decode, progress=progress)


def counts_table(m: Manifest) -> str:
    """The counts as plain-text tables: tuples x splits (with totals), then splits x domains."""
    c = m.counts()
    tuples = sorted({t for t, _ in c.per_tuple})
    width = max([len("tuple"), *(len(t) for t in tuples)])
    lines = [f"{'tuple':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS)]
    for t in tuples:
        lines.append(
            f"{t:<{width}}  " + "  ".join(f"{c.per_tuple.get((t, s), 0):>6}" for s in SPLITS)
        )
    totals = [sum(n for (_, s2), n in c.per_tuple.items() if s2 == s) for s in SPLITS]
    lines.append(f"{'(all)':<{width}}  " + "  ".join(f"{n:>6}" for n in totals))
    lines.append("")
    ood = set(m.ood_domains())
    dwidth = max([len("domain"), *(len(d) for _, d in c.per_domain)])
    lines.append(f"{'split':<6} {'domain':<{dwidth}} {'rows':>6}")
    for (split, domain), n in sorted(
        c.per_domain.items(), key=lambda kv: (SPLITS.index(kv[0][0]), kv[0][1])
    ):
        mark = "  OOD (not in train)" if split == "test" and domain in ood else ""
        lines.append(f"{split:<6} {domain:<{dwidth}} {n:>6}{mark}")
    scenes = m.scene_counts()
    if any(scenes.values()):
        lines.append("")
        lines.append("scenes: " + ", ".join(f"{s} {scenes[s]}" for s in SPLITS))
        problems = m.scene_problems()
        if problems:
            lines.append(f"scene problems ({len(problems)}):")
            lines.extend(f"  {p}" for p in problems[:50])
    return "\n".join(lines)


def summary(m: Manifest) -> str:
    """One paragraph: rows, tuples, the vocabulary, the manifest's SHA-256 and what was skipped."""
    done = " (images decoded)" if m.decoded else ""
    lines = [
        f"{m.path}: {len(m.rows)} valid rows, {len(m.tuples())} tuples, format {m.format}, "
        f"vocabulary {m.vocabulary}{done}",
        f"sha256 {m.sha256}",
    ]
    if m.skipped:
        lines.append(f"skipped {len(m.skipped)} bad row(s) (--skip-bad):")
        lines.extend(f"  {s}" for s in m.skipped)
    return "\n".join(lines)
