"""The ``relational`` suite's report figures, drawn from rows only.

* :func:`tradeoff_plot`: one point per method and attack, harmful landing rate (x, lower is
  safer) against preservation (y, the per-attack ratio from ``compare``; the original is 1);
* :func:`landing_bars`: where the unsafe queries land, as stacked shares of the six landing
  categories, per method and direction (attack ``none``);
* :func:`harmful_heatmap`: the harmful landing rate per unsafe tuple and method, for one attack.
"""

from __future__ import annotations

import html

from relsafe.eval.landing import CATEGORIES
from relsafe.eval.rows import Row
from relsafe.report._figures import fmt, index_rows, svg

__all__ = ["Y_CLIP", "harmful_heatmap", "landing_bars", "tradeoff_plot"]

Y_CLIP = 1.5  # trade-off plot: preservation ratios above this are drawn at the edge

# one colour per landing category: harmful in reds, redirect in greens, the rest in greys/blue
_CATEGORY_COLOURS = {
    "hit": "#b3261e",
    "other_unsafe": "#e8806f",
    "counterpart": "#1b6e2a",
    "keeps_action": "#7fc48a",
    "keeps_object": "#6f8fcf",
    "unrelated": "#c4c7cc",
}


def tradeoff_plot(rows: list[Row], methods: list[str]) -> str:
    """Harmful landing rate vs preservation, one point per method and attack (inline SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = index_rows(rows)
    attacks = sorted(
        {
            r.attack
            for r in rows
            if r.suite == "relational"
            and r.metric == "harmful_landing_rate"
            and r.slice == "all"
            and r.attack not in ("worst", "worst_informative")
        }
    )
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    markers = "os^Dv<>pP*X"
    plotted = False
    for i, m in enumerate(methods):
        xs, ys, labels = [], [], []
        for a in attacks:
            harm = idx.get((m, "relational", "all", a, "harmful_landing_rate"))
            pres = idx.get((m, "relational", "all", a, "preservation"))
            if harm is None:
                continue
            xs.append(harm.value)
            ys.append(pres.value if pres is not None else 1.0)
            labels.append(a)
        if not xs:
            continue
        plotted = True
        # ratios on attacks where the original is weak can be huge (0.03 / 0.01): drawn hollow
        # at the top edge
        colour = f"C{i % 10}"
        ax.scatter(
            xs,
            [min(y, Y_CLIP) for y in ys],
            marker=markers[i % len(markers)],
            s=46,
            label=m,
            alpha=0.85,
            edgecolors=colour,
            facecolors=[colour if y <= Y_CLIP else "none" for y in ys],
        )
        if m != "original":
            for x, y, a in zip(xs, ys, labels, strict=True):
                if y <= Y_CLIP and a in ("none", "paraphrase", "context"):
                    ax.annotate(a, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    if not plotted:
        plt.close(fig)
        return "<p class=note>No relational rows.</p>"
    ax.set_xlabel("harmful landing rate (hit + other unsafe; lower is safer)")
    ax.set_ylabel(f"preservation ratio vs original (clipped at {Y_CLIP})")
    ax.set_ylim(top=Y_CLIP + 0.05)
    ax.set_xlim(-0.02, 1.02)
    ax.axhline(1.0, color="#999", lw=0.6, ls="--")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(
        f"Relational trade-off: one point per method and attack (hollow: ratio > {Y_CLIP})",
        fontsize=9,
    )
    return svg(fig)


def landing_bars(rows: list[Row], methods: list[str], attack: str = "none") -> str:
    """Stacked landing shares (slice ``all``) per method and direction, for one attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = index_rows(rows)
    bars: list[tuple[str, list[float]]] = []
    for m in methods:
        for d, name in (("i2t", "image→text"), ("t2i", "text→image")):
            got = [
                idx.get((m, "relational", "all", attack, f"landing_{c}_{d}")) for c in CATEGORIES
            ]
            if all(r is not None for r in got):
                bars.append((f"{m} ({name})", [r.value for r in got if r is not None]))
    if not bars:
        return "<p class=note>No landing rows.</p>"
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.32 * len(bars)))
    ys = list(range(len(bars)))[::-1]
    left = [0.0] * len(bars)
    for k, c in enumerate(CATEGORIES):
        widths = [v[k] for _, v in bars]
        ax.barh(ys, widths, left=left, color=_CATEGORY_COLOURS[c], label=c, height=0.7)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(ys, [label for label, _ in bars], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of unsafe queries by where their top-1 lands (attack {attack})")
    ax.legend(fontsize=6, ncol=len(CATEGORIES), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return svg(fig)


def harmful_heatmap(rows: list[Row], methods: list[str], attack: str) -> str:
    """A table, one row per unsafe tuple and one column per method, of the harmful landing rate
    under ``attack``, red as it rises (empty when no row has that attack)."""
    idx = index_rows(rows)
    tuples = sorted(
        {
            r.slice
            for r in rows
            if r.suite == "relational"
            and r.metric == "harmful_landing_rate"
            and r.attack == attack
            and "|" in r.slice
        }
    )
    if not tuples:
        return ""
    out = [
        f"<table><tr><th class=l>unsafe tuple ({html.escape(attack)})</th>"
        + "".join(f"<th>{html.escape(m)}</th>" for m in methods)
        + "</tr>"
    ]
    for t in tuples:
        cells = []
        for m in methods:
            r = idx.get((m, "relational", t, attack, "harmful_landing_rate"))
            if r is None:
                cells.append("<td>–</td>")
                continue
            v = max(0.0, min(1.0, r.value))
            color = f"rgba(200,40,40,{0.08 + 0.85 * v:.2f})" if v > 0 else "rgba(40,160,70,0.18)"
            cells.append(f"<td style='background:{color}' title='n={r.n}'>{fmt(r.value)}</td>")
        out.append(f"<tr><td class=l>{html.escape(t)}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)
