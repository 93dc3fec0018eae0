"""Draw RelWorld scenes: a subject figure and an object icon in the pose that the relation implies.

Longer than 500 lines because it is one concern, drawing: a figure per subject, an icon per
object and a pose per relation, which read best side by side; splitting them would scatter the
shared geometry helpers.

Every scene is a background (sky and ground), a subject (child, adult or dog) and an object icon.
The relation decides where the object goes:

* ``drinking``: the drink is tilted with its rim at the mouth, a hand on it (dog: at the snout);
* ``eating``: the food touches the mouth, a hand on it (dog: in the snout);
* ``smoking``: a cigarette sticks out of the mouth, its lit tip outward, with smoke puffs;
* ``holding``: a person holds the object in an extended hand, away from the face; a dog pins the
  object to the ground under a raised, bent front paw;
* ``next_to``: arms down (dog standing on all fours), the object on the ground with a clear gap.

Everything is deterministic from ``(tuple, seed, style, size)``. The layout (position, scale,
facing, pose jitter) and the object's variant depend on the seed only, so the same seed gives the
same composition for every tuple and every style (a minimal pair: only the swapped element and the
style change). Colours depend on the seed and the style.

Drawing is plain PIL at the target size (no supersampling): roughly 1.2-2.6k images/s per core at
64x64 depending on style and machine load (``python benchmarks/render_speed.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from random import Random

import numpy as np
from PIL import Image, ImageDraw

from relsafe.errors import InputError
from relsafe.world.styles import OUTLINE, PALETTES, Color, Style, get_style
from relsafe.world.vocab import ORO, default_vocabulary

MIN_SIZE = 32
"""Smallest image side :func:`render` accepts (below it the icons stop being recognisable)."""
MAX_SIZE = 1024
"""Largest image side :func:`render` accepts."""

_BASE = 64.0  # scene geometry is laid out on a 64-unit canvas, then scaled to ``size``
_MARGIN = 1.5

Affine = tuple[float, float, float, float, float, float]
Point = tuple[float, float]

# ---------------------------------------------------------------------------------------------
# affine helpers (x' = a x + b y + c ; y' = d x + e y + f ; y points down)
# ---------------------------------------------------------------------------------------------
_ID: Affine = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _place(at: Point, angle: float, scale: float, anchor: Point = (0.0, 0.0)) -> Affine:
    """Map local ``anchor`` to ``at``, rotating by ``angle`` degrees (clockwise on screen)."""
    ca, sa = math.cos(math.radians(angle)) * scale, math.sin(math.radians(angle)) * scale
    ax, ay = anchor
    return (ca, -sa, at[0] - (ca * ax - sa * ay), sa, ca, at[1] - (sa * ax + ca * ay))


def _ap(m: Affine, p: Point) -> Point:
    a, b, c, d, e, f = m
    return (a * p[0] + b * p[1] + c, d * p[0] + e * p[1] + f)


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 14) -> list[Point]:
    return [
        (cx + rx * math.cos(2 * math.pi * i / n), cy + ry * math.sin(2 * math.pi * i / n))
        for i in range(n)
    ]


def _mix(c: Color, k: float, to: Color = (0, 0, 0)) -> Color:
    """Blend colour ``c`` towards ``to`` by ``k`` (0 keeps ``c``)."""
    return (
        int(c[0] + (to[0] - c[0]) * k),
        int(c[1] + (to[1] - c[1]) * k),
        int(c[2] + (to[2] - c[2]) * k),
    )


def _jit(c: Color, rng: Random, amt: int = 10) -> Color:
    return tuple(min(255, max(0, v + rng.randint(-amt, amt))) for v in c)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# display list (figure coordinates: 64-unit scale, feet of the subject at the origin)
# ---------------------------------------------------------------------------------------------
_POLY, _LINE, _CIRCLE, _UNDER = 0, 1, 2, 3


class _Ops:
    """A list of drawing operations in figure coordinates."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def poly(
        self, m: Affine, pts: list[Point], fill: Color | None, outline: Color | None = OUTLINE
    ) -> None:
        a, b, c, d, e, f = m
        self.items.append(
            (_POLY, [(a * x + b * y + c, d * x + e * y + f) for x, y in pts], fill, outline, 0.0)
        )

    def line(
        self, m: Affine, pts: list[Point], color: Color, width: float, under: bool = False
    ) -> None:
        """A polyline; ``under=True`` adds a dark underlay one unit wider (skipped in sketches)."""
        a, b, c, d, e, f = m
        xy = [(a * x + b * y + c, d * x + e * y + f) for x, y in pts]
        w = width * math.sqrt(abs(a * e - b * d))
        if under:
            self.items.append((_UNDER, xy, OUTLINE, None, w + 1.1))
        self.items.append((_LINE, xy, color, None, w))

    def circle(
        self, m: Affine, c: Point, r: float, fill: Color | None, outline: Color | None = OUTLINE
    ) -> None:
        a, b, _, d, e, _ = m
        self.items.append((_CIRCLE, [_ap(m, c)], fill, outline, r * math.sqrt(abs(a * e - b * d))))

    def extend(self, other: _Ops) -> None:
        self.items.extend(other.items)

    def translate(self, dx: float, dy: float) -> None:
        """Shift every point by (dx, dy)."""
        self.items = [
            (k, [(x + dx, y + dy) for x, y in pts], f, o, w) for k, pts, f, o, w in self.items
        ]

    def rotate(self, deg: float) -> None:
        """Rotate every point about the origin (the subject's feet)."""
        if not deg:
            return
        ca, sa = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        self.items = [
            (k, [(ca * x - sa * y, sa * x + ca * y) for x, y in pts], f, o, w)
            for k, pts, f, o, w in self.items
        ]

    def bbox(self) -> tuple[float, float, float, float]:
        x0 = y0 = math.inf
        x1 = y1 = -math.inf
        for kind, pts, _, _, w in self.items:
            pad = w if kind == _CIRCLE else w * 0.5
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            x0, x1 = min(x0, min(xs) - pad), max(x1, max(xs) + pad)
            y0, y1 = min(y0, min(ys) - pad), max(y1, max(ys) + pad)
        return x0, y0, x1, y1


