"""The files a user names to put a model to work: an image folder, an image manifest, a text file.

``relsafe classify`` and ``relsafe index`` take ``--images DIR|MANIFEST`` and ``--texts FILE``;
these readers turn them into lists, with errors (:class:`~relsafe.errors.InputError`) that name the
file and, for a manifest, the line (CSV, JSONL) or row (Parquet, datasets folder) of a bad row.
Nothing here opens an image: the embedding engine does, and names a missing or corrupt one.

* :func:`list_images`: a folder (every file with an image extension below it, recursive, sorted by
  relative path) or a manifest (:func:`read_image_manifest`).
* :func:`read_image_manifest`: a manifest with an ``image`` column; relative paths are relative to
  the manifest's folder; the other columns come back as one dict per row.
* :func:`open_table`: the low-level row reader every manifest goes through (this module's readers
  and :func:`relsafe.data.manifest.load_manifest`): a ``.csv`` (header row), ``.jsonl`` (one
  object per line), ``.parquet`` file, or a Hugging Face ``datasets`` folder written by
  ``save_to_disk`` (``state.json`` listing Arrow IPC stream files). Parquet and Arrow are read
  with pyarrow alone (the ``data`` extra), one record batch at a time; the ``datasets`` package is
  never needed.
* :func:`read_texts`: one text per non-empty line (surrounding whitespace stripped).

Bounds: a CSV, JSONL or text file over 64 MiB is refused (:data:`relsafe.utils_io.MAX_TEXT_BYTES`);
Parquet and Arrow files are streamed in batches of :data:`BATCH_ROWS` rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsafe import utils_io
from relsafe.errors import InputError
from relsafe.utils_io import read_text_file

__all__ = [
    "BATCH_ROWS",
    "IMAGE_COLUMN",
    "IMAGE_EXTENSIONS",
    "MANIFEST_SUFFIXES",
    "Table",
    "image_value",
    "is_datasets_folder",
    "list_images",
    "manifest_format",
    "manifest_rows",
    "open_table",
    "read_image_manifest",
    "read_texts",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File suffixes (lower-cased) a folder scan counts as images."""
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
IMAGE_COLUMN = "image"
BATCH_ROWS = 4096
"""Rows per record batch read from a Parquet or Arrow file (bounded memory on large manifests)."""
_DATA_EXTRA = "pip install 'relsafe[data]'"


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


@dataclass
class Table:
    """One manifest opened for reading: ``format`` (``csv``, ``jsonl``, ``parquet``,
    ``datasets``), ``columns`` (the header or schema; None for JSONL, whose keys are per row),
    ``base`` (the folder relative image paths start from) and ``rows``, an iterator of
    ``(row number from 1, where, values)`` with ``where`` naming the row for messages
    (``"line 3"`` in a text file, ``"row 3"`` in Parquet / Arrow)."""

    path: Path
    format: str
    columns: tuple[str, ...] | None
    base: Path
    rows: Iterator[tuple[int, str, dict[str, Any]]]


