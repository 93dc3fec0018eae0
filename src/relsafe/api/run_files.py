"""The files behind :mod:`relsafe.api.run`'s stages: stage keys and markers, folder names, and
reading a stage's rows back (with their per-item outcomes) and its checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from relsafe.utils_io import atomic_write_json


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stage_done(marker: Path, key: str) -> bool:
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def _mark(marker: Path, key: str, seconds: float) -> None:
    atomic_write_json(marker, {"key": key, "seconds": round(seconds, 3), "finished": time.time()})


def _folder_name(name: str) -> str:
    """A policy name as a folder name (anything but letters, digits, ``-``, ``_`` and ``.`` becomes
    ``_``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "policy"


def _seed_label(label: str, repeat: int) -> str:
    """The folder name of a method's seed repetition: the label itself for repetition 0."""
    return label if repeat == 0 else f"{label}@seed{repeat}"


def _read_with_items(path: Path) -> list:
    """The rows of a rows file with the per-item outcomes of its ``.items.json`` attached."""
    from relsafe.eval.rows import read_items, read_rows

    rows = read_rows(path)
    items = read_items(path) or {}
    return [
        dataclasses.replace(r, items=tuple(v))
        if (v := items.get((r.slice, r.attack, r.metric)))
        else r
        for r in rows
    ]


def _stage_checkpoints(first: list[dict[str, Any]], rows_files: list[Path]) -> list[dict]:
    """Every checkpoint file the run read, without repeats: the policy, then what each eval stage's
    provenance lists (each model evaluated, and the reference), also for stages a re-run reused."""
    from relsafe.eval.rows import read_provenance

    seen = {(c["path"], c["sha256"]) for c in first}
    out = list(first)
    for path in sorted(rows_files):
        for c in (read_provenance(path) or {}).get("checkpoints", []):
            if (c["path"], c["sha256"]) not in seen:
                seen.add((c["path"], c["sha256"]))
                out.append(c)
    return out


def _dump_yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def _headline_keys() -> set[tuple[str, str, str, str]]:
    """Every (suite, slice, attack, metric) a leaderboard column may show (alternatives split)."""
    from relsafe.eval.suites import suites

    return {
        (s.name, slice_, h.attack, h.metric)
        for s in suites().values()
        for h in s.headline
        for slice_ in h.slice.split(",")
    }