# ---------------------------------------------------------------------------------------------
# object icons (local coordinates, ~12-15 units tall or wide, y down)
# ---------------------------------------------------------------------------------------------
GLASS: Color = (222, 232, 242)


@dataclass(frozen=True)
class _Icon:
    """An object icon and its anchors (local coordinates)."""

    draw: Callable[[_Ops, Affine, int], None]
    top: Point  # goes to the mouth when drinking
    bite: Point  # goes to the mouth when eating / smoking
    grip: Point  # goes into the hand when holding
    bottom: Point  # rests on the ground
    half_w: float  # half width at rest, for ground placement
    hold_angle: float  # orientation in a hand (degrees, facing right)
    rest_angle: float  # orientation on the ground


def _wine(o: _Ops, m: Affine, v: int) -> None:
    o.line(m, [(0.0, 0.0), (0.0, 5.6)], (120, 126, 138), 1.2)
    o.poly(m, _rect(-3.3, 5.3, 3.3, 6.5), GLASS)
    o.poly(
        m,
        [
            (-4.3, -6.5),
            (4.3, -6.5),
            (4.1, -3.4),
            (2.9, -0.9),
            (1.0, 0.3),
            (-1.0, 0.3),
            (-2.9, -0.9),
            (-4.1, -3.4),
        ],
        GLASS,
    )
    o.poly(
        m,
        [
            (-4.1, -4.4),
            (4.1, -4.4),
            (3.9, -3.3),
            (2.7, -1.0),
            (0.9, 0.0),
            (-0.9, 0.0),
            (-2.7, -1.0),
            (-3.9, -3.3),
        ],
        (128, 8, 36),
        None,
    )


def _beer(o: _Ops, m: Affine, v: int) -> None:
    o.poly(
        m,
        [
            (-2.9, 7.0),
            (2.9, 7.0),
            (2.9, -0.8),
            (1.3, -3.6),
            (1.3, -6.9),
            (-1.3, -6.9),
            (-1.3, -3.6),
            (-2.9, -0.8),
        ],
        (112, 60, 18),
    )
    o.poly(m, _rect(-2.9, 0.9, 2.9, 4.3), (240, 222, 165), None)
    o.poly(m, _rect(-1.6, -7.9, 1.6, -6.8), (218, 178, 40))


def _juice(o: _Ops, m: Affine, v: int) -> None:
    o.line(m, [(1.0, 0.0), (3.4, -9.2)], (236, 58, 96), 1.4)
    o.poly(m, [(-4.4, -5.5), (4.4, -5.5), (3.2, 5.5), (-3.2, 5.5)], GLASS)
    o.poly(m, [(-4.05, -3.6), (4.05, -3.6), (3.05, 5.3), (-3.05, 5.3)], (255, 138, 0), None)
    o.circle(m, (-4.0, -5.4), 1.8, (255, 186, 40))


def _milk(o: _Ops, m: Affine, v: int) -> None:
    o.poly(m, _rect(-3.2, -6.9, 3.2, 6.6), GLASS)
    o.poly(m, _rect(-3.1, -4.6, 3.1, 6.5), (253, 253, 250), (165, 168, 180))


def _bread(o: _Ops, m: Affine, v: int) -> None:
    o.poly(
        m,
        [
            (-7.0, 3.8),
            (7.0, 3.8),
            (7.3, 0.0),
            (6.6, -2.4),
            (4.6, -3.8),
            (0.0, -4.4),
            (-4.6, -3.8),
            (-6.6, -2.4),
            (-7.3, 0.0),
        ],
        (212, 158, 86),
    )
    for x in (-4.0, -0.6, 2.8):
        o.line(m, [(x, -3.2), (x + 1.7, -0.8)], (150, 96, 40), 1.1)


def _chocolate(o: _Ops, m: Affine, v: int) -> None:
    o.poly(m, _rect(-6.2, -3.6, 6.2, 3.6), (86, 44, 20))
    seg = (146, 90, 50)
    o.line(m, [(-2.2, -3.2), (-2.2, 3.2)], seg, 0.9)
    o.line(m, [(-5.8, 0.0), (2.6, 0.0)], seg, 0.9)
    o.poly(
        m,
        [(2.6, -4.0), (6.6, -4.0), (6.6, 4.0), (2.2, 4.0), (3.2, 1.6), (2.2, -0.6)],
        (205, 205, 216),
    )


def _apple(o: _Ops, m: Affine, v: int) -> None:
    o.line(m, [(0.0, -3.6), (0.9, -6.8)], (100, 62, 26), 1.3)
    o.poly(m, [(1.0, -5.4), (3.8, -7.0), (4.6, -5.2), (2.1, -4.4)], (60, 165, 45))
    o.circle(m, (0.0, 0.4), 4.6, (206, 24, 30) if v % 3 else (112, 192, 44))
    o.circle(m, (-1.7, -1.2), 1.0, (255, 255, 255), None)


def _knife(o: _Ops, m: Affine, v: int) -> None:
    o.poly(m, _rect(-7.6, -1.35, -2.3, 1.35), (72, 40, 20))
    o.poly(m, [(-2.4, -1.6), (7.8, -1.2), (5.0, 1.1), (-2.4, 2.0)], (208, 213, 224))
    o.poly(m, _rect(-2.7, -1.9, -1.7, 2.2), (140, 142, 150))


