"""Tidy result rows (METRICS.md) and their JSON Lines files.

A results file is JSON Lines: an optional first line ``{"_provenance": {...}}`` (config, seeds,
versions, git commit, checkpoint hashes; see :func:`relsafe.provenance.collect_provenance`),
then one :class:`Row` per line with exactly the keys
``model, method, suite, slice, attack, metric, value, n``. With ``sidecar=True`` the provenance
goes to ``provenance.json`` beside the results file instead of the first line.

:class:`RowWriter` collects rows in memory and writes the whole file atomically (temporary file +
rename) on :meth:`RowWriter.write` / :meth:`RowWriter.flush` and on a clean exit from its ``with``
block. A crash therefore leaves either the previous complete file or nothing, never a half-written
line; call ``flush()`` after each expensive suite to checkpoint what is done so far.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from relsafe.errors import InputError
from relsafe.utils_io import atomic_write_json, atomic_write_text

__all__ = [
    "PROVENANCE_KEY",
    "ROW_FIELDS",
    "Row",
    "RowWriter",
    "items_path",
    "read_items",
    "read_provenance",
    "read_rows",
    "rows_from_metrics",
    "sidecar_path",
    "write_items",
]

PROVENANCE_KEY = "_provenance"
SIDECAR_NAME = "provenance.json"


@dataclass(frozen=True)
class Row:
    """One measurement. ``value`` is a finite float (rates are fractions in [0, 1]); ``n`` is how
    many items it averages over.

    ``items`` (optional, not part of the tidy row and never in a rows file's lines): the per-item
    outcomes whose mean is ``value`` (e.g. per unsafe tuple rates), which a suite attaches to its
    headline rows so that ``relsafe run`` can bootstrap an interval (:mod:`relsafe.eval.intervals`);
    they are written to the ``.items.json`` sidecar (:func:`write_items`)."""

    model: str
    method: str
    suite: str
    slice: str
    attack: str
    metric: str
    value: float
    n: int
    items: tuple[float, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for f in ("model", "method", "suite", "slice", "attack", "metric"):
            v = getattr(self, f)
            if not isinstance(v, str) or not v:
                raise InputError(f"row field {f!r} must be a non-empty string, got {v!r}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int | float):
            # numpy / torch scalars convert through float()
            try:
                v = float(v)  # type: ignore[arg-type]
            except (TypeError, ValueError) as e:
                raise InputError(f"row value must be a number, got {self.value!r}") from e
        v = float(v)
        if not math.isfinite(v):
            raise InputError(f"row value must be finite, got {v} (metric {self.metric!r})")
        object.__setattr__(self, "value", v)
        n = self.n
        if isinstance(n, bool) or not isinstance(n, int):
            try:
                if int(n) != n:  # type: ignore[call-overload]
                    raise ValueError
                n = int(n)  # type: ignore[call-overload]
            except (TypeError, ValueError) as e:
                raise InputError(f"row n must be an integer, got {self.n!r}") from e
        if n < 0:
            raise InputError(f"row n must be >= 0, got {n}")
        object.__setattr__(self, "n", n)
        if self.items is not None:
            items = tuple(float(x) for x in self.items)
            if not items or not all(math.isfinite(x) for x in items):
                raise InputError(f"row items must be finite numbers (metric {self.metric!r})")
            object.__setattr__(self, "items", items)

    def to_dict(self) -> dict[str, Any]:
        """The tidy row (the keys of :data:`ROW_FIELDS`; ``items`` are not part of it)."""
        return {k: getattr(self, k) for k in ROW_FIELDS}

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """``(method, suite, slice, attack, metric)``: what the row measures, for whom."""
        return (self.method, self.suite, self.slice, self.attack, self.metric)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Row:
        """Build a row from a mapping with exactly the row keys (unknown or missing keys error)."""
        keys = set(d)
        if keys != set(ROW_FIELDS):
            missing = sorted(set(ROW_FIELDS) - keys)
            unknown = sorted(keys - set(ROW_FIELDS))
            raise InputError(f"row keys mismatch: missing {missing}, unknown {unknown}")
        return cls(**{k: d[k] for k in ROW_FIELDS})


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Row) if f.name != "items")
ITEMS_FORMAT = "relsafe-row-items"


def items_path(path: str | os.PathLike[str]) -> Path:
    """Where the per-item sidecar of rows file ``path`` lives (``<suite>.items.json``)."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".items.json")


def write_items(path: str | os.PathLike[str], rows: Iterable[Row]) -> Path:
    """Write the ``items`` of ``rows`` (those that carry them) beside rows file ``path``:
    ``{"format", "version", "items": {"slice\tattack\tmetric": [values]}}``."""
    items = {"\t".join((r.slice, r.attack, r.metric)): list(r.items) for r in rows if r.items}
    side = items_path(path)
    atomic_write_json(side, {"format": ITEMS_FORMAT, "version": 1, "items": items})
    return side


def read_items(path: str | os.PathLike[str]) -> dict[tuple[str, str, str], list[float]] | None:
    """The per-item sidecar of rows file ``path`` as ``(slice, attack, metric) -> values``; None
    when there is none (rows written before intervals existed)."""
    from relsafe.utils_io import read_json_file

    side = items_path(path)
    if not side.is_file():
        return None
    data = read_json_file(side, "row items file")
    if not isinstance(data, dict) or data.get("format") != ITEMS_FORMAT:
        raise InputError(f"{side}: not a relsafe row items file (format {ITEMS_FORMAT!r})")
    out = {}
    for key, values in (data.get("items") or {}).items():
        parts = str(key).split("\t")
        if len(parts) != 3 or not isinstance(values, list) or not values:
            raise InputError(f"{side}: malformed items entry {key!r}")
        try:
            out[(parts[0], parts[1], parts[2])] = [float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise InputError(f"{side}: items of {key!r} must be numbers") from e
    return out


def rows_from_metrics(
    metrics: Mapping[str, float],
    *,
    model: str,
    method: str,
    suite: str,
    slice: str,  # noqa: A002 - the METRICS.md field name
    attack: str,
    n: int,
) -> list[Row]:
    """One row per ``metric -> value`` item (e.g. the dict :func:`retrieval_metrics` returns)."""
    return [
        Row(
            model=model,
            method=method,
            suite=suite,
            slice=slice,
            attack=attack,
            metric=m,
            value=v,
            n=n,
        )
        for m, v in metrics.items()
    ]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the sidecar provenance of results file ``path`` lives."""
    return Path(path).with_name(SIDECAR_NAME)


class RowWriter:
    """Collect :class:`Row` objects and write them as JSON Lines atomically.

    Use as a context manager: rows are written when the block exits cleanly; on an exception
    nothing is written (an existing file at ``path`` keeps its previous complete content), except
    what earlier :meth:`flush` calls already wrote.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        provenance: Mapping[str, Any] | None = None,
        sidecar: bool = False,
    ) -> None:
        self.path = Path(path)
        self.provenance = dict(provenance) if provenance is not None else None
        self.sidecar = sidecar
        self.rows: list[Row] = []
        if self.provenance is not None:
            try:  # fail now, not at the end of a long evaluation
                json.dumps(self.provenance, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise InputError(f"provenance is not JSON-serialisable: {e}") from e

    def add(self, row: Row | Mapping[str, Any]) -> Row:
        """Append one row (a :class:`Row` or a mapping with the row keys)."""
        if not isinstance(row, Row):
            row = Row.from_dict(row)
        self.rows.append(row)
        return row

    def extend(self, rows: Iterable[Row | Mapping[str, Any]]) -> None:
        for r in rows:
            self.add(r)

    def __len__(self) -> int:
        return len(self.rows)

    def render(self) -> str:
        """The file content: optional provenance line, then one JSON object per row."""
        lines = []
        if self.provenance is not None and not self.sidecar:
            lines.append(
                json.dumps({PROVENANCE_KEY: self.provenance}, allow_nan=False, sort_keys=True)
            )
        lines.extend(json.dumps(r.to_dict(), allow_nan=False) for r in self.rows)
        return "".join(line + "\n" for line in lines)

    def write(self) -> Path:
        """Write every row collected so far, replacing the file atomically; returns the path."""
        from relsafe.outputs import output_file, writing

        text = self.render()
        if self.provenance is not None and self.sidecar:
            side = output_file(sidecar_path(self.path), what="provenance file", overwrite=True)
            with writing(side, "provenance file"):
                atomic_write_json(side, self.provenance)
        output_file(self.path, what="rows file", overwrite=True)  # never a link, device, folder
        with writing(self.path, "rows file"):
            atomic_write_text(self.path, text)
        return self.path

    flush = write

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.write()


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSONL results file with their line numbers, streamed line by line
    (a results file may be large); a line that is not UTF-8, not JSON or not an object is an
    :class:`InputError` naming the file and line."""
    if not path.is_file():
        raise InputError(f"results file not found: {path}")
    out = []
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; OSError is wrapped
    except OSError as e:
        raise InputError(f"cannot read results file {path}: {e.strerror or e}") from e
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not UTF-8 text (byte {e.start})") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: malformed JSON ({e})") from e
            except RecursionError as e:
                raise InputError(f"{path}:{lineno}: JSON nested too deeply") from e
            if not isinstance(obj, dict):
                raise InputError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            out.append((lineno, obj))
    return out


def read_rows(path: str | os.PathLike[str]) -> list[Row]:
    """Read the rows of a results file (the provenance line, if any, is skipped)."""
    path = Path(path)
    rows = []
    for i, (lineno, obj) in enumerate(_read_lines(path)):
        if i == 0 and set(obj) == {PROVENANCE_KEY}:
            continue
        try:
            rows.append(Row.from_dict(obj))
        except InputError as e:
            raise InputError(f"{path}:{lineno}: {e}") from e
    return rows


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance of a results file: its first line, else the sidecar, else None."""
    path = Path(path)
    lines = _read_lines(path)
    if lines and set(lines[0][1]) == {PROVENANCE_KEY}:
        return lines[0][1][PROVENANCE_KEY]
    side = sidecar_path(path)
    if side.is_file():
        from relsafe.utils_io import read_json_file

        return read_json_file(side, "provenance file")
    return None