def is_datasets_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` with
    ``state.json``, or a ``DatasetDict`` with ``dataset_dict.json``)."""
    p = Path(path)
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def manifest_format(path: str | os.PathLike[str]) -> str:
    """``csv``, ``jsonl``, ``parquet`` or ``datasets`` for a manifest path; anything else is an
    :class:`InputError` saying what is accepted."""
    p = Path(path)
    if is_datasets_folder(p):
        return "datasets"
    suffix = p.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return suffix[1:]
    raise InputError(
        f"image manifest {p}: unsupported type {suffix or '(no suffix)'!r}; use a "
        f"{', '.join(MANIFEST_SUFFIXES)} file or a Hugging Face datasets folder (save_to_disk) "
        f"with an {IMAGE_COLUMN!r} column"
    )


def _manifest_text(p: Path) -> str:
    """The UTF-8 text of a CSV / JSONL manifest; a non-UTF-8 byte is named by its line."""
    try:
        size = p.stat().st_size
    except FileNotFoundError as e:
        raise InputError(f"image manifest not found: {p}") from e
    except OSError as e:
        raise InputError(f"cannot read image manifest {p}: {e.strerror or e}") from e
    if size > utils_io.MAX_TEXT_BYTES:
        return read_text_file(p, "image manifest")  # raises its size error
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read image manifest {p}: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(
            f"image manifest {p}, line {line}: not UTF-8 text (byte {e.start}: "
            f"{raw[e.start : e.start + 1]!r}); save the file as UTF-8"
        ) from e
    return text.removeprefix("\ufeff")  # a spreadsheet's byte-order mark


def _csv_table(p: Path) -> Table:
    reader = csv.DictReader(io.StringIO(_manifest_text(p), newline=""))
    try:
        header = reader.fieldnames
    except csv.Error as e:
        raise InputError(f"image manifest {p}, line 1: bad CSV header ({e})") from e
    if not header:
        raise InputError(f"image manifest {p} has no header row")

    def rows() -> Iterator[tuple[int, str, dict[str, Any]]]:
        n = 0
        try:
            for row in reader:
                if None in row:  # more fields than the header names
                    raise InputError(
                        f"image manifest {p}, line {reader.line_num}: more fields than the header"
                    )
                n += 1
                yield n, f"line {reader.line_num}", dict(row)
        except csv.Error as e:
            raise InputError(f"image manifest {p}, line {reader.line_num}: bad CSV ({e})") from e

    return Table(p, "csv", tuple(header), p.parent, rows())


def _jsonl_table(p: Path) -> Table:
    text = _manifest_text(p)

    def rows() -> Iterator[tuple[int, str, dict[str, Any]]]:
        n = 0
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:
                why = getattr(e, "msg", None) or "nested too deeply"
                raise InputError(
                    f"image manifest {p}, line {lineno}: malformed JSON ({why})"
                ) from e
            if not isinstance(obj, dict):
                raise InputError(
                    f"image manifest {p}, line {lineno}: expected a JSON object, "
                    f"got {type(obj).__name__}"
                )
            n += 1
            yield n, f"line {lineno}", obj

    return Table(p, "jsonl", None, p.parent, rows())


def _pyarrow(what: str) -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError as e:
        raise InputError(f"{what} needs pyarrow: {_DATA_EXTRA}") from e
    return pyarrow


def _batch_rows(batches: Iterator[Any]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            n += 1
            yield n, f"row {n}", row


def _parquet_table(p: Path) -> Table:
    pa = _pyarrow(f"the Parquet manifest {p}")
    try:
        f = pa.parquet.ParquetFile(p)
        names = tuple(f.schema_arrow.names)
    except FileNotFoundError as e:
        raise InputError(f"image manifest not found: {p}") from e
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"image manifest {p} is not a readable Parquet file: {e}") from e

    def batches() -> Iterator[Any]:
        try:
            yield from f.iter_batches(batch_size=BATCH_ROWS)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"image manifest {p}: corrupt Parquet data ({e})") from e

    return Table(p, "parquet", names, p.parent, _batch_rows(batches()))


def _datasets_files(p: Path) -> list[Path]:
    """The Arrow stream files ``state.json`` lists, each checked to lie inside the folder."""
    if (p / "dataset_dict.json").is_file() and not (p / "state.json").is_file():
        subs = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
        raise InputError(
            f"image manifest {p} is a datasets DatasetDict (one folder per split: {subs}); "
            "give one of those folders, with a `split` column in its rows"
        )
    state = utils_io.read_json_file(p / "state.json", "datasets state file")
    files = state.get("_data_files")
    if not isinstance(files, list) or not files:
        raise InputError(f"{p / 'state.json'}: `_data_files` must be a non-empty list")
    out = []
    for i, entry in enumerate(files):
        name = entry.get("filename") if isinstance(entry, dict) else None
        if (
            not isinstance(name, str)
            or not name
            or Path(name).is_absolute()
            or ".." in Path(name).parts
        ):
            raise InputError(
                f"{p / 'state.json'}: _data_files[{i}] must be {{'filename': NAME}} with a file "
                f"name inside the folder, got {entry!r}"
            )
        if not (p / name).is_file():
            raise InputError(f"{p / 'state.json'}: data file {name!r} not found in {p}")
        out.append(p / name)
    return out


def _datasets_table(p: Path) -> Table:
    pa = _pyarrow(f"the datasets folder {p}")
    files = _datasets_files(p)

    def schema_of(f: Path) -> tuple[str, ...]:
        try:
            with pa.ipc.open_stream(pa.memory_map(str(f))) as r:
                return tuple(r.schema.names)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{f} is not a readable Arrow stream file: {e}") from e

    names = schema_of(files[0])
    for f in files[1:]:
        if schema_of(f) != names:
            raise InputError(f"{f}: its columns {list(schema_of(f))} differ from {files[0].name}'s")

    def batches() -> Iterator[Any]:
        for f in files:
            try:
                with pa.ipc.open_stream(pa.memory_map(str(f))) as r:
                    yield from r
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"{f}: corrupt Arrow data ({e})") from e

    # Relative image paths start at the folder holding the datasets folder, as they do at the
    # folder holding a manifest file: DIR/manifest.csv and DIR/manifest/ (save_to_disk) agree.
    return Table(p, "datasets", names, p.parent, _batch_rows(batches()))


def open_table(path: str | os.PathLike[str]) -> Table:
    """Open the manifest at ``path`` for reading (see :class:`Table`); the rows are read lazily,
    and a row the format cannot parse raises an :class:`InputError` naming it when reached."""
    p = Path(path).expanduser()
    fmt = manifest_format(p)
    if fmt != "datasets" and p.is_dir():
        raise InputError(f"image manifest {p} is a folder, not a file")
    return {"csv": _csv_table, "jsonl": _jsonl_table, "parquet": _parquet_table}.get(
        fmt, _datasets_table
    )(p)


def image_value(value: Any) -> str | None:
    """The path string in an ``image`` cell: a string, or a ``datasets`` ``Image`` feature's
    ``{"path": ..., "bytes": None}``; None for anything else (the caller names the problem).
    Embedded image bytes are refused by the caller's message: relsafe reads images from files."""
    if isinstance(value, dict) and set(value) <= {"path", "bytes"} and value.get("bytes") is None:
        value = value.get("path")
    return value if isinstance(value, str) else None


def _image_problem(value: Any) -> str:
    if isinstance(value, dict) and value.get("bytes") is not None:
        return (
            f"{IMAGE_COLUMN!r} holds embedded image bytes (a datasets Image feature); relsafe "
            "reads images from files: store their paths"
        )
    return f"{IMAGE_COLUMN!r} must be a path string, got {type(value).__name__}"


def read_image_manifest(
    path: str | os.PathLike[str],
) -> tuple[list[Path], list[dict[str, Any]]]:
    """``(image paths, other columns per row)`` of a manifest (:func:`open_table`'s formats).

    Every row needs a non-empty string ``image``; relative paths are resolved against the
    manifest's folder. A row without it, an empty path, malformed JSON or a manifest with no rows
    is an :class:`InputError` naming the file and line. Paths are not checked here (the engine
    names a missing or corrupt image when it opens it)."""
    triples = manifest_rows(path)
    return [t[1] for t in triples], [t[2] for t in triples]


def manifest_rows(path: str | os.PathLike[str]) -> list[tuple[int, Path, dict[str, Any]]]:
    """``(row number, image path, other columns)`` per row of a manifest: what
    :func:`read_image_manifest` returns, with each row's number for messages."""
    table = open_table(path)
    p = table.path
    if table.columns is not None and IMAGE_COLUMN not in table.columns:
        at = ", line 1" if table.format == "csv" else ""
        raise InputError(
            f"image manifest {p}{at}: no {IMAGE_COLUMN!r} column in the header "
            f"(it has {list(table.columns)})"
        )
    out: list[tuple[int, Path, dict[str, Any]]] = []
    for n, where, row in table.rows:
        if IMAGE_COLUMN not in row:
            raise InputError(
                f"image manifest {p}, {where}: no {IMAGE_COLUMN!r} field (it has {sorted(row)})"
            )
        raw = row.pop(IMAGE_COLUMN)
        value = image_value(raw)
        if value is None:
            raise InputError(f"image manifest {p}, {where}: {_image_problem(raw)}")
        if not value.strip():
            raise InputError(f"image manifest {p}, {where}: empty {IMAGE_COLUMN!r} path")
        out.append((n, _resolve(table.base, value.strip()), row))
    if not out:
        raise InputError(f"image manifest {p} has no rows")
    return out


def list_images(path: str | os.PathLike[str], what: str = "--images") -> list[Path]:
    """The images ``path`` names: a folder's image files (recursive, sorted by relative path;
    hidden files and folders are skipped), or a manifest's paths (:func:`read_image_manifest`),
    a ``datasets`` folder included."""
    p = Path(path).expanduser()
    if p.is_dir() and not is_datasets_folder(p):
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
    if p.is_file() or p.is_dir():
        return read_image_manifest(p)[0]
    if p.exists():
        raise InputError(f"{what} {p} is neither a folder nor a manifest file")
    raise InputError(f"{what} not found: {p}")
