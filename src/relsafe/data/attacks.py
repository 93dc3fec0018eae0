"""Attacks as registered objects: how each attack changes a probe's captions or its images.

An :class:`Attack` is what the evaluation suites loop over. Its ``name`` is the value of the
``attack`` column of result rows (METRICS.md); its ``side`` says what it changes:

* ``none`` (side ``None``): canonical test images of the training styles, canonical captions;
* ``paraphrase`` (``"text"``): held-out templates and phrasings for the captions;
* ``context`` (``"text"``): canonical captions wrapped in held-out context wrappers;
* ``ood:<style>`` (``"image"``): images in a held-out style;
* ``corruption:<kind>`` (``"image"``): canonical images with noise, blur or JPEG artefacts;
* ``domain:<name>`` (``"image"``): test images of one domain of a manifest world (DATA.md: each
  test domain absent from the train split); on RelWorld, ``domain:<style>`` is ``ood:<style>``.

Every caption method takes ``vocab=`` (the world's vocabulary) and :meth:`Attack.test_images`
takes ``world=`` (:mod:`relsafe.data.world`); both default to the built-in RelWorld. Suites pass
``vocab`` only for a vocabulary other than the built-in one (:func:`vocab_kwargs`), so an outside
attack written without a ``vocab`` argument keeps working on RelWorld.

A text-side attack keeps the canonical images; an image-side attack keeps the canonical captions.
Each attack gives four things, built from :mod:`relsafe.data.probes`: one caption per tuple for
image->text probes (:meth:`Attack.captions`), every text->image query caption of one tuple
(:meth:`Attack.query_captions`: the 18 evaluation captions for ``none`` and image attacks, the 48
held-out ones for ``paraphrase``, the 18 evaluation captions in each of the 6 held-out wrappers for
``context``), the marginal probes (:meth:`Attack.marginal_captions`) and the test images
(:meth:`Attack.test_images`).

Attack *families* register themselves here in :data:`relsafe.registry.ATTACKS`, by family name:
an entry is either one :class:`Attack` (a family without an argument, such as ``paraphrase``) or an
:class:`AttackFamily` whose ``fn`` builds an attack from its argument (``ood`` and ``corruption``
validate their argument once, here). :func:`get_attack` parses a spec such as ``"ood:sketch"``
once; everything downstream takes :class:`Attack` objects. An outside package adds an attack the
same way::

    from relsafe.data.attacks import ImageAttack
    from relsafe.registry import ATTACKS

    ATTACKS.register("invert", ImageAttack("invert", transform_fn=lambda imgs, seed: 255 - imgs))

and, once that module is loaded as a plugin (the ``relsafe.plugins`` entry-point group, or
``RELSAFE_PLUGINS=my_module``), ``relational`` and ``zeroshot`` evaluate it with
``--set extra_attacks=[invert]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from relsafe.data import probes
from relsafe.data.probes import CORRUPTIONS, ImageSet
from relsafe.errors import InputError
from relsafe.registry import ATTACKS
from relsafe.world.styles import OOD_STYLES, TRAIN_STYLES
from relsafe.world.vocab import ORO

__all__ = [
    "ATTACKS",
    "CONTEXT",
    "CORRUPTIONS",
    "NONE",
    "OOD_STYLES",
    "PARAPHRASE",
    "SIDES",
    "TEXT_ATTACKS",
    "Attack",
    "AttackFamily",
    "ContextAttack",
    "CorruptionAttack",
    "ImageAttack",
    "ImageSet",
    "ParaphraseAttack",
    "TextAttack",
    "corruption_attack",
    "default_attacks",
    "domain_attack",
    "vocab_kwargs",
    "get_attack",
    "get_attacks",
    "image_attacks",
    "ood_attack",
]

SIDES: tuple[str | None, ...] = ("text", "image", None)
"""What an attack may change: the captions, the images, or nothing (``none``)."""

ImageTransform = Callable[[np.ndarray, int], np.ndarray]
"""(uint8 images (N, H, W, 3), base seed) -> uint8 images of the same shape."""


@dataclass(frozen=True)
class Attack:
    """One attack on the probes. The base class is the identity: canonical captions, canonical
    marginal probes and canonical test images (the attack ``none``).

    Attacks are frozen and compare by value, so the same spec parsed twice shares cached images.
    """

    name: str
    side: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"an attack needs a non-empty name, got {self.name!r}")
        if self.side not in SIDES:
            raise InputError(
                f"attack {self.name!r}: side must be one of {SIDES}, got {self.side!r}"
            )

    # ---- captions --------------------------------------------------------------------------
    @property
    def varies_captions(self) -> bool:
        """Whether :meth:`captions` depends on ``variant`` (suites average text attacks over a
        few independent caption sets; every other attack has one)."""
        return self.side == "text"

    def n_variants(self, text_variants: int) -> int:
        """How many caption sets a suite averages over for this attack."""
        return text_variants if self.varies_captions else 1

    def caption_key(self, variant: int = 0) -> tuple[Any, int]:
        """A key under which a suite may cache the text embeddings of :meth:`captions` (and of
        :meth:`marginal_captions`): every attack that is not text-side keeps the canonical
        captions, so they all share one."""
        return (self, variant) if self.varies_captions else ("none", 0)

    def captions(
        self, tuples: Sequence[ORO], variant: int = 0, seed: int = 0, vocab: Any = None
    ) -> list[str]:
        """One caption per tuple (``variant`` draws another independent set, where it varies)."""
        return probes.canonical_captions(tuples, vocab)

    def query_captions(
        self, t: ORO, seed: int = 0, variants: int = 1, vocab: Any = None
    ) -> list[str]:
        """The text->image query captions of one tuple under this attack, in a fixed order.

        The base (``none``, image attacks, and any attack that keeps the canonical captions):
        every evaluation caption of ``t`` (the evaluation-reserved canonical template x every
        train phrasing, :func:`relsafe.data.probes.eval_queries`; 18 for RelWorld), the canonical
        caption first. ``seed`` and ``variants`` matter only to attacks that draw captions."""
        return probes.eval_queries(t, vocab)

    def query_key(self, variants: int = 1) -> Any:
        """A key under which a suite may cache the embeddings of :meth:`query_captions` (per
        tuple): every attack that is not text-side shares the evaluation captions."""
        return (self, variants) if self.varies_captions else ("none",)

    def marginal_captions(
        self, role: str, variant: int = 0, seed: int = 0, vocab: Any = None
    ) -> tuple[list[str], list[str]]:
        """(words, probe captions) for recognising a ``role`` word alone under this attack."""
        return probes.marginal_probes(role, vocab)

    # ---- images ----------------------------------------------------------------------------
    @property
    def image_source(self) -> Attack:
        """The attack whose images this one uses: itself for image-side attacks, ``none``
        otherwise (so text attacks share the canonical images and their embeddings)."""
        return self if self.side == "image" else NONE

    def test_images(
        self,
        n_per_tuple: int,
        size: int = 64,
        seed: int = 0,
        tuples: Sequence[ORO] | None = None,
        split: str = "test",
        world: Any = None,
    ) -> ImageSet:
        """``n_per_tuple`` test images of each tuple (every valid tuple of the world's vocabulary
        when ``tuples`` is None; a manifest world may have fewer of a tuple: ``labels`` say which).

        ``split="val"`` draws them from the ``VAL`` base seed (a manifest's ``val`` rows)
        instead, for choosing hyperparameters without touching the test images. Cached: asking
        again is free."""
        from relsafe.data.world import relworld

        probes.check_probe_split(split)
        world = world or relworld()
        src = self.image_source
        chosen = probes.probe_tuples(tuples, world.vocabulary)
        out = _cached_images(src, n_per_tuple, size, seed, chosen, split, world)
        return out if src is self else replace(out, attack=self.name)

    def build_images(
        self,
        n_per_tuple: int,
        size: int,
        seed: int,
        tuples: tuple[ORO, ...],
        split: str,
        world: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (uncached, writable) test images and their tuple labels: canonical images of the
        training styles (a manifest world: its in-distribution domains)."""
        img, labels, _ = probes.render_probe_images(
            n_per_tuple, size, seed, tuples, split, world=world
        )
        return img, labels


@dataclass(frozen=True)
class TextAttack(Attack):
    """A text-side attack: canonical images, its own captions (subclasses give them)."""

    side: str | None = "text"

    def captions(
        self, tuples: Sequence[ORO], variant: int = 0, seed: int = 0, vocab: Any = None
    ) -> list[str]:
        raise NotImplementedError(f"text attack {self.name!r} must define captions()")

    def query_captions(
        self, t: ORO, seed: int = 0, variants: int = 1, vocab: Any = None
    ) -> list[str]:
        """The text->image queries of ``t`` for a text attack that does not give its own: its
        caption of ``t`` in each of ``variants`` caption sets (never the canonical captions, which
        it does not attack)."""
        if vocab is None:  # attacks written before vocabularies took no vocab argument
            return [self.captions([t], v, seed)[0] for v in range(variants)]
        return [self.captions([t], v, seed, vocab)[0] for v in range(variants)]


@dataclass(frozen=True)
class ParaphraseAttack(TextAttack):
    """Held-out templates and phrasings for the captions and the marginal probes."""

    name: str = "paraphrase"

    def captions(
        self, tuples: Sequence[ORO], variant: int = 0, seed: int = 0, vocab: Any = None
    ) -> list[str]:
        return probes.paraphrase_captions(tuples, variant, seed, vocab)

    def query_captions(
        self, t: ORO, seed: int = 0, variants: int = 1, vocab: Any = None
    ) -> list[str]:
        """Every held-out caption of ``t`` (held-out templates x phrasings; 48 for RelWorld)."""
        return probes.paraphrase_queries(t, vocab)

    def marginal_captions(
        self, role: str, variant: int = 0, seed: int = 0, vocab: Any = None
    ) -> tuple[list[str], list[str]]:
        return probes.paraphrase_marginals(role, variant, seed, vocab)


@dataclass(frozen=True)
class ContextAttack(TextAttack):
    """Canonical captions and marginal probes wrapped in held-out context wrappers."""

    name: str = "context"

    def captions(
        self, tuples: Sequence[ORO], variant: int = 0, seed: int = 0, vocab: Any = None
    ) -> list[str]:
        return probes.context_captions(tuples, variant, seed, vocab)

    def query_captions(
        self, t: ORO, seed: int = 0, variants: int = 1, vocab: Any = None
    ) -> list[str]:
        """Every evaluation caption of ``t`` in every held-out wrapper (18 x 6 = 108 for
        RelWorld; exhaustive, so no seed)."""
        return probes.context_queries(t, vocab)

    def marginal_captions(
        self, role: str, variant: int = 0, seed: int = 0, vocab: Any = None
    ) -> tuple[list[str], list[str]]:
        return probes.context_marginals(role, variant, seed, vocab)


@dataclass(frozen=True)
class ImageAttack(Attack):
    """An image-side attack: canonical captions; test images rendered in ``styles`` (image ``i``
    of a tuple in ``styles[i % len(styles)]``), then passed through :meth:`transform`.

    ``transform_fn(images, base_seed)`` is the simplest way to define one (see the module
    docstring); subclasses may override :meth:`transform` instead."""

    side: str | None = "image"
    styles: tuple[str, ...] = TRAIN_STYLES
    transform_fn: ImageTransform | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.side != "image":
            raise InputError(f"image attack {self.name!r} must have side 'image'")
        if not self.styles:
            raise InputError(f"image attack {self.name!r} needs at least one style")

    def transform(self, images: np.ndarray, seed: int) -> np.ndarray:
        """The rendered images, changed (identity unless ``transform_fn`` is given)."""
        if self.transform_fn is None:
            return images
        out = np.asarray(self.transform_fn(images, seed))
        if out.shape != images.shape or out.dtype != np.uint8:
            raise InputError(
                f"image attack {self.name!r}: transform gave {out.dtype} {out.shape}, "
                f"expected uint8 {images.shape}"
            )
        return out

    def build_images(
        self,
        n_per_tuple: int,
        size: int,
        seed: int,
        tuples: tuple[ORO, ...],
        split: str,
        world: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        img, labels, base = probes.render_probe_images(
            n_per_tuple, size, seed, tuples, split, self.styles, world=world
        )
        return self.transform(img, base), labels


@dataclass(frozen=True)
class CorruptionAttack(ImageAttack):
    """Canonical images with a corruption of :data:`~relsafe.data.probes.CORRUPTIONS`."""

    kind: str = "noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in CORRUPTIONS:
            raise InputError(f"unknown corruption {self.kind!r}; use one of {list(CORRUPTIONS)}")

    def transform(self, images: np.ndarray, seed: int) -> np.ndarray:
        return probes.corrupt(images, self.kind, seed)


@lru_cache(maxsize=16)
def _cached_images(
    attack: Attack,
    n: int,
    size: int,
    seed: int,
    tuples: tuple[ORO, ...],
    split: str,
    world: Any,
) -> ImageSet:
    if n <= 0:
        raise InputError(f"n_per_tuple must be positive, got {n}")
    img, labels = attack.build_images(n, size, seed, tuples, split, world)
    img.setflags(write=False)
    return ImageSet(img, np.asarray(labels, np.int64), tuples, attack.name)


# ---- families ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackFamily:
    """A parametrised attack family: ``fn(arg)`` builds the attack ``"<name>:<arg>"``.

    ``args`` lists the valid arguments (``None``: any string ``fn`` accepts); an argument outside
    it is an :class:`InputError` listing the valid ones, raised when the spec is parsed."""

    name: str
    fn: Callable[[str], Attack]
    side: str | None
    args: tuple[str, ...] | None = None
    description: str = ""

    def make(self, arg: str) -> Attack:
        """The attack ``"<name>:<arg>"``, with ``arg`` checked."""
        if self.args is not None and arg not in self.args:
            raise InputError(
                f"unknown argument {arg!r} for attack family {self.name!r}; "
                f"valid: {list(self.args)}"
            )
        attack = self.fn(arg)
        if not isinstance(attack, Attack):
            raise InputError(f"attack family {self.name!r} built {attack!r}, not an Attack")
        return attack


def ood_attack(style: str) -> ImageAttack:
    """``ood:<style>``: test images in one held-out style."""
    if style not in OOD_STYLES:
        raise InputError(f"unknown OOD style {style!r}; held-out styles: {list(OOD_STYLES)}")
    return ImageAttack(f"ood:{style}", styles=(style,))


def vocab_kwargs(vocab: Any) -> dict[str, Any]:
    """``{"vocab": vocab}`` for a vocabulary other than the built-in one, else ``{}``: the keyword
    arguments a suite passes to an attack's caption methods."""
    from relsafe.world.vocab import default_vocabulary

    return {} if vocab is None or vocab is default_vocabulary() else {"vocab": vocab}


def domain_attack(name: str) -> ImageAttack:
    """``domain:<name>``: the test images of one domain (a manifest world's test domain absent
    from its train split; on RelWorld, a style name)."""
    if not name.strip():
        raise InputError("domain:<name> needs a domain name")
    return ImageAttack(f"domain:{name}", styles=(f"domain:{name}",))


def corruption_attack(kind: str) -> CorruptionAttack:
    """``corruption:<kind>``: canonical test images with noise, blur or JPEG artefacts."""
    return CorruptionAttack(f"corruption:{kind}", kind=kind)


NONE = Attack("none")
PARAPHRASE = ParaphraseAttack()
CONTEXT = ContextAttack()
TEXT_ATTACKS: tuple[Attack, ...] = (PARAPHRASE, CONTEXT)

ATTACKS.register("none", NONE)
ATTACKS.register("paraphrase", PARAPHRASE)
ATTACKS.register("context", CONTEXT)
ATTACKS.register(
    "ood", AttackFamily("ood", ood_attack, "image", OOD_STYLES, "images in a held-out style")
)
ATTACKS.register(
    "domain",
    AttackFamily("domain", domain_attack, "image", None, "test images of one data domain"),
)
ATTACKS.register(
    "corruption",
    AttackFamily(
        "corruption", corruption_attack, "image", CORRUPTIONS, "noise, blur or JPEG artefacts"
    ),
)


def get_attack(spec: str | Attack) -> Attack:
    """Parse an attack spec (``"none"``, ``"paraphrase"``, ``"ood:sketch"``, ...) into an
    :class:`Attack`, once; an :class:`Attack` is returned as it is.

    The part before the first ``:`` names a registered family; an unknown family, a missing or
    unexpected argument, or an invalid argument is an :class:`InputError` that says which."""
    if isinstance(spec, Attack):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"an attack spec must be a non-empty string, got {spec!r}")
    family, sep, arg = spec.partition(":")
    entry = ATTACKS.get(family)
    if isinstance(entry, AttackFamily):
        if not sep or not arg:
            valid = f" (valid: {list(entry.args)})" if entry.args is not None else ""
            raise InputError(
                f"attack {spec!r}: family {family!r} needs an argument, '{family}:<arg>'{valid}"
            )
        return entry.make(arg)
    if isinstance(entry, Attack):
        if sep:
            raise InputError(f"attack {spec!r}: {family!r} takes no argument")
        return entry
    raise InputError(
        f"attack registry entry {family!r} is {type(entry).__name__}, "
        "expected an Attack or an AttackFamily"
    )


def get_attacks(specs: Sequence[str | Attack]) -> list[Attack]:
    """:func:`get_attack` of each spec, in order."""
    return [get_attack(s) for s in specs]


def image_attacks(
    ood_styles: Sequence[str] = OOD_STYLES, corruptions: Sequence[str] = CORRUPTIONS
) -> list[Attack]:
    """``ood:<style>`` for each style, then ``corruption:<kind>`` for each kind."""
    return [ood_attack(s) for s in ood_styles] + [corruption_attack(c) for c in corruptions]


def default_attacks(
    ood_styles: Sequence[str] = OOD_STYLES, corruptions: Sequence[str] = CORRUPTIONS
) -> list[Attack]:
    """The built-in attacks in report order: none, paraphrase, context, then image attacks."""
    return [NONE, *TEXT_ATTACKS, *image_attacks(ood_styles, corruptions)]