def _gun(o: _Ops, m: Affine, v: int) -> None:
    o.poly(m, [(-5.4, -1.3), (-1.4, -1.3), (-2.4, 6.0), (-6.8, 6.0)], (46, 43, 41))
    o.line(m, [(-1.4, -1.0), (-0.4, 1.8), (1.6, 1.8), (1.6, -1.0)], OUTLINE, 0.9)
    o.poly(m, _rect(-5.8, -4.1, 7.2, -1.1), (62, 62, 68))
    o.poly(m, _rect(5.9, -5.0, 6.8, -4.1), (62, 62, 68))


def _cigarette(o: _Ops, m: Affine, v: int) -> None:
    o.poly(m, _rect(-6.0, -1.2, -2.4, 1.2), (224, 150, 68))
    o.poly(m, _rect(-2.4, -1.2, 5.4, 1.2), (252, 252, 250))
    o.poly(m, _rect(5.4, -1.2, 6.7, 1.2), (255, 64, 10))


_TOYS: tuple[Color, ...] = (
    (230, 40, 40),
    (40, 100, 235),
    (250, 210, 20),
    (40, 190, 70),
    (170, 60, 210),
)


def _toy(o: _Ops, m: Affine, v: int) -> None:
    col = _TOYS[v % len(_TOYS)]
    if v % 4 == 3:  # a tower of three blocks
        o.poly(m, _rect(-6.0, 0.0, 0.0, 6.0), col)
        o.poly(m, _rect(0.0, 0.0, 6.0, 6.0), _TOYS[(v + 1) % len(_TOYS)])
        o.poly(m, _rect(-3.0, -6.0, 3.0, 0.0), _TOYS[(v + 2) % len(_TOYS)])
        for cx, cy in ((-3.0, 3.0), (3.0, 3.0), (0.0, -3.0)):
            o.poly(m, _rect(cx - 1.3, cy - 1.3, cx + 1.3, cy + 1.3), (250, 250, 245), None)
        return
    o.poly(
        m,
        [
            (-6.6, 2.4),
            (6.6, 2.4),
            (6.6, -0.6),
            (3.9, -1.3),
            (2.2, -4.2),
            (-3.0, -4.2),
            (-4.6, -1.3),
            (-6.6, -0.9),
        ],
        col,
    )
    o.poly(m, [(-2.6, -3.5), (1.7, -3.5), (2.9, -1.3), (-3.9, -1.3)], (175, 220, 245), None)
    for x in (-3.8, 3.8):
        o.circle(m, (x, 2.6), 2.0, (25, 25, 25))
        o.circle(m, (x, 2.6), 0.7, (190, 190, 190), None)


_COVERS: tuple[Color, ...] = (
    (30, 60, 160),
    (170, 30, 40),
    (30, 120, 70),
    (120, 40, 140),
    (20, 120, 150),
)


def _book(o: _Ops, m: Affine, v: int) -> None:
    col = _COVERS[v % len(_COVERS)]
    paper = (250, 248, 238)
    if v % 3 == 2:  # closed, standing
        o.poly(m, _rect(-4.0, -5.4, 5.8, 6.6), paper)
        o.poly(m, _rect(-5.0, -6.4, 4.8, 5.8), col)
        o.poly(m, _rect(-5.0, -6.4, -3.5, 5.8), _mix(col, 0.4))
        o.poly(m, _rect(-2.0, -3.6, 3.2, -1.4), (242, 226, 150), None)
        return
    o.poly(m, [(-7.6, -3.4), (0.0, -2.4), (7.6, -3.4), (7.6, 4.8), (0.0, 5.6), (-7.6, 4.8)], col)
    o.poly(m, [(-6.9, -4.4), (-0.2, -3.0), (-0.2, 4.4), (-6.9, 3.6)], paper)
    o.poly(m, [(6.9, -4.4), (0.2, -3.0), (0.2, 4.4), (6.9, 3.6)], paper)
    ink = (120, 120, 130)
    for y in (-1.8, 0.4, 2.4):
        o.line(m, [(-5.8, y - 0.6), (-1.4, y)], ink, 0.7)
        o.line(m, [(1.4, y), (5.8, y - 0.6)], ink, 0.7)


_ICONS: dict[str, _Icon] = {
    "wine": _Icon(_wine, (0.0, -6.5), (-4.3, -4.0), (0.0, 2.8), (0.0, 6.5), 4.3, 0.0, 0.0),
    "beer": _Icon(_beer, (0.0, -7.9), (-2.9, 0.0), (0.0, 3.6), (0.0, 7.0), 3.0, 0.0, 0.0),
    "juice": _Icon(_juice, (0.0, -5.5), (-4.4, -4.0), (0.0, 1.2), (0.0, 5.5), 4.4, 0.0, 0.0),
    "milk": _Icon(_milk, (0.0, -6.9), (-3.2, -4.0), (0.0, 1.5), (0.0, 6.6), 3.2, 0.0, 0.0),
    "bread": _Icon(_bread, (0.0, -4.4), (-7.0, 0.0), (0.0, 0.5), (0.0, 3.8), 7.3, 0.0, 0.0),
    "chocolate": _Icon(_chocolate, (0.0, -3.6), (-6.0, 0.0), (2.5, 0.0), (0.0, 3.6), 6.4, 0.0, 0.0),
    "apple": _Icon(_apple, (0.0, -4.2), (-4.4, 0.4), (0.0, 1.0), (0.0, 5.0), 4.6, 0.0, 0.0),
    "knife": _Icon(_knife, (0.0, -1.6), (-7.6, 0.0), (-5.0, 0.0), (0.0, 2.0), 7.7, -72.0, 0.0),
    "gun": _Icon(_gun, (0.0, -4.1), (-5.8, -2.6), (-4.0, 2.2), (0.0, 6.0), 7.0, 0.0, 0.0),
    "cigarette": _Icon(
        _cigarette, (0.0, -1.2), (-6.0, 0.0), (-1.0, 0.0), (0.0, 1.2), 6.4, -8.0, 0.0
    ),
    "toy": _Icon(_toy, (0.0, -4.2), (-6.6, 0.0), (0.0, 0.0), (0.0, 4.6), 6.6, 0.0, 0.0),
    "book": _Icon(_book, (0.0, -4.4), (-7.6, 0.0), (0.0, 4.6), (0.0, 5.6), 7.6, 0.0, 0.0),
}
_BOTTOM_OVERRIDE = {("toy", 3): (0.0, 6.0), ("book", 2): (0.3, 6.6)}


