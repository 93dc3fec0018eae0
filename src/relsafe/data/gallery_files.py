"""The files a user names to put a model to work: an image folder, an image manifest, a text file.

``relsafe classify`` and ``relsafe index`` take ``--images DIR|MANIFEST`` and ``--texts FILE``;
these readers turn them into lists, with errors (:class:`~relsafe.errors.InputError`) that name the
file and, for a manifest, the line of a bad row. Nothing here opens an image: the embedding engine
does, and names a missing or corrupt one.

* :func:`list_images`: a folder (every file with an image extension below it, recursive, sorted by
  relative path) or a manifest (:func:`read_image_manifest`).
* :func:`read_image_manifest`: a ``.csv`` (header row) or ``.jsonl`` (one object per line) with an
  ``image`` column; relative paths are relative to the manifest's folder; the other columns come
  back as one dict per row (ids, labels, captions the caller may keep).
* :func:`read_texts`: one text per non-empty line (surrounding whitespace stripped).

Bounds: a manifest or text file over 64 MiB is refused (:func:`~relsafe.utils_io.read_text_file`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from relsafe.errors import InputError
from relsafe.utils_io import read_text_file

__all__ = [
    "IMAGE_COLUMN",
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "list_images",
    "manifest_rows",
    "read_image_manifest",
    "read_texts",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File suffixes (lower-cased) a folder scan counts as images."""
MANIFEST_SUFFIXES = (".csv", ".jsonl")
IMAGE_COLUMN = "image"


def read_texts(path: str | os.PathLike[str], what: str = "--texts file") -> list[str]:
    """The non-empty lines of the UTF-8 text file ``path``, stripped; an empty file (or one with
    only blank lines) is an :class:`InputError`."""
    p = Path(path)
    texts = [ln.strip() for ln in read_text_file(p, what).splitlines() if ln.strip()]
    if not texts:
        raise InputError(f"{what} {p} has no non-empty lines")
    return texts


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise InputError(f"image manifest {path} has no header row")
    if IMAGE_COLUMN not in reader.fieldnames:
        raise InputError(
            f"image manifest {path}, line 1: no {IMAGE_COLUMN!r} column in the header "
            f"(it has {list(reader.fieldnames)})"
        )
    rows = []
    try:
        for row in reader:
            if None in row:  # more fields than the header names
                raise InputError(
                    f"image manifest {path}, line {reader.line_num}: more fields than the header"
                )
            rows.append((reader.line_num, dict(row)))
    except csv.Error as e:
        raise InputError(f"image manifest {path}, line {reader.line_num}: bad CSV ({e})") from e
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            why = getattr(e, "msg", None) or "nested too deeply"
            raise InputError(f"image manifest {path}, line {lineno}: malformed JSON ({why})") from e
        if not isinstance(obj, dict):
            raise InputError(
                f"image manifest {path}, line {lineno}: expected a JSON object, "
                f"got {type(obj).__name__}"
            )
        rows.append((lineno, obj))
    return rows


def read_image_manifest(
    path: str | os.PathLike[str],
) -> tuple[list[Path], list[dict[str, Any]]]:
    """``(image paths, other columns per row)`` of a ``.csv`` / ``.jsonl`` manifest.

    Every row needs a non-empty string ``image``; relative paths are resolved against the
    manifest's folder. A row without it, an empty path, malformed JSON or a manifest with no rows
    is an :class:`InputError` naming the file and line. Paths are not checked here (the engine
    names a missing or corrupt image when it opens it)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(
            f"image manifest {p}: unsupported type {suffix or '(no suffix)'!r}; use a folder of "
            f"images or a manifest ending in {' or '.join(MANIFEST_SUFFIXES)} with an "
            f"{IMAGE_COLUMN!r} column"
        )
    triples = manifest_rows(p)
    return [t[1] for t in triples], [t[2] for t in triples]


def manifest_rows(path: str | os.PathLike[str]) -> list[tuple[int, Path, dict[str, Any]]]:
    """``(line number, image path, other columns)`` per row of a manifest: what
    :func:`read_image_manifest` returns, with each row's line for messages (``relsafe data check``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(
            f"image manifest {p}: unsupported type {suffix or '(no suffix)'!r}; use a "
            f"{' or '.join(MANIFEST_SUFFIXES)} file with an {IMAGE_COLUMN!r} column"
        )
    text = read_text_file(p, "image manifest")
    raw = _csv_rows(p, text) if suffix == ".csv" else _jsonl_rows(p, text)
    base = p.parent
    out: list[tuple[int, Path, dict[str, Any]]] = []
    for lineno, row in raw:
        if IMAGE_COLUMN not in row:
            raise InputError(
                f"image manifest {p}, line {lineno}: no {IMAGE_COLUMN!r} field (it has "
                f"{sorted(row)})"
            )
        value = row.pop(IMAGE_COLUMN)
        if not isinstance(value, str):
            raise InputError(
                f"image manifest {p}, line {lineno}: {IMAGE_COLUMN!r} must be a path string, "
                f"got {type(value).__name__}"
            )
        if not value.strip():
            raise InputError(f"image manifest {p}, line {lineno}: empty {IMAGE_COLUMN!r} path")
        out.append((lineno, _resolve(base, value.strip()), row))
    if not out:
        raise InputError(f"image manifest {p} has no rows")
    return out


def list_images(path: str | os.PathLike[str], what: str = "--images") -> list[Path]:
    """The images ``path`` names: a folder's image files (recursive, sorted by relative path;
    hidden files and folders are skipped) or a manifest's paths (:func:`read_image_manifest`)."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = []
        for f in p.rglob("*"):
            rel = f.relative_to(p)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                found.append(f)
        if not found:
            raise InputError(
                f"{what} {p}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the folder"
            )
        return sorted(found, key=lambda f: f.relative_to(p).as_posix())
    if p.is_file():
        return read_image_manifest(p)[0]
    if p.exists():
        raise InputError(f"{what} {p} is neither a folder nor a manifest file")
    raise InputError(f"{what} not found: {p}")
