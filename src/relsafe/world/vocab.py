"""Vocabularies: subjects, relations, objects, their phrasings, caption templates and contexts.

A vocabulary is data (``/work/shared/docs/DATA.md``, ``docs/your-data.md``): a YAML file declares
the words of a world (canonical names with train and held-out phrasings), which combinations exist
(a relation ``takes`` object kinds; optionally ``subject_relations`` limits which subjects take
which relations), train and held-out caption templates and context wrappers. RelWorld's
``vocab.yaml`` beside this module is the built-in ``relworld`` vocabulary, nothing more:
:func:`load_vocabulary` resolves a policy's ``vocabulary:`` entry to one of these.

An :class:`ORO` is one object-relation-object tuple, written ``subject|relation|object``
(e.g. ``child|drinking|wine``). Queries never enumerate the combinations: validity is a lookup,
:meth:`Vocabulary.count_valid` a product of counts, and :meth:`Vocabulary.sample_tuples` draws
without listing, so a vocabulary of 100 subjects x 50 relations x 2,000 objects costs what its
words cost.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from relsafe.errors import ConfigError, InputError

ROLES = ("subject", "relation", "object")
NAME_RE = re.compile(r"^[a-z0-9_]+$")
_TOP_KEYS = (
    "name",
    "subjects",
    "relations",
    "objects",
    "subject_relations",
    "templates",
    "contexts",
)
_SLOT_ALIASES = {"{s}": "{subject}", "{r}": "{relation}", "{o}": "{object}", "{c}": "{caption}"}


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


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """A validated vocabulary (build it with :meth:`from_yaml`, :meth:`from_dict` or
    :func:`load_vocabulary`). Equality and hashing are by identity; compare :attr:`sha256`."""

    name: str
    subjects: dict[str, Phrasings]
    relations: dict[str, Phrasings]
    objects: dict[str, Phrasings]
    object_kind: dict[str, str]
    takes: dict[str, tuple[str, ...]]  # relation -> object kinds it takes
    templates: dict[str, tuple[str, ...]]  # "train" (first = canonical), "heldout"
    contexts: dict[str, tuple[str, ...]]  # "train", "heldout"
    subject_relations: dict[str, tuple[str, ...]] = field(default_factory=dict)  # empty: all
    source: str = "<builtin>"
    sha256: str = ""

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>", sha256: str = "") -> Vocabulary:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a vocabulary must be a mapping of {list(_TOP_KEYS)}")
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            hint = difflib.get_close_matches(str(unknown[0]), _TOP_KEYS, n=1)
            raise ConfigError(
                f"{source}: unknown vocabulary key {unknown[0]!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else f"; expected {list(_TOP_KEYS)}")
            )
        name = data.get("name", Path(source).stem if not source.startswith("<") else "vocabulary")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{source}: `name` must be a non-empty string")
        subjects, _, _ = _section(data, "subjects", source, extra=())
        relations, _, takes = _section(data, "relations", source, extra=("takes",))
        objects, kinds, _ = _section(data, "objects", source, extra=("kind",))
        missing_kind = [o for o in objects if o not in kinds]
        if missing_kind:
            raise ConfigError(f"{source}: objects.{missing_kind[0]} needs a `kind` (e.g. tool)")
        known_kinds = set(kinds.values())
        for rel in relations:
            where = f"{source}: relations.{rel}.takes"
            if rel not in takes:
                raise ConfigError(f"{where} is missing: list the object kinds {rel!r} takes")
            for k in takes[rel]:
                if k not in known_kinds:
                    hint = difflib.get_close_matches(k, sorted(known_kinds), n=1)
                    raise ConfigError(
                        f"{where}: no object has kind {k!r}"
                        + (
                            f"; did you mean {hint[0]!r}?"
                            if hint
                            else f"; kinds: {sorted(known_kinds)}"
                        )
                    )
        sub_rel: dict[str, tuple[str, ...]] = {}
        raw_sr = data.get("subject_relations") or {}
        if not isinstance(raw_sr, dict):
            raise ConfigError(f"{source}: `subject_relations` must map subjects to relation lists")
        for s, rels in raw_sr.items():
            where = f"{source}: subject_relations.{s}"
            if s not in subjects:
                raise ConfigError(f"{where}: unknown subject {s!r}{_did_you_mean(s, subjects)}")
            if not isinstance(rels, list) or not all(isinstance(r, str) for r in rels):
                raise ConfigError(f"{where} must be a list of relation names")
            for r in rels:
                if r not in relations:
                    raise ConfigError(
                        f"{where}: unknown relation {r!r}{_did_you_mean(r, relations)}"
                    )
            sub_rel[s] = tuple(rels)
        templates = _text_splits(data, "templates", source, ("{subject}", "{relation}", "{object}"))
        if len(templates["train"]) < 2:
            raise ConfigError(
                f"{source}: templates.train needs at least 2 templates: the first is the canonical "
                "one, reserved for evaluation; edits train on the others"
            )
        contexts = _text_splits(data, "contexts", source, ("{caption}",))
        _check_disjoint(templates, f"{source}: templates")
        _check_disjoint(contexts, f"{source}: contexts")
        return cls(
            name.strip(),
            subjects,
            relations,
            objects,
            kinds,
            takes,
            templates,
            contexts,
            sub_rel,
            source,
            sha256,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> Vocabulary:
        from relsafe.utils_io import load_yaml_text, read_text_file

        path = Path(path)
        try:
            text = read_text_file(path, "vocabulary file")
            data = load_yaml_text(text, str(path))
        except ConfigError:
            raise
        except InputError as e:  # missing, unreadable, not UTF-8, an alias bomb, too deep
            raise ConfigError(str(e)) from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f", line {mark.line + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ConfigError(f"{path}{at}: malformed YAML: {what}") from e
        return cls.from_dict(data, str(path), hashlib.sha256(text.encode("utf-8")).hexdigest())

    # ---- derived tables ------------------------------------------------------------------
    @cached_property
    def compatibility(self) -> dict[str, tuple[str, ...]]:
        """Relation -> the objects it takes, in vocabulary order."""
        return {
            r: tuple(o for o in self.objects if self.object_kind[o] in set(ks))
            for r, ks in self.takes.items()
        }

    def relations_of(self, subject: str) -> tuple[str, ...]:
        """The relations ``subject`` may take (all of them unless ``subject_relations`` says)."""
        return self.subject_relations.get(subject, tuple(self.relations))

    def describe(self) -> dict[str, Any]:
        """Name, source, SHA-256 and sizes (for provenance and reports)."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "subjects": len(self.subjects),
            "relations": len(self.relations),
            "objects": len(self.objects),
            "valid_tuples": self.count_valid(),
        }

    # ---- queries -------------------------------------------------------------------------
    def words(self, role: str) -> dict[str, Phrasings]:
        if role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {role!r}")
        return {"subject": self.subjects, "relation": self.relations, "object": self.objects}[role]

    def is_valid(self, t: ORO) -> bool:
        s, r, o = t
        return (
            s in self.subjects
            and r in self.relations
            and o in self.objects
            and self.object_kind[o] in self.takes[r]
            and (s not in self.subject_relations or r in self.subject_relations[s])
        )

    def count_valid(self) -> int:
        """How many tuples exist, without listing them."""
        per_rel = {r: len(objs) for r, objs in self.compatibility.items()}
        return sum(per_rel[r] for s in self.subjects for r in self.relations_of(s))

    def iter_valid(self) -> Iterator[ORO]:
        """Every tuple that exists, in a fixed order (subject, relation, object), lazily."""
        for s in self.subjects:
            for r in self.relations_of(s):
                for o in self.compatibility[r]:
                    yield ORO(s, r, o)

    def valid_tuples(self) -> list[ORO]:
        """Every tuple that exists, in a fixed order; refused past :data:`MAX_ENUMERATE` (use
        :meth:`iter_valid` or :meth:`sample_tuples` for large vocabularies)."""
        n = self.count_valid()
        if n > MAX_ENUMERATE:
            raise InputError(
                f"vocabulary {self.name!r} has {n:,} tuples, too many to list (limit "
                f"{MAX_ENUMERATE:,}); this step needs a sample (sample_tuples) instead"
            )
        return list(self.iter_valid())

    def sample_tuples(
        self, n: int, seed: int, exclude: set[ORO] | frozenset[ORO] = frozenset()
    ) -> list[ORO]:
        """``n`` distinct valid tuples not in ``exclude``, a deterministic function of the
        vocabulary and ``seed``, drawn without listing the combinations (fewer when fewer exist).

        Small vocabularies (under :data:`MAX_ENUMERATE` tuples) are sampled from the full list;
        larger ones by rejection over (subject, relation, object) draws weighted so every valid
        tuple is equally likely."""
        import random

        rng = random.Random(f"{self.sha256 or self.name}:{seed}")
        total = self.count_valid()
        if total <= MAX_ENUMERATE:
            pool = [t for t in self.iter_valid() if t not in exclude]
            return pool if len(pool) <= n else rng.sample(pool, n)
        subjects = list(self.subjects)
        out: dict[ORO, None] = {}
        tries = 0
        while len(out) < n and tries < 50 * n + 1000:
            tries += 1
            s = subjects[rng.randrange(len(subjects))]
            rels = self.relations_of(s)
            # weight a relation by how many objects it takes: every tuple equally likely
            r = rng.choices(rels, weights=[len(self.compatibility[x]) for x in rels])[0]
            objs = self.compatibility[r]
            if not objs:
                continue
            t = ORO(s, r, objs[rng.randrange(len(objs))])
            if t not in exclude:
                out[t] = None
        return list(out)

    def suggest(self, role: str, word: str) -> str | None:
        """The nearest valid word for ``role`` (for error messages), or None."""
        hits = difflib.get_close_matches(word, list(self.words(role)), n=1, cutoff=0.5)
        return hits[0] if hits else None

    def check_word(self, role: str, word: str, where: str = "") -> None:
        if word not in self.words(role):
            hint = self.suggest(role, word)
            prefix = f"{where}: " if where else ""
            msg = f"{prefix}unknown {role} {word!r}"
            if hint:
                msg += f"; did you mean {hint!r}?"
            elif len(self.words(role)) <= 30:
                msg += f"; valid: {sorted(self.words(role))}"
            else:
                msg += f" (vocabulary {self.name!r} has {len(self.words(role))} {role}s)"
            raise InputError(msg)

    def tuple(self, t: ORO | str | tuple[str, str, str], where: str = "") -> ORO:
        """Validate a tuple (words known, the combination exists) and return it as an ORO."""
        if isinstance(t, str):
            t = ORO.parse(t)
        t = ORO(*t)
        for role, word in zip(ROLES, t, strict=True):
            self.check_word(role, word, where)
        prefix = f"{where}: " if where else ""
        if self.object_kind[t.object] not in self.takes[t.relation]:
            raise InputError(
                f"{prefix}{t.id} is not in the world of vocabulary {self.name!r}: relation "
                f"{t.relation!r} takes {list(self.takes[t.relation])} objects, "
                f"{t.object!r} is a {self.object_kind[t.object]}"
            )
        if (
            t.subject in self.subject_relations
            and t.relation not in self.subject_relations[t.subject]
        ):
            raise InputError(
                f"{prefix}{t.id} is not in the world of vocabulary {self.name!r}: subject "
                f"{t.subject!r} takes only {list(self.subject_relations[t.subject])}"
            )
        return t


