"""RelWorld's vocabulary: subjects, relations, objects, their phrasings, and which tuples exist.

The words live in a data file (``vocab.yaml`` beside this module); this module loads and validates
it and answers questions about it. An :class:`ORO` is one object-relation-object tuple, written as
``subject|relation|object`` (e.g. ``child|drinking|wine``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import yaml

from relsafe.errors import ConfigError, InputError

ROLES = ("subject", "relation", "object")


class ORO(NamedTuple):
    """An object-relation-object tuple of canonical names."""

    subject: str
    relation: str
    object: str

    @property
    def id(self) -> str:
        return f"{self.subject}|{self.relation}|{self.object}"

    @classmethod
    def parse(cls, text: str) -> ORO:
        """Parse ``"child|drinking|wine"`` (no vocabulary check; see :meth:`Vocabulary.tuple`)."""
        parts = [p.strip() for p in text.split("|")]
        if len(parts) != 3 or not all(parts):
            raise InputError(f"a tuple is written subject|relation|object, got {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class Phrasings:
    """The train and held-out phrasings of one word; ``train[0]`` is canonical."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]

    @property
    def canonical(self) -> str:
        return self.train[0]


@dataclass(frozen=True)
class Vocabulary:
    subjects: dict[str, Phrasings]
    relations: dict[str, Phrasings]
    objects: dict[str, Phrasings]
    object_kind: dict[str, str]
    compatibility: dict[str, tuple[str, ...]]
    source: str = "<builtin>"

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> Vocabulary:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: vocabulary must be a mapping")
        known = {"subjects", "relations", "objects", "compatibility"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"{source}: unknown vocabulary keys {sorted(unknown)}; expected {sorted(known)}"
            )

        def section(name: str) -> tuple[dict[str, Phrasings], dict[str, str]]:
            raw = data.get(name)
            if not isinstance(raw, dict) or not raw:
                raise ConfigError(f"{source}: `{name}` must be a non-empty mapping")
            out, kinds = {}, {}
            for word, entry in raw.items():
                where = f"{source}: {name}.{word}"
                if not isinstance(entry, dict):
                    raise ConfigError(f"{where} must be a mapping with `train` and `heldout` lists")
                extra = set(entry) - {"train", "heldout", "kind"}
                if extra:
                    raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
                train, held = entry.get("train"), entry.get("heldout")
                if not train or not held or not all(isinstance(x, str) for x in [*train, *held]):
                    raise ConfigError(f"{where} needs non-empty string lists `train` and `heldout`")
                overlap = set(train) & set(held)
                if overlap:
                    raise ConfigError(
                        f"{where}: phrasings {sorted(overlap)} are both train and held-out"
                    )
                out[word] = Phrasings(tuple(train), tuple(held))
                if "kind" in entry:
                    kinds[word] = str(entry["kind"])
            return out, kinds

        subjects, _ = section("subjects")
        relations, _ = section("relations")
        objects, kinds = section("objects")
        comp_raw = data.get("compatibility")
        if not isinstance(comp_raw, dict):
            raise ConfigError(f"{source}: `compatibility` must map relations to object lists")
        comp: dict[str, tuple[str, ...]] = {}
        for rel, objs in comp_raw.items():
            if rel not in relations:
                raise ConfigError(f"{source}: compatibility names unknown relation {rel!r}")
            for o in objs:
                if o not in objects:
                    raise ConfigError(f"{source}: compatibility.{rel} names unknown object {o!r}")
            comp[rel] = tuple(objs)
        missing = set(relations) - set(comp)
        if missing:
            raise ConfigError(f"{source}: relations {sorted(missing)} have no compatibility entry")
        return cls(subjects, relations, objects, kinds, comp, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Vocabulary:
        from relsafe.utils_io import load_yaml_text, read_text_file

        path = Path(path)
        try:
            data = load_yaml_text(read_text_file(path, "vocabulary file"), str(path))
        except ConfigError:
            raise
        except InputError as e:  # missing, unreadable, not UTF-8, an alias bomb, too deep
            raise ConfigError(str(e)) from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f", line {mark.line + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ConfigError(f"{path}{at}: malformed YAML: {what}") from e
        return cls.from_dict(data, str(path))

    # ---- queries -------------------------------------------------------------------------
    def words(self, role: str) -> dict[str, Phrasings]:
        if role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {role!r}")
        return {"subject": self.subjects, "relation": self.relations, "object": self.objects}[role]

    def is_valid(self, t: ORO) -> bool:
        return (
            t.subject in self.subjects
            and t.relation in self.relations
            and t.object in self.compatibility.get(t.relation, ())
        )

    def valid_tuples(self) -> list[ORO]:
        """Every tuple the world can render, in a fixed order (subject, relation, object)."""
        return [
            ORO(s, r, o)
            for s in self.subjects
            for r in self.relations
            for o in self.compatibility[r]
        ]

    def suggest(self, role: str, word: str) -> str | None:
        """The nearest valid word for ``role`` (for error messages), or None."""
        hits = difflib.get_close_matches(word, list(self.words(role)), n=1, cutoff=0.5)
        return hits[0] if hits else None

    def check_word(self, role: str, word: str, where: str = "") -> None:
        if word not in self.words(role):
            hint = self.suggest(role, word)
            prefix = f"{where}: " if where else ""
            msg = f"{prefix}unknown {role} {word!r}"
            msg += f"; did you mean {hint!r}?" if hint else f"; valid: {sorted(self.words(role))}"
            raise InputError(msg)

    def tuple(self, t: ORO | str | tuple[str, str, str], where: str = "") -> ORO:
        """Validate a tuple (words known, relation-object compatible) and return it as an ORO."""
        if isinstance(t, str):
            t = ORO.parse(t)
        t = ORO(*t)
        for role, word in zip(ROLES, t, strict=True):
            self.check_word(role, word, where)
        if t.object not in self.compatibility[t.relation]:
            prefix = f"{where}: " if where else ""
            raise InputError(
                f"{prefix}{t.id} is not in the world: relation {t.relation!r} takes "
                f"{list(self.compatibility[t.relation])}"
            )
        return t


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """The bundled RelWorld vocabulary."""
    from relsafe.utils_io import load_yaml_text

    text = resources.files("relsafe.world").joinpath("vocab.yaml").read_text(encoding="utf-8")
    source = "relsafe/world/vocab.yaml"
    return Vocabulary.from_dict(load_yaml_text(text, source), source)


BUILTIN_VOCABULARIES = ("relworld",)
"""Vocabulary names that need no file: ``relworld`` is the bundled RelWorld vocabulary."""


def load_vocabulary(spec: str | Path | Vocabulary | None = None) -> Vocabulary:
    """A vocabulary from a built-in name (``relworld``, the default), a YAML path, or itself."""
    if isinstance(spec, Vocabulary):
        return spec
    if spec is None or str(spec) == "relworld":
        return default_vocabulary()
    path = Path(spec)
    if not path.suffix and not path.exists():
        raise ConfigError(
            f"unknown vocabulary {str(spec)!r}: give a built-in name {list(BUILTIN_VOCABULARIES)} "
            "or the path of a vocabulary YAML file"
        )
    return Vocabulary.from_yaml(path)
