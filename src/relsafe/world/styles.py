"""RelWorld rendering styles: the training styles and the held-out out-of-distribution styles.

A :class:`Style` is a small bundle of parameters that :mod:`relsafe.world.render` reads: which
palette colours are drawn from, whether shapes are filled or only outlined, how colours are toned
(night, grayscale), background noise, distractor objects and the range of figure scales.

Training styles (:data:`TRAIN_STYLES`) vary palettes within a normal range and are the only styles
used for pretraining and for the canonical test set. OOD styles (:data:`OOD_STYLES`) are never used
in training; they drive the OOD image attack. Every style stays recognisable by a person.
"""

from __future__ import annotations

import colorsys
import difflib
from dataclasses import dataclass
from random import Random

from relsafe.errors import InputError

Color = tuple[int, int, int]

TRAIN_STYLES: tuple[str, ...] = ("plain", "pastel", "vivid")
"""Styles used for pretraining and the canonical test set."""

OOD_STYLES: tuple[str, ...] = ("sketch", "night", "noisy", "clutter", "grayscale", "extreme_scale")
"""Held-out styles never used in training (they drive the OOD image attack)."""

ALL_STYLES: tuple[str, ...] = TRAIN_STYLES + OOD_STYLES

OUTLINE: Color = (28, 28, 32)
"""The default outline colour of every filled shape (kept dark so shapes stand out)."""


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5))


@dataclass(frozen=True)
class Palette:
    """Ranges (saturation, value) for background, ground and clothing colours."""

    sky_s: tuple[float, float]
    sky_v: tuple[float, float]
    ground_s: tuple[float, float]
    ground_v: tuple[float, float]
    cloth_s: tuple[float, float]
    cloth_v: tuple[float, float]

    def sky(self, rng: Random) -> Color:
        """A background (sky / wall) colour."""
        return _hsv(rng.random(), rng.uniform(*self.sky_s), rng.uniform(*self.sky_v))

    def ground(self, rng: Random) -> Color:
        """A ground colour: mostly greens, browns and greys."""
        h = rng.choice((0.08, 0.11, 0.25, 0.30, 0.55, 0.0)) + rng.uniform(-0.03, 0.03)
        return _hsv(h, rng.uniform(*self.ground_s), rng.uniform(*self.ground_v))

    def cloth(self, rng: Random) -> Color:
        """A clothing colour (shirt, trousers)."""
        return _hsv(rng.random(), rng.uniform(*self.cloth_s), rng.uniform(*self.cloth_v))


PALETTES: dict[str, Palette] = {
    "plain": Palette(
        (0.0, 0.18), (0.86, 1.0), (0.15, 0.35), (0.62, 0.85), (0.45, 0.85), (0.35, 0.85)
    ),
    "pastel": Palette(
        (0.15, 0.35), (0.88, 1.0), (0.20, 0.40), (0.72, 0.92), (0.25, 0.50), (0.75, 0.95)
    ),
    "vivid": Palette(
        (0.45, 0.85), (0.60, 0.95), (0.50, 0.85), (0.40, 0.75), (0.75, 1.0), (0.45, 0.95)
    ),
    "night": Palette(
        (0.4, 0.8), (0.10, 0.24), (0.3, 0.6), (0.06, 0.16), (0.45, 0.85), (0.35, 0.85)
    ),
    "paper": Palette((0.0, 0.08), (0.92, 1.0), (0.0, 0.1), (0.5, 0.6), (0.0, 0.0), (0.2, 0.2)),
}


@dataclass(frozen=True)
class Style:
    """Parameters of one rendering style (read by :func:`relsafe.world.render.render`)."""

    name: str
    description: str
    palettes: tuple[str, ...]
    """Palette names; one is drawn per image."""
    ood: bool = False
    outline_only: bool = False
    """Line drawing: every shape is drawn as an outline in :attr:`pencil`, nothing is filled."""
    pencil: Color = (40, 40, 44)
    night: bool = False
    """Darken every colour and draw outlines in a moonlit light tone."""
    grayscale: bool = False
    noise: float = 0.0
    """Standard deviation (0-255 scale) of the per-pixel background noise; 0 for none."""
    distractors: tuple[int, int] = (0, 0)
    """Inclusive range of distractor objects (vocabulary icons on a high shelf, props on the far side)."""
    scales: tuple[tuple[float, float], ...] = ((0.85, 1.15),)
    """Subject scale ranges; one range is drawn per image, then a scale within it."""
    decorations: bool = True
    """Clouds and grass tufts (never vocabulary objects)."""

    def tone(self, c: Color) -> Color:
        """Map a fill colour through the style's colour transform (night, grayscale)."""
        if self.night:
            c = (int(c[0] * 0.55), int(c[1] * 0.55), int(c[2] * 0.55 + 22))
        if self.grayscale:
            y = int(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])
            c = (y, y, y)
        return c

    def line_tone(self, c: Color) -> Color:
        """Map an outline colour: night outlines turn into light moonlit edges."""
        if self.night and c == OUTLINE:
            return (150, 156, 190) if not self.grayscale else (158, 158, 158)
        return self.tone(c)


_STYLES: dict[str, Style] = {
    "plain": Style("plain", "light, lightly tinted background; natural colours", ("plain",)),
    "pastel": Style("pastel", "pastel background and clothing", ("pastel",)),
    "vivid": Style("vivid", "saturated background and clothing", ("vivid",)),
    "sketch": Style(
        "sketch",
        "pencil line drawing on paper, no fill",
        ("paper",),
        ood=True,
        outline_only=True,
        decorations=False,
    ),
    "night": Style(
        "night", "dark night palette with moonlit outlines", ("night",), ood=True, night=True
    ),
    "noisy": Style(
        "noisy",
        "strongly textured, noisy background",
        ("plain", "pastel", "vivid"),
        ood=True,
        noise=32.0,
        decorations=False,
    ),
    "clutter": Style(
        "clutter",
        "several distractor objects on a high shelf and props on the far side",
        ("plain", "pastel", "vivid"),
        ood=True,
        distractors=(3, 6),
    ),
    "grayscale": Style(
        "grayscale",
        "training palettes without colour",
        ("plain", "pastel", "vivid"),
        ood=True,
        grayscale=True,
    ),
    "extreme_scale": Style(
        "extreme_scale",
        "figures much smaller or much bigger than in training",
        ("plain", "pastel", "vivid"),
        ood=True,
        scales=((0.5, 0.62), (1.35, 1.6)),
    ),
}
assert set(_STYLES) == set(ALL_STYLES)


def get_style(name: str) -> Style:
    """The :class:`Style` called ``name``; an unknown name raises InputError naming valid styles."""
    if isinstance(name, Style):
        return name
    try:
        return _STYLES[name]
    except (KeyError, TypeError):
        hits = difflib.get_close_matches(str(name), ALL_STYLES, n=1, cutoff=0.4)
        hint = f"did you mean {hits[0]!r}? " if hits else ""
        raise InputError(
            f"unknown style {name!r}; {hint}valid styles: training {list(TRAIN_STYLES)}, "
            f"out-of-distribution {list(OOD_STYLES)}"
        ) from None


def is_ood(name: str) -> bool:
    """Whether ``name`` is a held-out (out-of-distribution) style."""
    return get_style(name).ood