MAX_ENUMERATE = 200_000
"""Above this many tuples, :meth:`Vocabulary.valid_tuples` refuses to list them."""


def _did_you_mean(word: str, choices: Any) -> str:
    hit = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {hit[0]!r}?" if hit else ""


def _section(
    data: dict, name: str, source: str, extra: tuple[str, ...]
) -> tuple[dict[str, Phrasings], dict[str, str], dict[str, tuple[str, ...]]]:
    raw = data.get(name)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: `{name}` must be a non-empty mapping of name -> phrasings")
    out: dict[str, Phrasings] = {}
    kinds: dict[str, str] = {}
    takes: dict[str, tuple[str, ...]] = {}
    for word, entry in raw.items():
        where = f"{source}: {name}.{word}"
        if not isinstance(word, str) or not NAME_RE.match(word):
            raise ConfigError(f"{where}: canonical names are [a-z0-9_]+, got {word!r}")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with `train` and `heldout` lists")
        allowed = {"train", "heldout", *extra}
        bad = sorted(set(entry) - allowed)
        if bad:
            raise ConfigError(f"{where}: unknown key {bad[0]!r}; expected {sorted(allowed)}")
        train, held = entry.get("train"), entry.get("heldout")
        for what, lst in (("train", train), ("heldout", held)):
            if (
                not isinstance(lst, list)
                or not lst
                or not all(isinstance(x, str) and x.strip() for x in lst)
            ):
                raise ConfigError(f"{where}.{what} must be a non-empty list of phrasings")
        seen = {tokenizer_form(x): x for x in train}
        overlap = sorted(x for x in held if tokenizer_form(x) in seen)
        if overlap:
            raise ConfigError(
                f"{where}: phrasings {overlap} are both train and held-out (as a tokenizer reads "
                "them: case, Unicode forms and spacing do not count)"
            )
        out[word] = Phrasings(tuple(train), tuple(held))
        if "kind" in entry:
            if not isinstance(entry["kind"], str) or not NAME_RE.match(entry["kind"]):
                raise ConfigError(f"{where}.kind must be a name ([a-z0-9_]+)")
            kinds[word] = entry["kind"]
        if "takes" in entry:
            t = entry["takes"]
            if not isinstance(t, list) or not t or not all(isinstance(k, str) for k in t):
                raise ConfigError(f"{where}.takes must be a non-empty list of object kinds")
            takes[word] = tuple(t)
    return out, kinds, takes


