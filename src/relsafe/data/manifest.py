"""Tuple-labelled datasets: load and validate a manifest (DATA.md) into a :class:`Manifest`.

A manifest has one row per image: ``image`` (a path relative to the manifest's folder, or
absolute), ``subject``, ``relation``, ``object`` (canonical words of a vocabulary), ``split``
(``train``, ``val`` or ``test``) and optionally ``caption``, ``domain`` (default ``default``),
``id`` (default: the row number) and ``scene`` (any text: rows sharing a scene under different
tuples show the same scene with elements swapped, a minimal pair; :meth:`Manifest.scene_problems`). It is a CSV (header required), JSONL, Parquet file or a Hugging
Face ``datasets`` folder written by ``save_to_disk``; :func:`relsafe.data.gallery_files.open_table`
reads them all, Parquet and Arrow with pyarrow alone.

:func:`load_manifest` checks every row and collects every problem with the row it is on, so one
run lists all there is to fix:

* a missing required column, or a column that is none of the above (with the nearest name), is
  refused outright;
* per row: a missing word, an unknown word (with the vocabulary's nearest word), a tuple the
  vocabulary declares impossible, a bad split, a caption / domain / id that is not text (or not
  UTF-8), an image that is missing or unreadable (and, with ``decode``, one that does not decode),
  a duplicate row (the same image content, tuple and split as an earlier row) or id;
* the same image content (SHA-256) in two splits: test data leaking into training.

By default any problem refuses the manifest (an :class:`~relsafe.errors.InputError` listing the
bad rows); with ``skip_bad`` the bad rows are left out and reported in :attr:`Manifest.skipped`.
Column problems and split leaks are refused even so: which copy of a leaked image to keep is the
user's choice, not relsafe's.

Memory: rows are read in batches and only their labels are kept; with ``decode`` each image is
decoded (:func:`relsafe.data.images.load_image_file`, under its pixel bound) and dropped at once.
Consumers decode lazily: :meth:`Manifest.image_paths` feeds the embedding engine, which opens files
one batch at a time, and :meth:`Manifest.iter_images` yields one decoded image at a time.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsafe.data.gallery_files import IMAGE_COLUMN, Table, image_value, open_table
from relsafe.errors import InputError
from relsafe.world.vocab import ORO, ROLES, Vocabulary

__all__ = [
    "DEFAULT_DOMAIN",
    "CHUNK_ROWS",
    "MAX_LISTED",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "Manifest",
    "ManifestCounts",
    "ManifestRow",
    "SkippedRow",
    "load_manifest",
    "manifest_sha256",
]

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = (IMAGE_COLUMN, *ROLES, "split")
OPTIONAL_COLUMNS = ("caption", "domain", "id", "scene")
DEFAULT_DOMAIN = "default"
MAX_LISTED = 500
"""Most bad rows one refusal lists (the count of the rest is given)."""
CHUNK_ROWS = 256
"""Rows whose images are checked together on the thread pool (bounded: one chunk in flight)."""


@dataclass(frozen=True)
class ManifestRow:
    """One valid row: ``image`` resolved to a path, ``image_sha256`` its content hash, ``where``
    its place in the manifest file for messages (``"line 3"``, ``"row 3"``; not compared, so the
    same data in two formats gives equal rows)."""

    id: str
    image: Path
    tuple: ORO
    split: str
    caption: str | None
    domain: str
    image_sha256: str
    where: str = field(default="", compare=False)
    scene: str | None = None  # rows of one scene under different tuples: a minimal pair


@dataclass(frozen=True)
class SkippedRow:
    """A row ``skip_bad`` left out: where it is and every reason."""

    where: str
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {'; '.join(self.reasons)}"


@dataclass(frozen=True)
class ManifestCounts:
    """Row counts: ``per_tuple[(tuple id, split)]`` and ``per_domain[(split, domain)]``."""

    per_tuple: dict[tuple[str, str], int]
    per_domain: dict[tuple[str, str], int]


@dataclass(frozen=True)
class Manifest:
    """A validated tuple-labelled dataset (see the module docs): the manifest's ``path``, its
    ``sha256`` (:func:`manifest_sha256`), ``format``, the ``vocabulary`` it was checked against
    (its source), the valid ``rows`` in file order and the ``skipped`` bad rows."""

    path: Path
    sha256: str
    format: str
    vocabulary: str
    rows: tuple[ManifestRow, ...]
    skipped: tuple[SkippedRow, ...] = ()
    decoded: bool = False

    def __post_init__(self) -> None:
        if not self.rows:
            raise InputError(f"manifest {self.path} has no valid rows")
        bad = {r.split for r in self.rows} - set(SPLITS)
        if bad:
            raise InputError(f"manifest {self.path}: splits {sorted(bad)} are not {list(SPLITS)}")

    def rows_for(
        self, t: ORO | str | None = None, split: str | None = None
    ) -> tuple[ManifestRow, ...]:
        """The rows of tuple ``t`` (an :class:`ORO` or ``"s|r|o"``; None: every tuple) in
        ``split`` (None: every split), in file order."""
        if split is not None and split not in SPLITS:
            raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
        tid = None if t is None else (t if isinstance(t, str) else ORO(*t).id)
        return tuple(
            r
            for r in self.rows
            if (tid is None or r.tuple.id == tid) and (split is None or r.split == split)
        )

    def tuples(self, split: str | None = None) -> tuple[ORO, ...]:
        """The tuples with rows in ``split`` (None: any), sorted by id."""
        return tuple(sorted({r.tuple for r in self.rows_for(None, split)}, key=lambda t: t.id))

    def domains(self, split: str | None = None) -> tuple[str, ...]:
        """The domains with rows in ``split`` (None: any), sorted."""
        return tuple(sorted({r.domain for r in self.rows_for(None, split)}))

    def scene_counts(self) -> dict[str, int]:
        """Per split: how many distinct scenes its rows name (rows without a scene not counted)."""
        return {
            sp: len({r.scene for r in self.rows if r.split == sp and r.scene is not None})
            for sp in SPLITS
        }

    def scene_problems(self) -> list[str]:
        """A scene with two rows of one tuple in one split (one scene shows each tuple once: the
        pairing of a forget image with its counterpart would be ambiguous), one line each."""
        first: dict[tuple[str, str, str], str] = {}
        out = []
        for r in self.rows:
            if r.scene is None:
                continue
            key = (r.scene, r.tuple.id, r.split)
            if key in first:
                out.append(
                    f"{r.where}: scene {r.scene!r} already has a {r.split} row of {r.tuple.id} "
                    f"({first[key]})"
                )
            else:
                first[key] = r.where
        return out

    def ood_domains(self) -> tuple[str, ...]:
        """The test domains absent from the train split: each is an OOD attack ``domain:<name>``."""
        return tuple(d for d in self.domains("test") if d not in set(self.domains("train")))

    def counts(self) -> ManifestCounts:
        """Rows per tuple x split and per split x domain."""
        per_tuple = Counter((r.tuple.id, r.split) for r in self.rows)
        per_domain = Counter((r.split, r.domain) for r in self.rows)
        return ManifestCounts(dict(per_tuple), dict(per_domain))

    def require_rows(self, tuples: Iterable[ORO | str], split: str = "test") -> None:
        """Refuse (naming them) tuples with no rows in ``split``: a policy tuple needs test rows
        for the relational suite."""
        have = {r.tuple.id for r in self.rows_for(None, split)}
        ids = [t if isinstance(t, str) else ORO(*t).id for t in tuples]
        missing = [t for t in ids if t not in have]
        if missing:
            raise InputError(
                f"manifest {self.path} has no {split} rows for {missing}; every policy tuple "
                f"needs {split} images"
            )

    def image_paths(self, rows: Iterable[ManifestRow] | None = None) -> list[Path]:
        """The image files of ``rows`` (default: all), for a lazy image source (nothing decoded)."""
        return [r.image for r in (self.rows if rows is None else rows)]

    def iter_images(self, rows: Iterable[ManifestRow] | None = None) -> Iterator[Any]:
        """Decode the images of ``rows`` (default: all) one at a time, as RGB PIL images."""
        from relsafe.data.images import load_image_file

        for r in self.rows if rows is None else rows:
            try:
                yield load_image_file(r.image)
            except InputError as e:
                raise InputError(f"manifest {self.path}, {r.where}: {e}") from e


def manifest_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a manifest file; for a ``datasets`` folder, of its ``state.json``,
    ``dataset_info.json`` and data files (each file's name and hash, in name order)."""
    from relsafe.utils_io import sha256_file

    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.iterdir() if x.is_file()):
        if f.name in ("state.json", "dataset_info.json") or f.suffix == ".arrow":
            h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _column_problems(columns: Iterable[str], known: tuple[str, ...]) -> list[str]:
    problems = []
    for c in columns:
        if c not in known:
            hint = difflib.get_close_matches(c, known, n=1, cutoff=0.6)
            problems.append(
                f"unknown column {c!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else f"; columns are {list(known)}")
            )
    return problems