def _bottom(obj: str, v: int) -> Point:
    icon = _ICONS[obj]
    if obj == "toy" and v % 4 == 3:
        return _BOTTOM_OVERRIDE[("toy", 3)]
    if obj == "book" and v % 3 == 2:
        return _BOTTOM_OVERRIDE[("book", 2)]
    return icon.bottom


def _smoke(o: _Ops, tip: Point, s: float) -> None:
    col, edge = (214, 214, 222), (150, 150, 162)
    for dx, dy, r in ((0.9, -2.8, 1.3), (2.4, -5.4, 1.7), (1.1, -8.5, 2.1)):
        o.circle(_ID, (tip[0] + dx * s, tip[1] + dy * s), r * s, col, edge)


# ---------------------------------------------------------------------------------------------
# subjects
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Body:
    head_r: float
    head: Point
    shoulder: Point
    hip_y: float
    torso_w: float
    leg_w: float
    arm_w: float
    spread: float
    upper: float
    fore: float


_ADULT = _Body(4.6, (0.6, -35.4), (0.2, -29.2), -15.5, 6.2, 2.6, 2.2, 3.6, 7.4, 7.2)
_CHILD = _Body(5.4, (0.6, -21.9), (0.2, -15.4), -7.6, 5.6, 2.4, 2.0, 2.6, 5.8, 5.6)

_SKIN: tuple[Color, ...] = (
    (255, 222, 188),
    (240, 196, 152),
    (224, 170, 122),
    (192, 136, 92),
    (150, 100, 66),
    (112, 76, 52),
)
_HAIR: tuple[Color, ...] = (
    (32, 26, 22),
    (92, 60, 32),
    (162, 110, 52),
    (222, 190, 110),
    (170, 72, 30),
    (150, 150, 150),
)
_FUR: tuple[Color, ...] = (
    (162, 106, 56),
    (206, 166, 96),
    (60, 50, 46),
    (236, 230, 216),
    (140, 136, 132),
    (120, 76, 40),
)


def _ik(sh: Point, target: Point, l1: float, l2: float) -> tuple[Point, Point]:
    """Two-link arm from shoulder ``sh`` towards ``target``; returns (elbow, hand), elbow low."""
    dx, dy = target[0] - sh[0], target[1] - sh[1]
    d = math.hypot(dx, dy)
    reach = l1 + l2 - 1e-3
    d = min(max(d, abs(l1 - l2) + 1e-3), reach)
    base = math.atan2(dy, dx)
    cosa = (l1 * l1 + d * d - l2 * l2) / (2 * l1 * d)
    a = math.acos(min(1.0, max(-1.0, cosa)))
    e1 = (sh[0] + l1 * math.cos(base + a), sh[1] + l1 * math.sin(base + a))
    e2 = (sh[0] + l1 * math.cos(base - a), sh[1] + l1 * math.sin(base - a))
    elbow = e1 if e1[1] >= e2[1] else e2
    return elbow, (sh[0] + d * math.cos(base), sh[1] + d * math.sin(base))


@dataclass
class _Look:
    """Colours of one scene (drawn from the style's palette)."""

    sky: Color
    ground: Color
    skin: Color
    shirt: Color
    pants: Color
    hair: Color | None
    fur: Color


@dataclass
class _Layout:
    """Seed-only random draws: the same seed gives the same composition for every tuple."""

    facing: int
    lean: float
    ground_y: float
    u_x: float
    scale_range: int
    u_scale: float
    obj_scale: float
    u_tilt: float
    u_arm: float
    u_gap: float
    side: int
    variant: int
    hand_at_mouth: bool
    jitter: float
    u_ground: float
    u_horizon: float


def _draw_layout(seed: int) -> _Layout:
    r = Random(f"relworld/{seed}/layout")
    return _Layout(
        facing=1 if r.random() < 0.5 else -1,
        lean=r.uniform(-4.0, 4.0),
        ground_y=r.uniform(49.0, 58.0),
        u_x=r.random(),
        scale_range=r.randrange(1 << 30),
        u_scale=r.random(),
        obj_scale=r.uniform(0.9, 1.12),
        u_tilt=r.random(),
        u_arm=r.random(),
        u_gap=r.random(),
        side=1 if r.random() < 0.5 else -1,
        variant=r.randrange(1 << 30),
        hand_at_mouth=r.random() < 0.5,
        jitter=r.uniform(-1.0, 1.0),
        u_ground=r.random(),
        u_horizon=r.random(),
    )


