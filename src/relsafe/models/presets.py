"""Layer presets: a backbone's linear layers named by architectural role, per tower.

Methods pick *roles* (``attn_out``, ``mlp_out``, ...) and the backbone's :class:`LayerPreset` turns
them into module-name globs, so no method spells a backbone's module names.
:func:`match_linear_layers` resolves globs to modules. Re-exported by :mod:`relsafe.models.base`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from relsafe.errors import InputError

__all__ = ["ROLES", "TOWERS", "LayerPreset", "match_linear_layers"]

ROLES: tuple[str, ...] = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_out",
    "mlp_in",
    "mlp_out",
    "proj",
    "patch_embed",
)
"""Architectural roles a :class:`LayerPreset` names, per tower: the attention query, key and value
projections, the attention output projection, the first and second MLP layers of each block, the
projection head into the shared space and the patch (or stem) embedding."""

TOWERS: tuple[str, ...] = ("text", "vision")


def _check_tower(tower: str) -> str:
    if tower not in TOWERS:
        raise InputError(f"unknown tower {tower!r}; use one of {list(TOWERS)}")
    return tower


def _check_roles(roles: Iterable[str], where: str) -> tuple[str, ...]:
    if isinstance(roles, str):
        raise InputError(f"{where}: roles must be a list of role names, got the string {roles!r}")
    roles = tuple(roles)
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise InputError(f"{where}: unknown layer roles {bad}; valid roles: {list(ROLES)}")
    return roles


@dataclass(frozen=True)
class LayerPreset:
    """Names a backbone's linear layers by architectural role, per tower.

    ``text`` / ``vision`` map a role of :data:`ROLES` to ``fnmatch`` globs over module names
    *relative to the tower* (as returned by ``tower.named_modules()``), e.g.
    ``{"attn_out": ("encoder.layers.*.self_attn.out_proj",)}``. A role a tower lacks (relsafe-mini's
    CNN has no attention) is simply absent. Methods choose *roles* (LoRA's defaults live in
    :mod:`relsafe.methods.lora`), so they never spell a backbone's module names.

    ``method_roles`` lets a backbone override a method's default roles, ``{method: {tower:
    roles}}`` (relsafe-mini's LoRA also adapts MiniLM's query projection, for example); methods
    read it through :meth:`roles_for`.
    """

    text: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    vision: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    method_roles: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for tower in TOWERS:
            table = getattr(self, tower)
            _check_roles(table, f"layer preset ({tower} tower)")
            for role, globs in table.items():
                if isinstance(globs, str) or not all(isinstance(g, str) for g in globs):
                    raise InputError(
                        f"layer preset ({tower} tower): role {role!r} needs a tuple of globs, "
                        f"got {globs!r}"
                    )
            object.__setattr__(self, tower, {r: tuple(g) for r, g in table.items()})
        for method, by_tower in self.method_roles.items():
            for tower, roles in by_tower.items():
                _check_tower(tower)
                _check_roles(roles, f"layer preset method_roles[{method!r}][{tower!r}]")

    def roles(self, tower: str) -> dict[str, tuple[str, ...]]:
        """The role -> globs table of ``tower`` (``"text"`` or ``"vision"``)."""
        return dict(getattr(self, _check_tower(tower)))

    def has_role(self, tower: str, role: str) -> bool:
        """Whether ``tower`` names any layer for ``role``."""
        _check_roles([role], "has_role")
        return bool(getattr(self, _check_tower(tower)).get(role))

    def globs(self, tower: str, roles: Iterable[str]) -> tuple[str, ...]:
        """The globs of ``roles`` in ``tower``, in role order; roles the tower lacks add nothing."""
        table = getattr(self, _check_tower(tower))
        out: list[str] = []
        for role in _check_roles(roles, f"{tower} tower"):
            out.extend(table.get(role, ()))
        return tuple(out)

    def roles_for(self, method: str, tower: str, default: Sequence[str]) -> tuple[str, ...]:
        """The roles ``method`` adapts in ``tower``: this backbone's override from
        :attr:`method_roles`, else ``default`` (the method's own choice)."""
        override = self.method_roles.get(method, {}).get(_check_tower(tower))
        return tuple(override) if override is not None else _check_roles(default, method)


def match_linear_layers(
    tower: nn.Module, patterns: Sequence[str], types: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> dict[str, nn.Module]:
    """Return the ``nn.Linear`` (or ``types``) modules of ``tower`` whose names match a glob.

    Raises :class:`InputError` when the patterns match nothing, so a misspelt layer name in a config
    is reported instead of silently editing no weights.
    """
    found = {
        name: mod
        for name, mod in tower.named_modules()
        if isinstance(mod, types) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }
    if patterns and not found:
        raise InputError(
            f"layer patterns {list(patterns)} match no nn.Linear in {type(tower).__name__}; "
            f"linear layers look like: {[n for n, m in tower.named_modules() if isinstance(m, nn.Linear)][:4]}"
        )
    return found
