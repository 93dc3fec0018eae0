"""Small helpers the report's figures and tables share: number formatting, inline SVG from a
matplotlib figure, and rows indexed by (method, suite, slice, attack, metric)."""

from __future__ import annotations

import io
import math
from typing import Any

from relsafe.eval.rows import Row

__all__ = ["fmt", "index_rows", "svg"]


def fmt(v: float | None) -> str:
    """A value with three decimals, ``–`` for a missing or NaN one."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (closed afterwards; no RDF metadata block)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    if "<metadata>" in text:  # RDF licence block: namespace URIs only, but useless weight
        text = (
            text[: text.index("<metadata>")]
            + text[text.index("</metadata>") + len("</metadata>") :]
        )
    return text


def index_rows(rows: list[Row]) -> dict[tuple[str, str, str, str, str], Row]:
    """Rows by (method, suite, slice, attack, metric)."""
    return {(r.method, r.suite, r.slice, r.attack, r.metric): r for r in rows}


def world_text(prov: dict) -> str:
    """One line naming a run's world from its provenance: the vocabulary (name, SHA-256) and the
    image source (RelWorld renders, or the manifest's path and SHA-256)."""
    w = prov.get("world") or {}
    if not w:
        return "world: not recorded (a run from before worlds were recorded)"
    v = w.get("vocabulary") or {}
    text = f"world: {w.get('world', '?')}; vocabulary {v.get('name', '?')} ({v.get('source', '?')}"
    text += f", SHA-256 {str(v.get('sha256', ''))[:12]})"
    if w.get("manifest"):
        text += f"; images: manifest {w['manifest']} (SHA-256 {str(w.get('manifest_sha256'))[:12]})"
    else:
        text += f"; images: {w.get('images', '?')}"
    return text


def example_image(item: dict) -> Any:
    """The 64 px image of an example item that names a file (a manifest world's test image)."""
    from relsafe.data.images import load_image_file

    return load_image_file(item["image"]).resize((64, 64))