def _human(t: ORO, lay: _Layout, look: _Look) -> _Ops:
    """A person (child or adult) with the object posed for the relation; figure coordinates."""
    body = _ADULT if t.subject == "adult" else _CHILD
    icon = _ICONS[t.object]
    v = lay.variant
    so = lay.obj_scale
    hx, hy = body.head
    hr = body.head_r
    sx, sy = body.shoulder
    mouth = (hx + 0.95 * hr, hy + 0.42 * hr)
    back, fig, obj, front = _Ops(), _Ops(), _Ops(), _Ops()
    skin, shirt, pants = look.skin, look.shirt, look.pants

    def arm(o: _Ops, sh: Point, elbow: Point, hand: Point) -> None:
        o.line(_ID, [sh, elbow, hand], shirt, body.arm_w, under=True)
        o.circle(_ID, hand, body.arm_w * 0.75, skin)

    def arm_down(o: _Ops, sh: Point, dx: float) -> None:
        elbow = (sh[0] + dx, sh[1] + body.upper)
        arm(o, sh, elbow, (elbow[0] + dx * 0.6, elbow[1] + body.fore * 0.95))

    # --- object and front arm by relation -------------------------------------------------
    rel = t.relation
    if rel == "drinking":
        tilt = -(100.0 + 30.0 * lay.u_tilt) if t.object == "beer" else -(72.0 + 38.0 * lay.u_tilt)
        m = _place((mouth[0] - 0.6, mouth[1] + 0.2), tilt, so, icon.top)
        icon.draw(obj, m, v)
        elbow, hand = _ik((sx, sy), _ap(m, icon.grip), body.upper, body.fore)
        arm(front, (sx, sy), elbow, hand)
    elif rel == "eating":
        m = _place((mouth[0] - 1.3, mouth[1] + 0.6), -12.0 + 34.0 * lay.u_tilt, so, icon.bite)
        icon.draw(obj, m, v)
        c = _ap(m, icon.grip)
        elbow, hand = _ik((sx, sy), (c[0], c[1] + 1.5 * so), body.upper, body.fore)
        arm(front, (sx, sy), elbow, hand)
    elif rel == "smoking":
        m = _place((mouth[0] - 0.7, mouth[1] + 0.2), 6.0 + 20.0 * lay.u_tilt, so, icon.bite)
        icon.draw(obj, m, v)
        _smoke(obj, _ap(m, (6.7, 0.0)), so)
        if lay.hand_at_mouth:
            elbow, hand = _ik((sx, sy), _ap(m, (-2.0, 1.4)), body.upper, body.fore)
            arm(front, (sx, sy), elbow, hand)
        else:
            arm_down(front, (sx + 0.6, sy), 1.4)
    elif rel == "holding":
        ang = math.radians(2.0 + 28.0 * lay.u_arm)
        reach = (body.upper + body.fore) * 0.98
        hand = (sx + reach * math.cos(ang), sy + reach * math.sin(ang))
        elbow = (sx + body.upper * math.cos(ang), sy + body.upper * math.sin(ang) + 0.6)
        m = _place(hand, icon.hold_angle + 10.0 * lay.jitter, so, icon.grip)
        icon.draw(obj, m, v)
        if t.object == "cigarette":
            _smoke(obj, _ap(m, (6.7, 0.0)), so * 0.8)
        arm(front, (sx, sy), elbow, hand)
    else:  # next_to
        arm_down(front, (sx + 0.6, sy), 1.4)
        half = icon.half_w * so
        gap = 5.0 + 8.0 * lay.u_gap
        reach = max(body.torso_w * 0.5, body.spread + 2.0)
        x = lay.side * (reach + gap + half)
        m = _place(
            (x, 2.5 * lay.u_ground - 0.5),
            icon.rest_angle + 4.0 * lay.jitter,
            so,
            _bottom(t.object, v),
        )
        icon.draw(obj, m, v)

    # --- body ------------------------------------------------------------------------------
    arm_down(back, (sx - 0.8, sy), -1.2)
    hip = body.hip_y
    fig.line(_ID, [(-1.1, hip), (-body.spread, -0.6)], pants, body.leg_w, under=True)
    fig.line(_ID, [(1.1, hip), (body.spread, -0.6)], pants, body.leg_w, under=True)
    fig.line(_ID, [(-body.spread - 0.4, -0.3), (-body.spread + 1.6, -0.3)], OUTLINE, 1.4)
    fig.line(_ID, [(body.spread - 0.4, -0.3), (body.spread + 1.8, -0.3)], OUTLINE, 1.4)
    w = body.torso_w * 0.5
    fig.poly(
        _ID, [(-w, sy - 0.6), (w, sy - 0.6), (w * 0.86, hip + 0.6), (-w * 0.86, hip + 0.6)], shirt
    )
    fig.line(_ID, [(hx * 0.5, hy + hr * 0.8), (0.3, sy - 0.4)], skin, 1.6)
    fig.circle(_ID, (hx, hy), hr, skin)
    if look.hair is not None:
        cap = [
            (hx + hr * 1.06 * math.cos(math.radians(a)), hy + hr * 1.06 * math.sin(math.radians(a)))
            for a in range(195, 350, 22)
        ]
        fig.poly(_ID, cap, look.hair, None)
    fig.circle(_ID, (hx + 0.45 * hr, hy - 0.12 * hr), 0.55, OUTLINE, None)
    fig.line(
        _ID, [(hx + 0.55 * hr, hy + 0.45 * hr), (hx + 0.92 * hr, hy + 0.42 * hr)], OUTLINE, 0.8
    )

    out = back
    out.extend(fig)
    out.extend(obj)
    out.extend(front)
    return out


_DRINKS = frozenset({"wine", "beer", "juice", "milk"})

