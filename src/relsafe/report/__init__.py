"""The HTML report: one self-contained file built from rows (and the records beside them).

``build_report([run_dir, ...], out_html)`` reads each run folder written by ``relsafe run``
(``results.jsonl``, ``models/*/record.json``, ``rows/*/examples.json``, ``timings.json``,
``provenance.json``) and writes a single HTML file with inline SVG plots (matplotlib) and inline
PNG thumbnails: no scripts, no external requests. Several run folders are compared side by side
(methods are prefixed with the run's name when more than one run is given).
"""

from __future__ import annotations

import base64
import html
import io
import json
import shlex
from pathlib import Path
from typing import Any

from relsafe.errors import InputError
from relsafe.eval.rows import Row, read_rows
from relsafe.report._figures import example_image, world_text
from relsafe.report._figures import fmt as _fmt
from relsafe.report._figures import index_rows as _index
from relsafe.report._figures import svg as _svg
from relsafe.report.budget import budget_section
from relsafe.report.relational_plots import harmful_heatmap, landing_bars, tradeoff_plot
from relsafe.utils_io import atomic_write_text, read_json_file

Column = tuple[str, str, str, str, str, bool]  # suite, slice, attack, metric, label, higher better


def headline_columns() -> list[Column]:
    """The leaderboard's possible columns: every registered suite's declared headline rows, in
    suite order (a suite added by a plugin brings its own columns)."""
    from relsafe.eval.suites import suites

    return [
        (s.name, h.slice, h.attack, h.metric, h.label, h.higher_is_better)
        for s in suites().values()
        for h in s.headline
    ]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2228;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.86rem}th,td{border:1px solid #d6d9de;padding:.28rem .5rem;text-align:right}
th{background:#f3f4f7}td.l,th.l{text-align:left}tr:hover td{background:#fafbff}
.note{color:#5b6470;font-size:.86rem}.grid{display:flex;flex-wrap:wrap;gap:1rem}.card{border:1px solid #e3e5ea;border-radius:6px;padding:.5rem}
.ex{display:inline-block;margin:.3rem;text-align:center;font-size:.72rem;vertical-align:top;width:150px}
.ex img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ccc}
.bad{color:#b3261e;font-weight:600}.ok{color:#1b6e2a}
details{margin:.5rem 0}pre{background:#f6f7f9;padding:.6rem;overflow:auto;font-size:.75rem}
"""


def _png_b64(arr: Any) -> str:
    from PIL import Image

    buf = io.BytesIO()
    (arr if hasattr(arr, "save") else Image.fromarray(arr)).save(buf, format="PNG")  # PIL or array
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class _Run:
    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = folder
        res = folder / "results.jsonl"
        if not res.is_file():
            raise InputError(
                f"{folder} has no results.jsonl (is it a `relsafe run` output folder?)"
            )
        self.rows = [
            r if not prefix else Row(**{**r.to_dict(), "method": f"{prefix}{r.method}"})
            for r in read_rows(res)
        ]
        self.records = {}
        for rec in sorted((folder / "models").glob("*/record.json")):
            if "@seed" in rec.parent.name:
                continue  # a further training seed of a method: seed 0 stands for it here
            self.records[prefix + rec.parent.name] = read_json_file(rec, "edit record")
        self.examples = {}
        for ex in sorted((folder / "rows").glob("*/examples.json")):
            if "@seed" in ex.parent.name:
                continue
            self.examples[prefix + ex.parent.name] = read_json_file(ex, "examples file")
        t = folder / "timings.json"
        self.timings = read_json_file(t, "timings file") if t.is_file() else {}
        p = folder / "provenance.json"
        self.provenance = read_json_file(p, "provenance file") if p.is_file() else {}


def _methods(rows: list[Row]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r.method not in seen:
            seen.append(r.method)
    return seen


Cell = tuple[str, int]  # method, column index
Ci = tuple[float, float, int]  # low, high, seeds


def _leaderboard_data(
    rows: list[Row], methods: list[str]
) -> tuple[list[Column], dict[Cell, Row], set[Cell], dict[Cell, Ci]]:
    """Headline columns present, the row of each (method, column), which cells are best and each
    cell's 95% interval. A best is bold only when it has an interval that does not overlap the
    runner-up's (a tie, or a cell without an interval, is never bold)."""
    from relsafe.eval.intervals import Interval, intervals_separate
    from relsafe.eval.seed_rows import interval_of

    idx = _index(rows)

    def cell(m: str, c: Column) -> Row | None:
        for slice_ in c[1].split(","):
            r = idx.get((m, c[0], slice_, c[2], c[3]))
            if r is not None:
                return r
        return None

    cols = [h for h in headline_columns() if any(cell(m, h) is not None for m in methods)]
    cells = {
        (m, j): r for m in methods for j, c in enumerate(cols) if (r := cell(m, c)) is not None
    }
    cis: dict[Cell, Ci] = {}
    for (m, j), r in cells.items():
        ci = interval_of(idx, (m, r.suite, r.slice, r.attack, r.metric))
        if ci is not None:
            cis[(m, j)] = ci
    best: set[Cell] = set()
    for j, c in enumerate(cols):
        ranked = sorted(
            (m for m in methods if (m, j) in cells),
            key=lambda m: cells[(m, j)].value,
            reverse=c[5],
        )
        if len(ranked) < 2 or (ranked[0], j) not in cis or (ranked[1], j) not in cis:
            continue
        top, second = (
            Interval(cells[(m, j)].value, cis[(m, j)][0], cis[(m, j)][1], cells[(m, j)].n, 1)
            for m in ranked[:2]
        )
        if intervals_separate(top, second, c[5]):
            best.add((ranked[0], j))
    return cols, cells, best, cis


def _cell_text(r: Row, ci: Ci | None) -> str:
    """``mean [low, high]`` with the 95% interval (percentile intervals are not symmetric near 0
    and 1, so a ``±`` would misstate them), or the bare mean without one."""
    if ci is None:
        return _fmt(r.value)
    return f"{_fmt(r.value)} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell_title(r: Row, ci: Ci | None) -> str:
    seeds = f", {ci[2]} seed(s), 95% interval [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"n={r.n}{seeds}"


def _column_notes(
    cols: list[Column], cells: dict[Cell, Row], cis: dict[Cell, Ci], methods: list[str]
) -> tuple[str, str]:
    """What the leaderboard's numbers average: ``n`` per column (items per seed, as the first
    method with the column has it) and the seeds per method."""
    ns = []
    for j, c in enumerate(cols):
        n = next((cells[(m, j)].n for m in methods if (m, j) in cells), None)
        ns.append(f"{c[4]} {n}")
    seeds = []
    for m in methods:
        s = max((ci[2] for (mm, _), ci in cis.items() if mm == m), default=None)
        seeds.append(f"{m} {s if s is not None else 1}")
    return "; ".join(ns), ", ".join(seeds)


def _leaderboard(rows: list[Row], methods: list[str]) -> str:
    cols, cells, best, cis = _leaderboard_data(rows, methods)
    ns, seeds = _column_notes(cols, cells, cis, methods)
    out = [
        "<table><tr><th class=l>method</th>"
        + "".join(f"<th>{html.escape(c[4])}</th>" for c in cols)
        + "</tr>"
    ]
    for m in methods:
        tds = []
        for j in range(len(cols)):
            r = cells.get((m, j))
            if r is None:
                tds.append("<td>–</td>")
                continue
            ci = cis.get((m, j))
            txt = html.escape(_cell_text(r, ci))
            tds.append(
                f"<td title='{html.escape(_cell_title(r, ci))}'>"
                f"{'<b>' + txt + '</b>' if (m, j) in best else txt}</td>"
            )
        out.append(f"<tr><td class=l>{html.escape(m)}</td>{''.join(tds)}</tr>")
    out.append("</table>")
    out.append(
        f"<p class=note>n (items per seed): {html.escape(ns)}. Seeds: {html.escape(seeds)}.</p>"
    )
    return "\n".join(out)


def leaderboard_markdown(rows: list[Row], methods: list[str] | None = None) -> str:
    """The leaderboard as a Markdown table (``mean [low, high]``, the 95% interval, where the
    rows carry one; a best in bold only when its interval separates from the runner-up's; ``–``
    where a method has no such row), then a line with each column's ``n`` and the seeds: what
    ``relsafe run`` prints at the end and the README quotes."""
    methods = methods or _methods(rows)
    cols, cells, best, cis = _leaderboard_data(rows, methods)
    lines = [
        "| method | " + " | ".join(c[4] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for m in methods:
        tds = []
        for j in range(len(cols)):
            r = cells.get((m, j))
            txt = "–" if r is None else _cell_text(r, cis.get((m, j)))
            tds.append(f"**{txt}**" if (m, j) in best else txt)
        lines.append(f"| {m} | " + " | ".join(tds) + " |")
    ns, seeds = _column_notes(cols, cells, cis, methods)
    lines += [
        "",
        "Cells: mean over seeds [95% interval] (bootstrap, docs/intervals.md); "
        "bold only where the best's interval does not overlap the runner-up's.",
        f"n (items per seed): {ns}.",
        f"Seeds: {seeds}.",
    ]
    return "\n".join(lines)


def _suite_table(
    rows: list[Row], methods: list[str], suite: str, metrics: list[str], slice_filter: Any = None
) -> str:
    sel = [
        r
        for r in rows
        if r.suite == suite
        and r.metric in metrics
        and (slice_filter is None or slice_filter(r.slice))
    ]
    if not sel:
        return "<p class=note>No rows for this suite.</p>"
    keys = []
    for r in sel:
        k = (r.slice, r.attack)
        if k not in keys:
            keys.append(k)
    idx = _index(sel)
    head = "".join(
        f"<th>{html.escape(m)}<br><span class=note>{html.escape(me)}</span></th>"
        for m in methods
        for me in metrics
    )
    out = [f"<table><tr><th class=l>slice</th><th class=l>attack</th><th>n</th>{head}</tr>"]
    for s, a in keys:
        cells = "".join(
            f"<td title='n={idx[(m, suite, s, a, me)].n}'>{_fmt(idx[(m, suite, s, a, me)].value)}</td>"
            if (m, suite, s, a, me) in idx
            else "<td>–</td>"
            for m in methods
            for me in metrics
        )
        ns = sorted({r.n for r in sel if (r.slice, r.attack) == (s, a)})
        n_txt = "/".join(str(n) for n in ns)
        out.append(
            f"<tr><td class=l>{html.escape(s)}</td><td class=l>{html.escape(a)}</td>"
            f"<td>{n_txt}</td>{cells}</tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _roc_plot(runs: list[_Run]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for run in runs:
        for f in sorted((run.folder / "rows").glob("*/unsafe_cls.roc.json")):
            data = read_json_file(f, "ROC file")
            for key, c in data.items():
                curves.append((f"{f.parent.name}: {key}", c["fpr"], c["tpr"], c.get("auroc")))
    if not curves:
        return "<p class=note>No ROC data (run the unsafe_cls suite).</p>"
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name, fpr, tpr, auc in curves:
        ax.plot(fpr, tpr, lw=1.1, label=f"{name} ({auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], color="#aaa", ls="--", lw=0.6)
    ax.set_xlabel("false-positive rate (safe inputs flagged)")
    ax.set_ylabel("true-positive rate (unsafe inputs flagged)")
    ax.legend(fontsize=6, loc="lower right")
    return _svg(fig)


def _curves_plot(records: dict[str, dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_curves = {m: r for m, r in records.items() if r.get("curve")}
    if not with_curves:
        return "<p class=note>No training curves (training-free methods only).</p>"
    n = len(with_curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for ax, (m, rec) in zip(axes[0], with_curves.items(), strict=True):
        curve = rec["curve"]
        keys = [k for k in curve[0] if k != "step"]
        steps = [e["step"] for e in curve]
        for k in keys:
            ax.plot(steps, [e.get(k, float("nan")) for e in curve], lw=1.0, label=k)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.legend(fontsize=6)
    return _svg(fig)


def _examples_html(runs: list[_Run]) -> str:
    from relsafe.world.render import render
    from relsafe.world.vocab import ORO

    blocks = []
    for run in runs:
        orig = run.examples.get("original") or next(iter(run.examples.values()), None)
        if not orig:
            continue
        for i, item in enumerate(orig["items"]):
            try:  # a manifest world's test image (moved or deleted since the run: left out)
                img = example_image(item) if "image" in item else None
            except InputError:
                continue
            if img is None:
                img = render(
                    ORO.parse(item["tuple"]), item["seed"], item["style"], item.get("size", 64)
                )

            lines = []
            for m, ex in run.examples.items():
                pred = ex["items"][i]["top1"]
                cls = (
                    "bad"
                    if pred == item["tuple"] and item.get("unsafe")
                    else ("ok" if item.get("unsafe") else "")
                )
                lines.append(
                    f"<div><b>{html.escape(m)}</b>: <span class={cls}>{html.escape(pred)}</span></div>"
                )
            tag = " (unsafe)" if item.get("unsafe") else ""
            blocks.append(
                f"<div class=ex><img alt='{html.escape(item['tuple'])}' src='{_png_b64(img)}'>"
                f"<div><i>{html.escape(item['tuple'])}{tag}</i></div>{''.join(lines)}</div>"
            )
    if not blocks:
        return "<p class=note>No examples.</p>"
    return "<div>" + "".join(blocks) + "</div>"


def _timings_table(runs: list[_Run]) -> str:
    out = ["<table><tr><th class=l>run</th><th class=l>stage</th><th>seconds</th></tr>"]
    for run in runs:
        for stage, secs in sorted((run.timings.get("stages") or {}).items()):
            out.append(
                f"<tr><td class=l>{html.escape(run.folder.name)}</td><td class=l>{html.escape(stage)}</td><td>{_fmt(secs) if secs is not None else '–'}</td></tr>"
            )
        total = (run.timings.get("this_run") or {}).get("total")
        if total is not None:
            out.append(
                f"<tr><td class=l>{html.escape(run.folder.name)}</td><td class=l><b>this run, total</b></td><td>{total:.1f}</td></tr>"
            )
    out.append("</table>")
    return "\n".join(out)


def _is_hyperbolic_edit(folder: Path) -> bool:
    cfg = folder / "merged" / "config.json"
    try:
        return read_json_file(cfg, "model config").get("architecture") == "hyperbolic"
    except (InputError, AttributeError):
        return False


def _serve_section(runs: list[_Run]) -> str:
    """The commands that put each model this run produced to work (index a gallery, serve it)."""
    items = []
    gallery = shlex.quote(str(runs[0].folder / "gallery-test")) if runs else ""
    for run in runs:
        policy = (run.provenance.get("config") or {}).get("policy") or "default"
        for folder in sorted(p for p in (run.folder / "models").glob("*") if p.is_dir()):
            if not (folder / "merged").is_dir() or "@seed" in folder.name:
                continue
            m = shlex.quote(str(folder))
            idx = shlex.quote(str(run.folder / "indexes" / folder.name))
            pol = shlex.quote(str(policy))
            if _is_hyperbolic_edit(folder):
                fit = "# hyperbolic: classifies with its own fitted radius thresholds, no fit needed\n"
            else:
                fit = f"relsafe classify fit --model {m} --policy {pol}\n"
            cmds = (
                fit + f"relsafe index --model {m} --images {gallery}/manifest.csv --out {idx}\n"
                f"relsafe serve --model {m} --index {idx}   # http://127.0.0.1:8000/"
            )
            items.append(f"<h3>{html.escape(folder.name)}</h3><pre>{html.escape(cmds)}</pre>")
    if not items:
        return ""
    export = f"relsafe data export-relworld --split test --out {gallery}"
    return (
        "<h2>Put the models to work</h2><p class=note>Each edited model of this run as a moderation "
        "and safe-search service (docs/serve.md): fit its unsafe classifier on the policy's VAL "
        "material (Euclidean models), index the RelWorld test gallery, serve the API and the web "
        f"page. The gallery, once for all models:</p><pre>{html.escape(export)}</pre>"
        + "".join(items)
    )


def _suite_sections(rows: list[Row], methods: list[str], runs: list[_Run]) -> list[str]:
    """Each registered suite's declared report tables (and the figures they name), in order."""
    from relsafe.eval.suites import suites

    plots = {
        "tradeoff": lambda: "<h3>Relational trade-off</h3>" + tradeoff_plot(rows, methods),
        "landing_bars": lambda: (
            "<h3>Where unsafe queries land (attack none)</h3>" + landing_bars(rows, methods)
        ),
        "unsafe_heatmap": lambda: (
            "<h3>Per-tuple harmful landing rate</h3>"
            + harmful_heatmap(rows, methods, "none")
            + harmful_heatmap(rows, methods, "worst")
        ),
        "roc": lambda: _roc_plot(runs),
    }
    out: list[str] = []
    for suite in suites().values():
        for table in suite.report:
            note = f"<p class=note>{html.escape(table.note)}</p>" if table.note else ""
            out.append(f"<h2>{html.escape(table.title)}</h2>{note}")
            for name in table.plots:
                if name not in plots:
                    raise InputError(
                        f"suite {suite.name!r} asks for report figure {name!r}; "
                        f"known figures: {sorted(plots)}"
                    )
                out.append(plots[name]())
            out.append(_suite_table(rows, methods, suite.name, list(table.metrics), table.slices))
    return out


def build_report(run_dirs: list[str | Path], out_html: str | Path) -> Path:
    """Write the report for one or more ``relsafe run`` folders to ``out_html``."""
    if not run_dirs:
        raise InputError("build_report needs at least one run folder")
    folders = [Path(d) for d in run_dirs]
    runs = [_Run(f, f"{f.name}/" if len(folders) > 1 else "") for f in folders]
    rows = [r for run in runs for r in run.rows]
    records = {k: v for run in runs for k, v in run.records.items()}
    methods = _methods(rows)
    prov = runs[0].provenance
    cfg = prov.get("config", {})
    title = f"relsafe report: {cfg.get('model', '?')} with policy {cfg.get('policy', '?')}"
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=note>{len(rows)} rows from {', '.join(html.escape(str(f)) for f in folders)}; "
        f"git {html.escape(str(prov.get('git_commit') or 'n/a'))[:12]}, created {html.escape(str(prov.get('created', '')))}. "
        f"Every number is a row of results.jsonl; hover a cell for its n. {html.escape(world_text(prov))}.</p>",
        "<h2>Leaderboard</h2><p class=note>Each cell: the mean over the method's training seeds and its 95% interval [low, high] (percentile bootstrap over test items within each seed, seeds drawn too; hover for n and seeds; docs/intervals.md). Best per column in bold only where its interval does not overlap the runner-up's. summary = harmonic mean of (1 − mean harmful landing rate over informative attacks) and preservation on unseen strings: per slice (marginals, neighbours, unrelated tuples no method retains on), edited accuracy over original accuracy, each summed over informative attacks, averaged over the three slices. An attack is informative when the original's tuple top-1 under it is at least 0.5.</p>",
        _leaderboard(rows, methods),
        *_suite_sections(rows, methods, runs),
        "<h2>Examples: top-1 caption before and after</h2><p class=note>Test images of the run's world; red = the unsafe tuple is still the top-1 caption.</p>",
        _examples_html(runs),
        budget_section(records),
        "<h2>Training curves</h2>",
        _curves_plot(records),
        _serve_section(runs),
        "<h2>Timings</h2>",
        _timings_table(runs),
        "<h2>Provenance</h2>",
        *[
            f"<details><summary>{html.escape(r.folder.name)}</summary><pre>{html.escape(json.dumps(r.provenance, indent=1)[:20000])}</pre></details>"
            for r in runs
        ],
        "</body></html>",
    ]
    out = Path(out_html)
    atomic_write_text(out, "\n".join(p for p in parts if p))
    return out


__all__ = ["build_report", "headline_columns", "leaderboard_markdown"]
