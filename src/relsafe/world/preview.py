"""Contact sheets: a PNG grid of RelWorld images with their tuples underneath, per style.

``python -m relsafe.world.preview --style night --out /tmp/night.png`` writes one from the shell.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from random import Random

from PIL import Image, ImageDraw, ImageFont

from relsafe.errors import InputError
from relsafe.world.render import render
from relsafe.world.styles import ALL_STYLES, get_style
from relsafe.world.vocab import ORO, default_vocabulary

MAX_COLS = 8
"""Columns of a contact sheet (fewer when ``n`` is smaller)."""
LINE_H = 11
"""Height in pixels of one caption line."""
CAPTION_LINES = 3
"""Caption lines reserved under every image (a long tuple wraps to subject / relation / object)."""
PAD = 2


def sheet_size(n: int, size: int = 64, scale: int = 3) -> tuple[int, int]:
    """(width, height) of the sheet :func:`contact_sheet` makes for ``n`` images."""
    cols = min(n, MAX_COLS)
    rows = math.ceil(n / cols)
    cell = size * scale
    return cols * (cell + PAD) + PAD, rows * (cell + CAPTION_LINES * LINE_H + PAD) + PAD


def _spread(tuples: Sequence[ORO], n: int, seed: int) -> list[ORO]:
    """``n`` distinct tuples drawn from ``tuples`` in their order (all, cycling, when ``n`` is larger)."""
    m = len(tuples)
    if n >= m:
        return [tuples[i % m] for i in range(n)]
    pick = sorted(Random(f"relworld/sheet/{seed}").sample(range(m), n))
    return [tuples[i] for i in pick]


def contact_sheet(
    style: str = "plain",
    tuples: Sequence[ORO] | None = None,
    n: int = 24,
    seed: int = 0,
    size: int = 64,
    scale: int = 3,
) -> Image.Image:
    """A grid of ``n`` rendered images with their tuple ids underneath.

    With ``tuples=None`` the images show ``n`` distinct valid tuples drawn by ``seed`` (all of them,
    in order, when ``n >= 96``); given ``tuples``, the
    grid cycles through them in order (pass ``n=len(tuples)`` to see each once). Image ``i`` uses
    seed ``seed * 100_003 + i``. Images are upscaled by ``scale`` (nearest neighbour) so pixels stay
    visible. The sheet's size is :func:`sheet_size` ``(n, size, scale)``.
    """
    get_style(style)
    if n < 1:
        raise InputError(f"contact_sheet needs n >= 1 images, got {n}")
    if scale < 1:
        raise InputError(f"scale must be >= 1, got {scale}")
    vocab = default_vocabulary()
    if tuples is None:
        chosen = _spread(vocab.valid_tuples(), n, seed)
    else:
        base = [vocab.tuple(t, where=f"tuples[{i}]") for i, t in enumerate(tuples)]
        if not base:
            raise InputError("contact_sheet got an empty list of tuples")
        chosen = [base[i % len(base)] for i in range(n)]
    width, height = sheet_size(n, size, scale)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    cell = size * scale
    cols = min(n, MAX_COLS)
    for i, t in enumerate(chosen):
        img = render(t, seed * 100_003 + i, style, size)
        if scale > 1:
            img = img.resize((cell, cell), Image.Resampling.NEAREST)
        x = PAD + (i % cols) * (cell + PAD)
        y = PAD + (i // cols) * (cell + CAPTION_LINES * LINE_H + PAD)
        sheet.paste(img, (x, y))
        text = t.id
        lines = [text] if draw.textlength(text, font=font) <= cell else list(t)
        for j, line in enumerate(lines[:CAPTION_LINES]):
            draw.text((x + 1, y + cell + j * LINE_H), line, fill=(0, 0, 0), font=font)
    return sheet


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a contact sheet PNG."""
    ap = argparse.ArgumentParser(prog="python -m relsafe.world.preview", description=__doc__)
    ap.add_argument("--style", default="plain", help=f"one of {', '.join(ALL_STYLES)}")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--all", action="store_true", help="one image of every valid tuple (96)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--out", default=None, help="PNG path (default /tmp/relworld_<style>.png)")
    args = ap.parse_args(argv)
    tuples = default_vocabulary().valid_tuples() if args.all else None
    n = len(tuples) if tuples is not None else args.n
    sheet = contact_sheet(args.style, tuples, n, args.seed, args.size, args.scale)
    out = args.out or f"/tmp/relworld_{args.style}.png"
    sheet.save(out)
    print(f"wrote {out} ({sheet.width}x{sheet.height}, {n} images, style {args.style})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
