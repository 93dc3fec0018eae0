"""The report's data-budget table: what each method was given to train on (issue 14, "equal data
budget"), read from the edit records: forget and retain texts and images, quadruplets or
calibration pairs, retained tuples by kind, steps and wall time. Budgets that differ between
methods are shown, not hidden: they are part of what a comparison compares."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["budget_rows", "budget_section", "budget_table"]

NOTE = (
    "What each method trained on (seed 0's edit record; every seed has the same budget). "
    "relational-lora trains with the policy's retain pool (its neighbours, marginals and a sample "
    "of unrelated tuples). safeclip and hysac can take the same pool as safe text-image pairs "
    "(retain_pool: true), but VAL chose it off for both (it cut their safety more than it raised "
    "preservation; docs/benchmarks.md), so here they train on the quadruplets of the policy's "
    "pairs only. Also unequal: the forget side (relational-lora's forget sets vs the "
    "quadruplets), concept-erasure's retain set (tuples without the concept), uwm's calibration "
    "pairs, and steps and learning rates."
)


COLUMNS = (
    ("forget_texts", "forget texts"),
    ("forget_images", "forget images"),
    ("retain_texts", "retain texts"),
    ("retain_images", "retain images"),
    ("retain_neighbour", "retained neighbours"),
    ("retain_unrelated", "retained unrelated"),
    ("retain_marginal", "retained marginals"),
    ("quadruplets", "quadruplets"),
    ("train_quadruplets", "train quadruplets"),
    ("val_quadruplets", "val quadruplets"),
    ("text_pairs", "calibration pairs (text)"),
    ("vision_pairs", "calibration pairs (image)"),
)


def budget_rows(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One mapping per edited model (seed repetitions left out: they share their budget):
    ``method``, each :data:`COLUMNS` key it has, ``steps`` and ``seconds``."""
    out = []
    for label, rec in sorted(records.items()):
        if "@seed" in label:
            continue
        sizes = rec.get("data_sizes") or {}
        row: dict[str, Any] = {"method": label, **{k: sizes[k] for k, _ in COLUMNS if k in sizes}}
        row["steps"] = (rec.get("config") or {}).get("steps")
        row["seconds"] = rec.get("time_s")
        out.append(row)
    return out


def budget_table(records: dict[str, dict[str, Any]]) -> str:
    """The HTML table (only the columns some method has; ``–`` where a method has none)."""
    rows = budget_rows(records)
    if not rows:
        return "<p class=note>No edit records.</p>"
    cols = [(k, name) for k, name in COLUMNS if any(k in r for r in rows)]
    head = "".join(f"<th>{html.escape(n)}</th>" for _, n in cols)
    lines = [f"<table><tr><th class=l>method</th>{head}<th>steps</th><th>edit s</th></tr>"]
    for r in rows:
        cells = "".join(f"<td>{r[k]:,}</td>" if k in r else "<td>–</td>" for k, _ in cols)
        steps = "–" if r["steps"] is None else f"{r['steps']:,}"
        secs = "–" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(
            f"<tr><td class=l>{html.escape(r['method'])}</td>{cells}<td>{steps}</td><td>{secs}</td></tr>"
        )
    return "".join(lines) + "</table>"


def budget_section(records: dict[str, dict[str, Any]]) -> str:
    """The report section: heading, note and table."""
    return f"<h2>Data budget</h2><p class=note>{html.escape(NOTE)}</p>{budget_table(records)}"
