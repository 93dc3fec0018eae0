"""UWM's calibration data: paired safe/unsafe texts (S, U) and images (V, G).

From the caller (a mapping or object with ``S``, ``U``, ``V``, ``G``, e.g. a ViSU file) or built from
the policy by the one quadruplet builder, :func:`relsafe.data.quadruplets.build_quadruplets`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from relsafe.errors import InputError
from relsafe.methods.uwm.config import UWMConfig

__all__ = ["CalibrationData", "calibration_data", "check_pairs", "neighbour_calibration_data"]


@dataclass
class CalibrationData:
    """Paired calibration inputs: ``S[b]`` pairs with ``U[b]``, ``V[b]`` with ``G[b]``.

    Images are PIL images, file paths or ``uint8 (H, W, 3)`` arrays; ``V``/``G`` may be ``None``
    when only the text tower is calibrated.
    """

    S: list[str]
    U: list[str]
    V: list[Any] | None
    G: list[Any] | None
    source: str = "data"
    dropped_image_pairs: int = 0


def _field(data: Any, key: str) -> Any:
    if isinstance(data, Mapping):
        return data.get(key)
    return getattr(data, key, None)


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray | torch.Tensor):
        if value.ndim != 4:
            raise InputError(
                f"calibration images as an array must be uint8 (N, H, W, 3), got shape {tuple(value.shape)}"
            )
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return list(arr)
    if isinstance(value, str):
        raise InputError("calibration texts/images must be lists, got a single string")
    return list(value)


def calibration_data(policy: Any, cfg: UWMConfig, data: Any = None) -> CalibrationData:
    """The calibration pairs: from ``data`` when given, else RelWorld quadruplets of ``policy``.

    RelWorld: ``cfg.n_per_pair`` quadruplets per ``(unsafe, counterpart)`` pair of the policy, the
    ``edit`` caption split (never the evaluation-reserved canonical template or held-out material)
    and training styles only, base seed ``EDIT + cfg.seed`` (never the TEST seed).
    ``data``: a mapping or object with ``S``, ``U`` (texts) and ``V``, ``G`` (images), e.g. a
    :class:`relsafe.data.visu.VisuData`; image pairs with a missing side (``None``) are dropped
    from the vision calibration.

    Raises :class:`InputError` for empty or one-sided calibration sets of a requested tower.
    """
    if data is None:
        if policy is None:
            raise InputError("uwm needs a safety policy (--policy) or calibration data (data=...)")
        from relsafe.data.quadruplets import build_quadruplets
        from relsafe.world import splits

        q = build_quadruplets(
            policy, cfg.n_per_pair, splits.EDIT + cfg.seed, size=cfg.size, caption_split="edit"
        )
        return CalibrationData(S=q.S, U=q.U, V=q.V, G=q.G, source=q.source)
    S, U = _as_list(_field(data, "S")), _as_list(_field(data, "U"))
    V, G = _as_list(_field(data, "V")), _as_list(_field(data, "G"))
    dropped = 0
    if V is not None and G is not None and len(V) == len(G):
        keep = [i for i in range(len(V)) if V[i] is not None and G[i] is not None]
        dropped = len(V) - len(keep)
        if dropped:
            V, G = [V[i] for i in keep], [G[i] for i in keep]
    return CalibrationData(
        S or [],
        U or [],
        V,
        G,
        source=str(_field(data, "source") or "data"),
        dropped_image_pairs=dropped,
    )


def neighbour_calibration_data(policy: Any, cfg: UWMConfig) -> dict[str, CalibrationData]:
    """One calibration set per neighbour kind (``contrast: neighbours``): every unsafe tuple
    against its safe neighbours of that kind, scene-matched minimal pairs that differ only in the
    subject, the object or the relation (``child|drinking|wine`` against ``adult|drinking|wine``,
    ``child|drinking|juice``, ``child|holding|wine``).

    About ``cfg.n_per_pair`` records per unsafe tuple and kind, spread evenly over its neighbours
    of that kind (at least one each); base seed ``EDIT + cfg.seed`` (each pair its own scenes),
    ``edit`` captions, training styles. Kinds that no unsafe tuple has
    are left out; an unsafe tuple without neighbours of a kind adds nothing to that kind's set.
    """
    from relsafe.data.quadruplets import build_quadruplets
    from relsafe.policy import NEIGHBOUR_KINDS
    from relsafe.world import splits

    if policy is None:
        raise InputError("uwm with contrast 'neighbours' needs a safety policy (--policy)")
    out: dict[str, CalibrationData] = {}
    for kind in NEIGHBOUR_KINDS:
        quads = []
        for t in policy.unsafe:
            neigh = policy.derive(t).by_kind(kind)
            if not neigh:
                continue
            per = max(1, -(-cfg.n_per_pair // len(neigh)))  # ceil: every neighbour gets some
            # each (tuple, neighbour) pair has its own scenes (world.dataset.scene_seed), so one
            # base seed serves every kind and tuple, in RelWorld and in a manifest world alike
            q = build_quadruplets(
                _Pairs(policy, [(t, n) for n in neigh]), per, splits.EDIT + cfg.seed, size=cfg.size
            )
            quads += [_Quad(q.S[i], q.V[i], q.U[i], q.G[i]) for i in range(len(q))]
        if quads:
            out[kind] = CalibrationData(
                S=[q.safe_text for q in quads],
                U=[q.unsafe_text for q in quads],
                V=[q.safe_image for q in quads],
                G=[q.unsafe_image for q in quads],
                source=f"relworld:{getattr(policy, 'name', 'policy')}:neighbours:{kind}",
            )
    if not out:
        raise InputError(
            f"policy {getattr(policy, 'name', '?')!r} has no safe neighbours to contrast with"
        )
    return out


def check_pairs(cal: CalibrationData, tower: str) -> int:
    """Number of pairs for ``tower``; errors for empty, one-sided or unequal calibration sets."""
    safe, unsafe, what = (
        (cal.S, cal.U, "texts (S, U)") if tower == "text" else (cal.V, cal.G, "images (V, G)")
    )
    n_s, n_u = len(safe or []), len(unsafe or [])
    if n_s == 0 and n_u == 0:
        extra = (
            f" ({cal.dropped_image_pairs} image pairs were dropped for a missing side)"
            if tower == "vision" and cal.dropped_image_pairs
            else ""
        )
        raise InputError(
            f"UWM calibration of the {tower} tower needs paired safe and unsafe {what}; got none"
            f"{extra}. Drop the tower from `towers` or provide the data."
        )
    if n_s == 0 or n_u == 0:
        raise InputError(
            f"UWM calibration of the {tower} tower is one-sided: {n_s} safe and {n_u} unsafe "
            f"{what}; the score is a ratio of unsafe to safe statistics and needs both"
        )
    if n_s != n_u:
        raise InputError(
            f"UWM calibration of the {tower} tower needs paired {what}: got {n_s} safe and {n_u} "
            "unsafe (item b of each must belong together)"
        )
    if tower == "text":
        for name, texts in (("S", safe), ("U", unsafe)):
            for i, t in enumerate(texts or []):
                if not isinstance(t, str) or not t:
                    raise InputError(f"calibration text {name}[{i}] is {t!r}, not a non-empty str")
    return n_s


class _Pairs:
    """A policy seen through a subset of its pairs (for the neighbour calibration sets)."""

    def __init__(self, policy: Any, pairs: list[Any]) -> None:
        self._policy, self._pairs = policy, pairs
        self.name = getattr(policy, "name", "policy")
        self.vocabulary = policy.vocabulary
        self.world = getattr(policy, "world", None)

    def pairs(self) -> list[Any]:
        return list(self._pairs)


class _Quad:
    """The four fields of a quadruplet that the calibration sets read."""

    def __init__(self, safe_text: str, safe_image: Any, unsafe_text: str, unsafe_image: Any):
        self.safe_text, self.safe_image = safe_text, safe_image
        self.unsafe_text, self.unsafe_image = unsafe_text, unsafe_image