def _text(row: dict[str, Any], key: str, problems: list[str]) -> str | None:
    """The stripped text in ``row[key]`` (None when absent or empty); a non-text value or bytes
    that are not UTF-8 are a problem."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and v != v):  # pandas writes a missing value as NaN
        return None
    if isinstance(v, bytes):
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(
                f"{key} is not UTF-8 text (byte {e.start}: {v[e.start : e.start + 1]!r})"
            )
            return None
    if key == "id" and isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        problems.append(f"{key} must be text, got {type(v).__name__}")
        return None
    return v.strip() or None


class _Checker:
    """The running state of one :func:`load_manifest` pass: what earlier rows claimed."""

    def __init__(self, table: Table, vocab: Vocabulary, decode: bool) -> None:
        self.table, self.vocab, self.decode = table, vocab, decode
        self.ids: dict[str, str] = {}
        self.seen: dict[tuple[str, str, str], str] = {}  # (sha, tuple, split) -> where
        self.split_of: dict[str, tuple[str, str]] = {}  # sha -> (split, where)
        self.leaks: list[str] = []

    def words(self, row: dict[str, Any], problems: list[str]) -> ORO | None:
        words = []
        for role in ROLES:
            w = _text(row, role, problems)
            if w is None:
                if row.get(role) is None or isinstance(row.get(role), str):
                    problems.append(f"no {role}")
                continue
            try:
                self.vocab.check_word(role, w)
                words.append(w)
            except InputError as e:
                problems.append(str(e))
        if len(words) < len(ROLES):
            return None
        try:
            return self.vocab.tuple(tuple(words))
        except InputError as e:
            problems.append(f"impossible tuple: {e}")
            return None

    def image(self, row: dict[str, Any]) -> tuple[tuple[Path, str] | None, list[str]]:
        """``((path, content SHA-256) or None, problems)`` of a row's image; thread-safe (it
        reads only the table's base folder), so rows' images are checked on a thread pool."""
        problems: list[str] = []
        return self._image(row, problems), problems

    def _image(self, row: dict[str, Any], problems: list[str]) -> tuple[Path, str] | None:
        from relsafe.utils_io import sha256_file_cached

        raw = row.get(IMAGE_COLUMN)
        value = image_value(raw)
        if value is None or not value.strip():
            problems.append(
                f"no {IMAGE_COLUMN!r} path"
                if raw is None or isinstance(raw, str)
                else f"{IMAGE_COLUMN!r} must be a path string, got {type(raw).__name__}"
                + (
                    " with embedded bytes (relsafe reads image files)"
                    if isinstance(raw, dict)
                    else ""
                )
            )
            return None
        if "://" in value:
            problems.append(f"image {value!r} is a URL; relsafe does not fetch images")
            return None
        p = Path(value.strip()).expanduser()
        p = p if p.is_absolute() else self.table.base / p
        if not p.is_file():
            problems.append(f"image {str(p)!r} does not exist or is not a file")
            return None
        try:
            sha = sha256_file_cached(p)
        except OSError as e:
            problems.append(f"cannot read image {str(p)!r}: {e.strerror or e}")
            return None
        if self.decode:
            try:
                _decodes(p)
            except InputError as e:
                problems.append(str(e))
                return None
        return p, sha

    def row(
        self,
        n: int,
        where: str,
        row: dict[str, Any],
        checked: tuple[tuple[Path, str] | None, list[str]],
    ) -> tuple[ManifestRow | None, list[str]]:
        """Check one row, given its image's :meth:`image` result; records what it claims."""
        problems: list[str] = []
        if self.table.columns is None:  # JSONL: keys are per row
            extra = _column_problems(row, REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
            if extra:
                raise InputError(f"manifest {self.table.path}, {where}: " + "; ".join(extra))
        t = self.words(row, problems)
        split = _text(row, "split", problems)
        if split not in SPLITS:
            problems.append(f"split must be one of {list(SPLITS)}, got {row.get('split')!r}")
        caption = _text(row, "caption", problems)
        domain = _text(row, "domain", problems) or DEFAULT_DOMAIN
        rid = _text(row, "id", problems) or str(n)
        scene = _text(row, "scene", problems) or None
        image = checked[0]
        problems.extend(checked[1])
        if rid in self.ids:
            problems.append(f"duplicate id {rid!r} (also {self.ids[rid]})")
        if problems or t is None or image is None or split is None:
            return None, problems
        path, sha = image
        key = (sha, t.id, split)
        if key in self.seen:
            return None, [f"duplicate of {self.seen[key]} (same image content, tuple and split)"]
        first = self.split_of.setdefault(sha, (split, where))
        if first[0] != split:
            self.leaks.append(
                f"{where}: image {str(path)!r} ({split}) has the same content (SHA-256 "
                f"{sha[:12]}...) as the {first[0]} image at {first[1]}: one image in two splits "
                "leaks held-out data into training"
            )
            return None, []
        self.seen[key] = where
        self.ids[rid] = where
        return ManifestRow(rid, path, t, split, caption, domain, sha, where, scene), []


def load_manifest(
    path: str | os.PathLike[str],
    vocab: Vocabulary,
    *,
    skip_bad: bool = False,
    decode: bool = False,
    progress: bool = False,
    workers: int | None = None,
) -> Manifest:
    """Read and validate the manifest at ``path`` against ``vocab`` (see the module docs).

    Raises :class:`InputError` naming the file and every bad row (up to :data:`MAX_LISTED`) unless
    ``skip_bad``, which leaves bad rows out (:attr:`Manifest.skipped`); missing or unknown columns
    and split leaks are refused either way. ``decode`` also decodes every image. Images are hashed
    (and decoded) on ``workers`` threads (default: up to 8), :data:`CHUNK_ROWS` rows at a time;
    decoded images share :mod:`relsafe.data.images`' decoded-bytes budget and are dropped at once."""
    from tqdm.auto import tqdm

    table = open_table(path)
    p = table.path
    if table.columns is not None:
        missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
        problems = _column_problems(table.columns, REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        if missing:
            problems.insert(0, f"missing required column(s) {missing}")
        twice = sorted({c for c in table.columns if table.columns.count(c) > 1})
        if twice:
            problems.insert(0, f"column(s) {twice} appear more than once")
        if problems:
            at = ", line 1 (the header)" if table.format == "csv" else ""
            raise InputError(
                f"manifest {p}{at}: " + "; ".join(problems) + f" (it has {list(table.columns)})"
            )
    checker = _Checker(table, vocab, decode)
    rows: list[ManifestRow] = []
    bad: list[SkippedRow] = []
    n_workers = workers or min(8, os.cpu_count() or 1)
    bar = tqdm(desc=f"checking {p.name}", unit=" rows", disable=not progress)
    with ThreadPoolExecutor(n_workers) as pool, bar:
        for chunk in _chunks(table.rows, CHUNK_ROWS):
            checked = pool.map(checker.image, [raw for _, _, raw in chunk])
            for (n, where, raw), img in zip(chunk, checked, strict=True):
                row, problems = checker.row(n, where, raw, img)
                if row is not None:
                    rows.append(row)
                elif problems:
                    bad.append(SkippedRow(where, tuple(problems)))
            bar.update(len(chunk))
    n_rows = len(rows) + len(bad) + len(checker.leaks)
    if n_rows == 0:
        raise InputError(f"manifest {p} has no rows")
    if checker.leaks:
        raise InputError(_listing(p, n_rows, checker.leaks, "image(s) in two splits"))
    if bad and not skip_bad:
        raise InputError(
            _listing(p, n_rows, [str(b) for b in bad], "bad row(s)")
            + "\n(fix them, or pass --skip-bad / skip_bad=True to leave them out)"
        )
    if not rows:
        raise InputError(_listing(p, n_rows, [str(b) for b in bad], "bad row(s), none valid"))
    return Manifest(
        p, manifest_sha256(p), table.format, vocab.source, tuple(rows), tuple(bad), decode
    )


def _chunks(
    rows: Iterator[tuple[int, str, dict[str, Any]]], size: int
) -> Iterator[list[tuple[int, str, dict[str, Any]]]]:
    chunk: list[tuple[int, str, dict[str, Any]]] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _decodes(path: Path) -> None:
    """Decode ``path`` fully and drop it (an :class:`InputError` when it does not decode). Threads
    decoding at once hold at most the image reader's decoded-bytes budget together: each waits,
    holding nothing, for its image's share (one image over the whole budget still decodes alone)."""
    from relsafe.data import images

    cap, held = images.max_decoded_bytes(), 0

    def reserve(n: int) -> None:
        nonlocal held
        images._BUDGET.acquire(n, cap, block=True)  # noqa: SLF001 - the reader's shared budget
        held = n

    try:
        images._open(path, "", reserve)  # noqa: SLF001 - load_image_file, with the reservation
    finally:
        images._BUDGET.release(held)  # noqa: SLF001


def _listing(path: Path, n_rows: int, items: list[str], what: str) -> str:
    shown = "\n  ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return f"manifest {path}: {len(items)} {what} in {n_rows} rows:\n  {shown}" + (
        f"\n  ... and {more} more" if more > 0 else ""
    )
