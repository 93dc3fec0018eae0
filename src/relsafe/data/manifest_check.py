"""``relsafe data check MANIFEST``: validate a tuple-labelled dataset manifest (DATA.md) and count it.

Every row must name an image that exists, a subject, relation and object of the vocabulary that
form a valid combination, and a split (``train``, ``val`` or ``test``); ``caption`` and ``domain``
are optional strings. Every problem is collected with its line (up to ``max_problems``), so one run
lists what to fix; with ``decode`` every image is also opened and decoded, one at a time (bounded
memory: the image reader's pixel bound applies), so a corrupt or truncated file is found here and
not halfway through an edit. The counts are per tuple and split, and per split and domain.

Only the built-in RelWorld vocabulary exists so far; vocabularies as data files are issue 15.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsafe.data.gallery_files import manifest_rows
from relsafe.errors import InputError

__all__ = ["SPLITS", "ManifestReport", "check_manifest"]

SPLITS = ("train", "val", "test")
_ROLES = ("subject", "relation", "object")


@dataclass
class ManifestReport:
    """What :func:`check_manifest` found: ``n_rows``; ``per_tuple[(tuple id, split)]`` and
    ``per_domain[(split, domain)]`` counts of the valid rows; ``problems`` (``"line N: ..."``,
    at most ``max_problems`` of ``n_problems``)."""

    path: Path
    n_rows: int = 0
    per_tuple: Counter[tuple[str, str]] = field(default_factory=Counter)
    per_domain: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    n_problems: int = 0

    @property
    def ok(self) -> bool:
        return self.n_problems == 0

    def table(self) -> str:
        """Counts as plain-text tables: tuples x splits, then splits x domains."""
        tuples = sorted({t for t, _ in self.per_tuple})
        width = max([len("tuple"), *(len(t) for t in tuples)])
        lines = [f"{'tuple':<{width}}  " + "  ".join(f"{s:>6}" for s in SPLITS)]
        for t in tuples:
            lines.append(
                f"{t:<{width}}  " + "  ".join(f"{self.per_tuple[(t, s)]:>6}" for s in SPLITS)
            )
        lines.append("")
        for (split, domain), n in sorted(self.per_domain.items()):
            lines.append(f"{split:<6} {domain:<16} {n:>6}")
        return "\n".join(lines)


def _tuple_of(row: dict[str, Any], vocab: Any) -> tuple[Any, str | None]:
    words = []
    for role in _ROLES:
        v = row.get(role)
        if not isinstance(v, str) or not v.strip():
            return None, f"no {role} (every row needs subject, relation and object)"
        words.append(v.strip())
    try:
        return vocab.tuple("|".join(words)), None
    except InputError as e:
        return None, str(e)


def check_manifest(
    path: str | os.PathLike[str],
    *,
    decode: bool = False,
    max_problems: int = 50,
    progress: bool = True,
) -> ManifestReport:
    """Check every row of the manifest at ``path`` (see the module docs); never raises for a bad
    row (it is a problem in the report), only for a manifest that cannot be read at all."""
    from tqdm.auto import tqdm

    from relsafe.data.images import load_image_file
    from relsafe.world.vocab import default_vocabulary

    vocab = default_vocabulary()
    report = ManifestReport(Path(path))
    rows = manifest_rows(path)
    report.n_rows = len(rows)

    def problem(line: int, msg: str) -> None:
        report.n_problems += 1
        if len(report.problems) < max_problems:
            report.problems.append(f"line {line}: {msg}")

    for line, image, row in tqdm(rows, desc="checking rows", disable=not progress):
        bad = False
        t, why = _tuple_of(row, vocab)
        if why is not None:
            problem(line, why)
            bad = True
        split = row.get("split")
        if split not in SPLITS:
            problem(line, f"split must be one of {list(SPLITS)}, got {split!r}")
            bad = True
        for key in ("caption", "domain"):
            if row.get(key) is not None and not isinstance(row.get(key), str):
                problem(line, f"{key} must be a string, got {type(row[key]).__name__}")
                bad = True
        if not image.is_file():
            problem(line, f"image {image} does not exist or is not a file")
            bad = True
        elif decode:
            try:
                load_image_file(image)
            except InputError as e:
                problem(line, str(e))
                bad = True
        if not bad:
            report.per_tuple[(t.id, split)] += 1
            report.per_domain[(split, (row.get("domain") or "(none)").strip() or "(none)")] += 1
    return report