# dog geometry (facing right, feet at the origin)
_DOG_MOUTH: Point = (18.0, -17.4)


def _dog(t: ORO, lay: _Layout, look: _Look) -> _Ops:
    """A dog with the object posed for the relation; figure coordinates."""
    icon = _ICONS[t.object]
    v = lay.variant
    so = lay.obj_scale
    fur = look.fur
    dark = _mix(fur, 0.35)
    legs = _mix(fur, 0.12)
    fig, obj, front = _Ops(), _Ops(), _Ops()
    rel = t.relation
    mouth = _DOG_MOUTH
    raised_paw: Point | None = None

    if rel == "drinking":
        tilt = -(80.0 + 40.0 * lay.u_tilt)
        m = _place((mouth[0] - 0.6, mouth[1]), tilt, so, icon.top)
        icon.draw(obj, m, v)
    elif rel == "eating":
        m = _place((mouth[0] - 1.4, mouth[1] + 0.4), -10.0 + 30.0 * lay.u_tilt, so, icon.bite)
        icon.draw(obj, m, v)
    elif rel == "smoking":
        m = _place((mouth[0] - 0.8, mouth[1]), 6.0 + 20.0 * lay.u_tilt, so, icon.bite)
        icon.draw(obj, m, v)
        _smoke(obj, _ap(m, (6.7, 0.0)), so)
    elif rel == "holding":
        # the object lies on the ground just in front of the front legs, pinned by a raised paw
        tall = t.object in _DRINKS or (t.object == "book" and v % 3 == 2)
        m = _place((0.0, 0.0), (90.0 if tall else icon.rest_angle) + 3.0 * lay.jitter, so)
        icon.draw(obj, m, v)
        bx0, by0, bx1, by1 = obj.bbox()
        dx, dy = 10.8 - bx0, 0.6 * lay.u_ground - by1
        obj.translate(dx, dy)
        raised_paw = (10.8 + (bx1 - bx0) * 0.3, by0 + dy - 1.0)
        if t.object == "cigarette":
            tip = _ap(m, (6.7, 0.0))
            _smoke(obj, (tip[0] + dx, tip[1] + dy), so * 0.8)
    else:  # next_to
        half = icon.half_w * so
        gap = 5.0 + 8.0 * lay.u_gap
        x = (19.0 + gap + half) if lay.side > 0 else -(15.5 + gap + half)
        m = _place(
            (x, 2.5 * lay.u_ground - 0.5),
            icon.rest_angle + 4.0 * lay.jitter,
            so,
            _bottom(t.object, v),
        )
        icon.draw(obj, m, v)

    # legs (the far pair first, darker), tail, body, neck, head
    fig.line(_ID, [(-6.0, -10.0), (-5.6, -0.4)], dark, 2.5, under=True)
    fig.line(_ID, [(5.2, -10.0), (5.0, -0.4)], dark, 2.5, under=True)
    fig.line(_ID, [(-10.0, -13.5), (-14.8, -19.0)], fur, 2.1, under=True)
    fig.line(_ID, [(-8.6, -10.0), (-9.0, -0.4)], legs, 2.7, under=True)
    if raised_paw is None:
        fig.line(_ID, [(7.4, -10.0), (7.8, -0.4)], legs, 2.7, under=True)
    fig.poly(_ID, _ellipse(-1.0, -12.4, 10.6, 4.9), fur)
    fig.poly(_ID, [(4.2, -15.6), (8.8, -21.0), (11.8, -17.6), (8.2, -11.2)], fur, None)
    fig.circle(_ID, (10.6, -20.0), 4.3, fur)
    fig.poly(_ID, [(11.4, -22.2), (17.8, -20.6), (18.2, -17.0), (11.4, -16.2)], fur)
    fig.circle(_ID, (17.8, -19.8), 1.2, OUTLINE, None)
    fig.poly(_ID, [(8.6, -23.4), (6.2, -17.4), (9.6, -18.6)], dark)
    fig.circle(_ID, (12.0, -21.2), 0.6, OUTLINE, None)
    out = fig
    out.extend(obj)
    if raised_paw is not None:
        sh = (7.0, -10.5)
        knee = (raised_paw[0] - 1.0, min(raised_paw[1], -8.0) - 2.5)
        front.line(_ID, [sh, knee, raised_paw], legs, 2.7, under=True)
        front.circle(_ID, raised_paw, 1.9, legs)
    out.extend(front)
    return out


# ---------------------------------------------------------------------------------------------
# backgrounds, decorations, distractors
# ---------------------------------------------------------------------------------------------
def _look(seed: int, st: Style, t: ORO) -> tuple[_Look, Random]:
    r = Random(f"relworld/{seed}/{st.name}/look")
    pal = PALETTES[st.palettes[r.randrange(len(st.palettes))]]
    sky = pal.sky(r)
    ground = pal.ground(r)
    skin = _jit(_SKIN[r.randrange(len(_SKIN))], r, 8)
    shirt = pal.cloth(r)
    pants = _mix(pal.cloth(r), 0.35)
    hair_i = r.randrange(len(_HAIR) + 2)
    if t.subject == "child" and hair_i == 5:
        hair_i = 1
    hair = _HAIR[hair_i] if hair_i < len(_HAIR) else None
    fur = _jit(_FUR[r.randrange(len(_FUR))], r, 10)
    return _Look(sky, ground, skin, shirt, pants, hair, fur), r