def _text_splits(
    data: dict, name: str, source: str, slots: tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    raw = data.get(name)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `{name}` must be a mapping with `train` and `heldout` lists")
    bad = sorted(set(raw) - {"train", "heldout"})
    if bad:
        raise ConfigError(f"{source}: {name}.{bad[0]} is not a split; expected train, heldout")
    out: dict[str, tuple[str, ...]] = {}
    for split in ("train", "heldout"):
        lst = raw.get(split)
        if not isinstance(lst, list) or not lst or not all(isinstance(x, str) for x in lst):
            raise ConfigError(f"{source}: {name}.{split} must be a non-empty list of strings")
        norm = []
        for i, text in enumerate(lst):
            for short, long in _SLOT_ALIASES.items():
                text = text.replace(short, long)
            for slot in slots:
                if text.count(slot) != 1:
                    raise ConfigError(
                        f"{source}: {name}.{split}[{i}] {lst[i]!r} must contain {slot} "
                        f"(or its short form) exactly once"
                    )
            stray = set(re.findall(r"\{[^}]*\}", text)) - set(slots)
            if stray:
                raise ConfigError(
                    f"{source}: {name}.{split}[{i}] {lst[i]!r} has unknown slot {sorted(stray)[0]}"
                )
            norm.append(text)
        out[split] = tuple(norm)
    return out


def tokenizer_form(text: str) -> str:
    """``text`` as the text towers' tokenizers read it: Unicode NFKC, case folded, runs of
    whitespace as one space, trimmed (MiniLM's and CLIP's tokenizers are uncased and split on
    whitespace), so two phrasings that differ only there are the same string to a model."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _check_disjoint(splits: dict[str, tuple[str, ...]], where: str) -> None:
    train = {tokenizer_form(x) for x in splits["train"]}
    both = sorted(x for x in splits["heldout"] if tokenizer_form(x) in train)
    if both:
        raise ConfigError(
            f"{where}: {both[0]!r} is both train and held-out (as a tokenizer reads it: case, "
            "Unicode forms and spacing do not count)"
        )


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """The bundled RelWorld vocabulary (``relworld``)."""
    from relsafe.utils_io import load_yaml_text

    text = resources.files("relsafe.world").joinpath("vocab.yaml").read_text(encoding="utf-8")
    source = "relsafe/world/vocab.yaml"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Vocabulary.from_dict(load_yaml_text(text, source), source, digest)


BUILTIN_VOCABULARIES = ("relworld",)
"""Vocabulary names that need no file: ``relworld`` is the bundled RelWorld vocabulary."""


def load_vocabulary(
    spec: str | Path | Vocabulary | None = None, base: Path | None = None
) -> Vocabulary:
    """A vocabulary from a built-in name (``relworld``, the default), a YAML path (relative paths
    resolve against ``base`` when given, e.g. the policy file's folder, and only there: a file of
    the same name in the working directory never stands in for it), or itself."""
    if isinstance(spec, Vocabulary):
        return spec
    if spec is None or str(spec) == "relworld":
        return default_vocabulary()
    path = Path(spec)
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.suffix and not path.exists():
        raise ConfigError(
            f"unknown vocabulary {str(spec)!r}: give a built-in name {list(BUILTIN_VOCABULARIES)} "
            "or the path of a vocabulary YAML file"
        )
    return _load_file(str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0)


@lru_cache(maxsize=16)
def _load_file(path: str, _mtime: int) -> Vocabulary:
    return Vocabulary.from_yaml(path)