def _props(o: _Ops, r: Random, x: float, y: float, s: float) -> None:
    """One non-vocabulary prop (ball, potted plant, crate, cone) standing at (x, y)."""
    k = r.randrange(4)
    m = _place((x, y), 0.0, s)
    if k == 0:
        col = _TOYS[r.randrange(len(_TOYS))]
        o.circle(m, (0.0, -3.6), 3.6, col)
        o.line(m, [(-3.4, -3.0), (3.4, -4.2)], (250, 250, 250), 1.0)
    elif k == 1:
        o.circle(m, (-1.8, -8.5), 2.4, (60, 150, 60))
        o.circle(m, (1.8, -8.5), 2.4, (50, 135, 55))
        o.circle(m, (0.0, -10.6), 2.4, (70, 165, 65))
        o.poly(m, [(-3.0, -6.0), (3.0, -6.0), (2.2, 0.0), (-2.2, 0.0)], (190, 100, 60))
    elif k == 2:
        o.poly(m, _rect(-4.0, -7.5, 4.0, 0.0), (184, 142, 92))
        o.line(m, [(-4.0, -7.5), (4.0, 0.0)], (130, 96, 56), 0.8)
        o.line(m, [(4.0, -7.5), (-4.0, 0.0)], (130, 96, 56), 0.8)
    else:
        o.poly(m, [(0.0, -8.0), (3.0, 0.0), (-3.0, 0.0)], (250, 120, 30))
        o.poly(m, [(-1.2, -4.6), (1.2, -4.6), (1.6, -3.2), (-1.6, -3.2)], (250, 250, 250), None)


_BANK_TILES = 8


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """Fixed noise tiles (2 size x 2 size): fine Gaussian grain plus smooth colour blotches.

    Generated once per size from a fixed seed, so crops of it are deterministic everywhere.
    """
    rng = np.random.default_rng(0x52_57_4E)
    n, side = (_BANK_TILES if size <= 128 else 2), 2 * size
    grain = rng.standard_normal((n, side, side, 3), dtype=np.float32)
    blots = np.clip(rng.normal(128.0, 50.0, (n, 19, 19, 3)), 0, 255).astype(np.uint8)
    for i in range(n):
        smooth = Image.fromarray(blots[i], "RGB").resize((side, side), Image.Resampling.BILINEAR)
        grain[i] += (np.asarray(smooth, np.float32) - 128.0) / 40.0
    return grain


def _noise_crop(size: int, r: Random) -> np.ndarray:
    """A (size, size, 3) unit-scale noise field: a random crop of a random bank tile."""
    bank = _noise_bank(size)
    tile = bank[r.randrange(len(bank))]
    y, x = r.randrange(size), r.randrange(size)
    crop = tile[y : y + size, x : x + size]
    if r.random() < 0.5:
        crop = crop[:, ::-1]
    return crop


def _paint(
    draw: ImageDraw.ImageDraw,
    items: list[tuple],
    st: Style,
    sx: float,
    tx: float,
    ty: float,
    k: float,
    unit: float,
) -> None:
    """Draw figure-coordinate items with X = tx + sx * x, Y = ty + k * y (sx = +-k flips).

    ``unit`` is pixels per 64-canvas unit; outlines are about 0.9 of it wide (1 px at 64x64).
    """
    outline_only = st.outline_only
    pencil = st.pencil
    ow = max(1, int(unit * 0.9 + 0.5))
    tone, line_tone = st.tone, st.line_tone
    for kind, pts, fill, outline, w in items:
        if kind == _CIRCLE:
            (x, y) = pts[0]
            cx, cy, r = tx + sx * x, ty + k * y, max(w * k, 0.5)
            box = (cx - r, cy - r, cx + r, cy + r)
            if outline_only:
                draw.ellipse(box, outline=pencil, width=ow)
            else:
                draw.ellipse(
                    box,
                    fill=tone(fill) if fill is not None else None,
                    outline=line_tone(outline) if outline is not None else None,
                    width=ow,
                )
            continue
        xy = [(tx + sx * x, ty + k * y) for x, y in pts]
        if kind == _POLY:
            if outline_only:
                draw.polygon(xy, outline=pencil, width=ow)
            else:
                draw.polygon(
                    xy,
                    fill=tone(fill) if fill is not None else None,
                    outline=line_tone(outline) if outline is not None else None,
                    width=ow,
                )
        elif kind == _LINE:
            if outline_only:
                draw.line(xy, fill=pencil, width=ow)
            else:
                draw.line(xy, fill=tone(fill), width=max(1, int(w * k + 0.5)), joint="curve")
        elif not outline_only:  # underlay
            draw.line(xy, fill=line_tone(fill), width=max(1, int(w * k + 0.5)), joint="curve")


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise InputError(f"size must be an integer number of pixels, got {size!r}")
    size = int(size)
    if size < MIN_SIZE or size > MAX_SIZE:
        raise InputError(
            f"size {size} is out of range: RelWorld renders images from {MIN_SIZE} to {MAX_SIZE} "
            f"pixels a side (64 is the default)"
        )
    return size


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InputError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def _render(t: ORO, seed: int, st: Style, size: int) -> Image.Image:
    lay = _draw_layout(seed)
    look, r = _look(seed, st, t)
    items = _dog(t, lay, look) if t.subject == "dog" else _human(t, lay, look)
    items.rotate(lay.lean if t.relation != "next_to" else lay.lean * 0.5)

    # scale and position (64-unit canvas), keeping the whole figure in frame
    x0, y0, x1, y1 = items.bbox()
    lo, hi = st.scales[lay.scale_range % len(st.scales)]
    s = lo + (hi - lo) * lay.u_scale
    g = lay.ground_y if s < 1.25 else max(lay.ground_y, 58.0)
    s = min(s, (g - _MARGIN) / max(-y0, 1.0), (_BASE - 2 * _MARGIN) / max(x1 - x0, 1.0))
    if y1 > 0:
        g = min(g, _BASE - 0.5 - s * y1)
    f = lay.facing
    if f > 0:
        lo_x, hi_x = _MARGIN - s * x0, _BASE - _MARGIN - s * x1
    else:
        lo_x, hi_x = _MARGIN + s * x1, _BASE - _MARGIN + s * x0
    tx = lo_x + (hi_x - lo_x) * lay.u_x if hi_x > lo_x else (lo_x + hi_x) * 0.5

    k = size / _BASE
    horizon = g - (3.0 + 7.0 * lay.u_horizon) * min(s, 1.2)

    # background
    if st.noise > 0:
        hz = int(round(horizon * k))
        base = np.empty((size, size, 3), np.float32)
        base[:hz] = st.tone(look.sky)
        base[hz:] = st.tone(look.ground)
        base += st.noise * _noise_crop(size, r)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
    else:
        sky = st.tone(look.sky)
        img = Image.new("RGB", (size, size), sky)
        draw = ImageDraw.Draw(img)
        if st.outline_only:
            hz = horizon * k
            draw.line([(0, hz), (size, hz)], fill=_mix(st.pencil, 0.55, (255, 255, 255)), width=1)
        else:
            draw.rectangle((0, horizon * k, size, size), fill=st.tone(look.ground))

    back = _Ops()
    if st.night:
        for _ in range(r.randint(4, 10)):
            x, y = r.uniform(0, _BASE), r.uniform(0, horizon - 4)
            back.circle(_ID, (x, y), 0.35, (240, 240, 200), None)
        if r.random() < 0.6:
            mx = r.choice((r.uniform(5, 14), r.uniform(50, 59)))
            back.circle(_ID, (mx, r.uniform(5, 11)), 3.2, (235, 230, 180), None)
    elif st.decorations:
        for _ in range(r.choice((0, 0, 1, 1, 2))):
            cx, cy, cs = r.uniform(4, 60), r.uniform(3, 12), r.uniform(0.7, 1.1)
            col = _mix(look.sky, 0.6, (255, 255, 255))
            for dx, dy, rr in ((-2.6, 0.6, 2.2), (0.0, -0.6, 2.8), (2.8, 0.5, 2.1)):
                back.circle(_ID, (cx + dx * cs, cy + dy * cs), rr * cs, col, None)
        grass = _mix(look.ground, 0.3)
        for _ in range(r.choice((0, 1, 2, 3))):
            gx, gy = r.uniform(2, 62), r.uniform(horizon + 1, 63)
            back.line(_ID, [(gx - 1.2, gy - 1.8), (gx, gy), (gx + 1.2, gy - 1.8)], grass, 0.8)
    if st.distractors[1] > 0:
        n = r.randint(*st.distractors)
        others = [o for o in _ICONS if o != t.object]
        fig_lo, fig_hi = sorted((tx + f * s * x0, tx + f * s * x1))
        shelf_y = r.uniform(9.5, 13.0)
        n_shelf = max(1, n - r.randint(1, 2))
        back.line(_ID, [(1.0, shelf_y + 0.8), (63.0, shelf_y + 0.8)], (120, 80, 45), 1.6)
        for i in range(n_shelf):
            obj = others[r.randrange(len(others))]
            ic = _ICONS[obj]
            vv = r.randrange(1 << 20)
            x = (i + 0.5) * 64.0 / n_shelf + r.uniform(-3, 3)
            ic.draw(back, _place((x, shelf_y), ic.rest_angle, 0.55, _bottom(obj, vv)), vv)
        left, right = fig_lo - 1.0, 63.0 - fig_hi
        for _ in range(n - n_shelf):
            if max(left, right) < 8.0:
                break
            if left >= right:
                x = r.uniform(4.0, left - 4.0)
            else:
                x = r.uniform(fig_hi + 5.0, 60.0)
            _props(back, r, x, horizon + r.uniform(1.0, 4.0), 0.8)
    _paint(draw, back.items, st, k, 0.0, 0.0, k, k)
    _paint(draw, items.items, st, f * s * k, tx * k, g * k, s * k, k)
    if st.grayscale and st.noise > 0:
        img = img.convert("L").convert("RGB")
    return img


def render(t: ORO, seed: int, style: str = "plain", size: int = 64) -> Image.Image:
    """Render tuple ``t`` as an RGB image of ``size`` x ``size`` pixels.

    Deterministic from ``(t, seed, style, size)``, across processes and machines. The layout and
    the object's variant depend on ``seed`` alone, so the same seed gives a minimal pair across
    tuples and styles. Raises InputError for an invalid tuple, an unknown style or a size outside
    ``[MIN_SIZE, MAX_SIZE]``.
    """
    t = default_vocabulary().tuple(t)
    st = get_style(style)
    return _render(t, _check_seed(seed), st, _check_size(size))


def render_batch(
    tuples: Sequence[ORO], seeds: Sequence[int], style: str = "plain", size: int = 64
) -> np.ndarray:
    """Render many tuples at once: uint8 array (N, size, size, 3), the same pixels as :func:`render`."""
    if len(tuples) != len(seeds):
        raise InputError(
            f"render_batch needs one seed per tuple, got {len(tuples)} tuples and {len(seeds)} seeds"
        )
    vocab = default_vocabulary()
    st = get_style(style)
    size = _check_size(size)
    checked = [vocab.tuple(t, where=f"tuples[{i}]") for i, t in enumerate(tuples)]
    seeds_i = [_check_seed(s) for s in seeds]
    out = np.empty((len(checked), size, size, 3), np.uint8)
    for i, (t, s) in enumerate(zip(checked, seeds_i, strict=True)):
        out[i] = np.asarray(_render(t, s, st, size))
    return out
