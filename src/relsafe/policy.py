"""Safety policies: which object-relation-object tuples are unsafe, and what follows from that.

Longer than 500 lines because loading (with line-numbered errors), validation and the derivations
(marginals, neighbours, counterparts) share one data model; they are one concern, policies.

A policy is a YAML file listing unsafe tuples of a vocabulary (see ``docs/policies.md``
and ``policies/default.yaml``)::

    name: default
    description: what this policy forbids
    vocabulary: relworld                          # the default; or a vocabulary YAML path
    unsafe:
      - child|drinking|wine                       # string form
      - [child, drinking, beer]                   # list form
      - {tuple: child|holding|knife, counterpart: child|holding|toy}   # explicit counterpart
    counterpart_strategy: keep_subject            # or keep_object; the default is keep_subject

For every unsafe tuple relsafe derives (:meth:`Policy.derive`, returning a :class:`TupleDerivation`):

- its **marginals**: the subject alone and the object alone, as ``(role, word)`` pairs;
- its **safe neighbours**, of three kinds (each excluding every tuple the policy lists as unsafe):
  ``other_subject`` (same relation and object, another subject: adult|drinking|wine),
  ``other_object`` (same subject and relation, another object the relation takes:
  child|drinking|juice) and ``other_relation`` (same subject and object, another relation that takes
  the object: child|next_to|wine);
- its **safe counterpart**, the tuple an edit redirects it to: the explicit one when the file gives
  one, otherwise chosen by the policy's ``counterpart_strategy`` (see :func:`choose_counterpart`).

Policy-level unions (:meth:`Policy.all_neighbours`, :meth:`Policy.all_marginals`,
:meth:`Policy.unrelated`, :meth:`Policy.pairs`) feed the methods' retain sets, the quadruplet
generator and the relational metrics.

Everything downstream (edit sets, probes, suites) takes the policy's :attr:`Policy.vocabulary`,
never a global one. Derivations never list the vocabulary's combinations: neighbours are lookups
per word, and :meth:`Policy.unrelated` samples (:data:`UNRELATED_SAMPLE` tuples, deterministic) once
a vocabulary has more than :data:`UNRELATED_ENUMERATE` tuples.

Every problem in a policy file is a :class:`~relsafe.errors.ConfigError` that names the file and the
line (``policies/x.yaml, line 7 (unsafe[2]): unknown object 'wnie'; did you mean 'wine'?``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import yaml

from relsafe.errors import ConfigError, InputError
from relsafe.world.splits import is_unseen_tuple
from relsafe.world.vocab import ORO, ROLES, Vocabulary, default_vocabulary, load_vocabulary

__all__ = [
    "NEIGHBOUR_KINDS",
    "STRATEGIES",
    "Neighbour",
    "Policy",
    "TupleDerivation",
    "choose_counterpart",
    "describe",
    "find_policy",
    "load_policy",
    "neighbours",
]

NEIGHBOUR_KINDS = ("other_subject", "other_object", "other_relation")
"""The three kinds of safe neighbour, in the order derivations list them."""

STRATEGIES = ("keep_subject", "keep_object")
"""How a counterpart is chosen when the policy does not give one (see :func:`choose_counterpart`)."""

DEFAULT_STRATEGY = "keep_subject"

UNRELATED_POOLS = ("all", "retain", "unseen")
"""Which unrelated tuples :meth:`Policy.unrelated` returns."""

_TOP_KEYS = ("name", "description", "vocabulary", "unsafe", "counterpart_strategy")

UNRELATED_ENUMERATE = 20_000
"""Up to this many tuples in the vocabulary, :meth:`Policy.unrelated` lists every unrelated tuple."""

UNRELATED_SAMPLE = 1_000
"""Past :data:`UNRELATED_ENUMERATE`, :meth:`Policy.unrelated` is a fixed sample of this many."""
_ENTRY_KEYS = ("tuple", "counterpart")

# Which role each neighbour kind changes.
_CHANGES = {"other_subject": "subject", "other_object": "object", "other_relation": "relation"}

# Lines of a YAML document, keyed by the path of a value: ("unsafe", 2, "counterpart").
# Mapping members map to the line of their key, sequence items to the line of the item.
_Lines = Mapping[tuple[Any, ...], int]


class Neighbour(NamedTuple):
    """A safe neighbour of an unsafe tuple: the tuple, which kind of neighbour it is, and of what."""

    oro: ORO
    kind: str
    of: ORO

    @property
    def id(self) -> str:
        return self.oro.id


@dataclass(frozen=True)
class TupleDerivation:
    """Everything a policy derives for one unsafe tuple.

    ``marginals`` are ``(("subject", s), ("object", o))``. The three neighbour fields hold ORO
    tuples in vocabulary order, never a tuple the policy lists as unsafe. ``counterpart_source`` is
    ``"explicit"`` or the strategy that chose the counterpart; ``counterpart_changes`` names the
    roles in which the counterpart differs from the tuple (one role unless given explicitly).
    """

    tuple: ORO
    marginals: tuple[tuple[str, str], ...]
    other_subject: tuple[ORO, ...]
    other_object: tuple[ORO, ...]
    other_relation: tuple[ORO, ...]
    counterpart: ORO
    counterpart_source: str

    @property
    def id(self) -> str:
        return self.tuple.id

    @property
    def neighbours(self) -> tuple[Neighbour, ...]:
        """All neighbours, each recording its kind: other_subject, then other_object, then other_relation."""
        return tuple(
            Neighbour(n, kind, self.tuple) for kind in NEIGHBOUR_KINDS for n in self.by_kind(kind)
        )

    def by_kind(self, kind: str) -> tuple[ORO, ...]:
        """The neighbours of one kind (one of :data:`NEIGHBOUR_KINDS`)."""
        if kind not in NEIGHBOUR_KINDS:
            raise InputError(f"neighbour kind must be one of {NEIGHBOUR_KINDS}, got {kind!r}")
        return getattr(self, kind)

    @property
    def counterpart_changes(self) -> tuple[str, ...]:
        """The roles (subject, relation, object) in which the counterpart differs from the tuple."""
        return tuple(
            r for r, a, b in zip(ROLES, self.tuple, self.counterpart, strict=True) if a != b
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of this derivation (ids as strings)."""
        return {
            "tuple": self.tuple.id,
            "counterpart": self.counterpart.id,
            "counterpart_source": self.counterpart_source,
            "counterpart_changes": list(self.counterpart_changes),
            "marginals": [list(m) for m in self.marginals],
            "neighbours": {k: [t.id for t in self.by_kind(k)] for k in NEIGHBOUR_KINDS},
        }


# ---- derivation rules (pure functions of a vocabulary and an unsafe set) -------------------------


def neighbours(t: ORO, vocab: Vocabulary, unsafe: Iterable[ORO] = ()) -> dict[str, tuple[ORO, ...]]:
    """The safe neighbours of ``t``, by kind, in vocabulary order, excluding ``unsafe`` tuples.

    - ``other_subject``: every other subject with the same relation and object;
    - ``other_object``: every other object the relation takes, with the same subject and relation;
    - ``other_relation``: every other relation that takes the object, same subject and object.
    """
    banned = set(unsafe)
    s, r, o = t
    cands = {
        "other_subject": [ORO(s2, r, o) for s2 in vocab.subjects if s2 != s],
        "other_object": [ORO(s, r, o2) for o2 in vocab.objects if o2 != o],
        "other_relation": [ORO(s, r2, o) for r2 in vocab.relations if r2 != r],
    }
    return {
        kind: tuple(n for n in cands[kind] if vocab.is_valid(n) and n not in banned)
        for kind in NEIGHBOUR_KINDS
    }


def choose_counterpart(
    t: ORO, vocab: Vocabulary, unsafe: Iterable[ORO], strategy: str = DEFAULT_STRATEGY
) -> ORO | None:
    """The safe counterpart of ``t`` under ``strategy``, or None when the strategy finds none.

    Both strategies pick the first safe neighbour in a fixed preference order, so the choice is
    deterministic and depends only on the vocabulary and the unsafe set:

    - ``keep_subject`` (default) keeps the subject. First an ``other_object`` neighbour whose object
      has the same ``kind`` in the vocabulary as the unsafe object (drink -> drink, in vocabulary
      order: child|drinking|wine -> child|drinking|juice when beer is unsafe too), then any other
      ``other_object`` neighbour (vocabulary order), then an ``other_relation`` neighbour
      (vocabulary order of relations: child|smoking|cigarette -> child|holding|cigarette).
    - ``keep_object`` keeps the object: first an ``other_subject`` neighbour (vocabulary order of
      subjects: dog|eating|chocolate -> child|eating|chocolate), then an ``other_relation`` one.

    Neither strategy ever falls back to a neighbour that changes the role it promises to keep.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"counterpart strategy must be one of {STRATEGIES}, got {strategy!r}")
    nb = neighbours(t, vocab, unsafe)
    if strategy == "keep_subject":
        kind = vocab.object_kind.get(t.object)
        same_kind = [
            n for n in nb["other_object"] if kind and vocab.object_kind.get(n.object) == kind
        ]
        order = [*same_kind, *nb["other_object"], *nb["other_relation"]]
    else:
        order = [*nb["other_subject"], *nb["other_relation"]]
    return order[0] if order else None


# ---- the policy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """A validated safety policy. Build one with :func:`load_policy` or :meth:`Policy.from_dict`.

    ``unsafe`` keeps the file's order. ``counterparts`` maps every unsafe tuple to its resolved safe
    counterpart; ``explicit`` holds the tuples whose counterpart the file gave. ``sha256`` is the
    digest of the source text (of the canonical JSON of the mapping for :meth:`from_dict`).
    ``lines`` maps each unsafe tuple to its line in the source file, when known.
    """

    name: str
    unsafe: tuple[ORO, ...]
    vocabulary: Vocabulary = field(repr=False, compare=False)
    counterparts: Mapping[ORO, ORO]
    explicit: frozenset[ORO] = frozenset()
    counterpart_strategy: str = DEFAULT_STRATEGY
    description: str = ""
    source: str = "<dict>"
    sha256: str = ""
    lines: Mapping[ORO, int] = field(default_factory=dict, repr=False, compare=False)
    vocabulary_spec: str = "relworld"  # as the file wrote it (a built-in name or a path)
    world: Any = field(default=None, repr=False, compare=False)  # see bind_world

    def bind_world(self, world: Any) -> Policy:
        """This policy with its material coming from ``world`` (a
        :class:`relsafe.data.world.World` of the same vocabulary): edit sets, probes and suites
        built from the returned policy use the world's images (``relsafe.data.world.world_of``)."""
        from dataclasses import replace

        if world is not None and getattr(world, "vocabulary", None) is not self.vocabulary:
            if getattr(world.vocabulary, "sha256", None) != self.vocabulary.sha256:
                raise ConfigError(
                    f"policy {self.name!r} uses vocabulary {self.vocabulary.name!r}; the world "
                    f"uses {world.vocabulary.name!r}"
                )
        return replace(self, world=world)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(
        cls, data: Any, source: str = "<dict>", vocab: Vocabulary | None = None
    ) -> Policy:
        """Validate a policy given as a mapping (the YAML document's content).

        Errors name ``source`` and the entry (``unsafe[2]``); :func:`load_policy` adds line numbers.
        """
        try:
            canon = json.dumps(data, sort_keys=True, default=str)
        except (TypeError, ValueError):  # keys of mixed types, a cycle: _build names the fault
            canon = repr(data)
        digest = hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()
        return _build(data, source, vocab, {}, digest)

    # ---- lookups -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.unsafe)

    def __contains__(self, t: object) -> bool:
        return self.is_unsafe(t)  # type: ignore[arg-type]

    def is_unsafe(self, t: ORO | str | tuple[str, str, str]) -> bool:
        """Whether ``t`` is one of the policy's unsafe tuples (``t`` may be an id string)."""
        try:
            return _as_oro(t) in self._unsafe_set
        except InputError:
            return False

    @property
    def unsafe_ids(self) -> tuple[str, ...]:
        """The unsafe tuples as ids (``child|drinking|wine``), in file order."""
        return tuple(t.id for t in self.unsafe)

    @cached_property
    def _unsafe_set(self) -> frozenset[ORO]:
        return frozenset(self.unsafe)

    # ---- derivations -------------------------------------------------------------------------
    @cached_property
    def derivations(self) -> tuple[TupleDerivation, ...]:
        """One :class:`TupleDerivation` per unsafe tuple, in file order."""
        out = []
        for t in self.unsafe:
            nb = neighbours(t, self.vocabulary, self.unsafe)
            out.append(
                TupleDerivation(
                    tuple=t,
                    marginals=(("subject", t.subject), ("object", t.object)),
                    other_subject=nb["other_subject"],
                    other_object=nb["other_object"],
                    other_relation=nb["other_relation"],
                    counterpart=self.counterparts[t],
                    counterpart_source="explicit"
                    if t in self.explicit
                    else self.counterpart_strategy,
                )
            )
        return tuple(out)

    def derive(self, t: ORO | str | tuple[str, str, str]) -> TupleDerivation:
        """The derivation of one unsafe tuple of this policy (an ORO or an id string)."""
        oro = _as_oro(t)
        for d in self.derivations:
            if d.tuple == oro:
                return d
        raise InputError(
            f"{oro.id} is not an unsafe tuple of policy {self.name!r}; it lists {list(self.unsafe_ids)}"
        )

    def counterpart(self, t: ORO | str | tuple[str, str, str]) -> ORO:
        """The safe counterpart of one unsafe tuple."""
        return self.derive(t).counterpart

    def all_neighbours(self) -> list[ORO]:
        """Every safe neighbour of every unsafe tuple, deduplicated, in first-seen order."""
        return list(self._neighbour_sources)

    def neighbour_sources(self) -> dict[ORO, list[Neighbour]]:
        """Each safe neighbour mapped to the (kind, unsafe tuple) records that make it one.

        A tuple may neighbour several unsafe tuples in different ways: child|holding|wine is an
        ``other_relation`` neighbour of child|drinking|wine and an ``other_object`` one of
        child|holding|knife.
        """
        return {t: list(ns) for t, ns in self._neighbour_sources.items()}

    @cached_property
    def _neighbour_sources(self) -> dict[ORO, list[Neighbour]]:
        out: dict[ORO, list[Neighbour]] = {}
        for d in self.derivations:
            for n in d.neighbours:
                out.setdefault(n.oro, []).append(n)
        return out

    def all_marginals(self) -> list[tuple[str, str]]:
        """Every ``(role, word)`` marginal of every unsafe tuple, deduplicated, first-seen order."""
        return list(dict.fromkeys(m for d in self.derivations for m in d.marginals))

    def unrelated(self, pool: str = "all") -> list[ORO]:
        """Valid world tuples that are neither unsafe nor a neighbour of an unsafe tuple (vocab order).

        ``pool``: ``"all"``; ``"retain"``, the ones a method may put in its retain set; or
        ``"unseen"``, the evaluation-only ones no method trains on
        (:func:`relsafe.world.splits.is_unseen_tuple`, about a third).
        """
        if pool not in UNRELATED_POOLS:
            raise InputError(f"pool must be one of {list(UNRELATED_POOLS)}, got {pool!r}")
        out = self._unrelated_all
        if pool == "all":
            return out
        return [t for t in out if is_unseen_tuple(t.id) == (pool == "unseen")]

    @cached_property
    def _unrelated_all(self) -> list[ORO]:
        near = self._unsafe_set | set(self._neighbour_sources)
        vocab = self.vocabulary
        if vocab.count_valid() <= UNRELATED_ENUMERATE:
            return [t for t in vocab.iter_valid() if t not in near]
        picked = set(vocab.sample_tuples(UNRELATED_SAMPLE, seed=0, exclude=near))
        # vocabulary order, as for small vocabularies (a sample is a set; its order is not random)
        return sorted(picked, key=self._vocab_order)

    def _vocab_order(self, t: ORO) -> tuple[int, int, int]:
        pos = self._word_positions
        return (pos[0][t.subject], pos[1][t.relation], pos[2][t.object])

    @cached_property
    def _word_positions(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        v = self.vocabulary
        return tuple({w: i for i, w in enumerate(v.words(r))} for r in ROLES)  # type: ignore[return-value]

    @property
    def unrelated_sampled(self) -> bool:
        """Whether :meth:`unrelated` is a sample (a vocabulary past :data:`UNRELATED_ENUMERATE`)."""
        return self.vocabulary.count_valid() > UNRELATED_ENUMERATE

    def pairs(self) -> list[tuple[ORO, ORO]]:
        """``(unsafe, counterpart)`` for each unsafe tuple, in file order (for quadruplets)."""
        return [(d.tuple, d.counterpart) for d in self.derivations]

    # ---- records -----------------------------------------------------------------------------
    def to_dict(self, derived: bool = True) -> dict[str, Any]:
        """A JSON-ready record of the policy.

        With ``derived=False`` it is the input form (explicit counterparts only), which
        :meth:`from_dict` accepts back. With ``derived=True`` (for provenance) it adds the source,
        its digest, the vocabulary's source, each tuple's derivation and the policy-level counts.
        """
        entries: list[Any] = []
        for t in self.unsafe:
            if t in self.explicit:
                entries.append({"tuple": t.id, "counterpart": self.counterparts[t].id})
            else:
                entries.append(t.id)
        spec: dict[str, Any] = {"name": self.name}
        if self.description:
            spec["description"] = self.description
        if self.vocabulary_spec != "relworld":
            spec["vocabulary"] = self.vocabulary_spec
        spec["unsafe"] = entries
        spec["counterpart_strategy"] = self.counterpart_strategy
        if not derived:
            return spec
        return {
            **spec,
            "unsafe": list(self.unsafe_ids),
            "source": self.source,
            "sha256": self.sha256,
            "vocabulary": self.vocabulary.describe(),
            "derivations": [d.to_dict() for d in self.derivations],
            "counts": {
                "unsafe": len(self.unsafe),
                "neighbours": len(self.all_neighbours()),
                "marginals": len(self.all_marginals()),
                "unrelated": len(self.unrelated()),
                "unrelated_unseen": len(self.unrelated("unseen")),
                "unrelated_sampled": self.unrelated_sampled,
            },
        }


# ---- loading -------------------------------------------------------------------------------------


def _policy_dirs() -> list[Path]:
    """Where named policies (``default``, ``tiny``) are looked up, in order."""
    dirs: list[Path] = []
    pkg = resources.files("relsafe").joinpath("policies")
    if pkg.is_dir():
        dirs.append(Path(str(pkg)))
    return dirs


def find_policy(spec: str | Path) -> Path:
    """Resolve a policy path or a bundled policy name (``default``, ``tiny``) to a file."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"policy path is not a file: {path}")
    name = str(spec)
    if "/" not in name and "\\" not in name:
        stem = name[:-5] if name.endswith(".yaml") else name
        for d in _policy_dirs():
            cand = d / f"{stem}.yaml"
            if cand.is_file():
                return cand
    known = sorted({p.stem for d in _policy_dirs() for p in d.glob("*.yaml")})
    raise ConfigError(f"policy file not found: {spec} (bundled policies: {known})")


def load_policy(path: str | Path, vocab: Vocabulary | None = None) -> Policy:
    """Load and validate a policy YAML file (a path, or a bundled name such as ``default``).

    Raises :class:`~relsafe.errors.ConfigError` naming the file and line for malformed YAML,
    unknown keys, unknown words (with the nearest valid word), tuples outside the compatibility
    table, duplicates, contradictory counterparts, tuples with no safe counterpart and empty policies.
    """
    from relsafe.utils_io import read_text_file

    file = find_policy(path)
    source = str(path) if Path(path) == file else str(file)
    try:
        text = read_text_file(file, "policy file")
    except ConfigError:
        raise
    except InputError as e:  # missing, unreadable, oversized, not UTF-8: a bad policy input
        raise ConfigError(str(e)) from e
    data, lines = _compose(text, source)
    return _build(
        data,
        source,
        vocab,
        lines,
        hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def _compose(text: str, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse YAML into plain Python values plus the line of every mapping member and list item.

    The document is composed by :func:`relsafe.utils_io.compose_yaml`, bounded in depth and in
    alias expansion, so an alias bomb or a 5,000-deep nesting is refused before anything is built.
    """
    from relsafe.utils_io import compose_yaml

    loader: Any = None
    try:
        loader, node = compose_yaml(text, source)
        if node is None:
            return None, {}
        lines: dict[tuple[Any, ...], int] = {}
        data = _convert(loader, node, (), lines, source)
    except ConfigError:
        raise
    except InputError as e:  # a bound of compose_yaml: name it as a policy error
        raise ConfigError(str(e)) from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f", line {mark.line + 1}" if mark is not None else ""
        what = "; ".join(str(x) for x in (e.context, e.problem) if x)
        if e.context_mark is not None and mark is not None and e.context_mark.line != mark.line:
            what += f" (it started at line {e.context_mark.line + 1})"
        raise ConfigError(f"{source}{at}: malformed YAML: {what}") from e
    except yaml.reader.ReaderError as e:  # a control character: name its line, not a position
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(
            f"{source}, line {line}: character {_char(e.character)!r} is not allowed in YAML"
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: malformed YAML: {' '.join(str(e).split())}") from e
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _convert(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: tuple[Any, ...],
    lines: dict[tuple[Any, ...], int],
    source: str,
    active: frozenset[int] = frozenset(),
) -> Any:
    if id(node) in active:
        raise ConfigError(f"{source}, line {node.start_mark.line + 1}: recursive YAML alias")
    active = active | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        out = []
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            out.append(_convert(loader, item, (*path, i), lines, source, active))
        return out
    if isinstance(node, yaml.MappingNode):
        res: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = _convert(loader, knode, (*path, "<key>"), {}, source, active)
            if isinstance(key, (list, dict)):
                raise ConfigError(
                    f"{source}, line {knode.start_mark.line + 1}: a key must be a word"
                )
            if key in res:
                first = lines[(*path, key)]
                raise ConfigError(
                    f"{source}, line {knode.start_mark.line + 1}: key {key!r} appears twice "
                    f"(first at line {first})"
                )
            lines[(*path, key)] = knode.start_mark.line + 1
            res[key] = _convert(loader, vnode, (*path, key), lines, source, active)
        return res
    return loader.construct_object(node, deep=True)


def _build(data: Any, source: str, vocab: Vocabulary | None, lines: _Lines, digest: str) -> Policy:
    """Validate the document ``data`` and build the policy (``lines`` may be empty).

    The vocabulary is the one the document names (``vocabulary:``, relative paths against the
    policy file's folder); ``vocab`` is used when the document names none (default ``relworld``)."""

    def where(*path: Any) -> str:
        line = lines.get(path)
        label = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        if line is None:
            return f"{source}: {label}" if label else source
        return f"{source}, line {line}" + (f" ({label})" if label else "")

    if data is None:
        raise ConfigError(f"{source}: the policy is empty; it needs an `unsafe` list of tuples")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a policy must be a mapping with an `unsafe` list, got {_kind(data)}"
        )
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where(key)}: unknown key {key!r}{_hint(key, _TOP_KEYS)}")

    name = data.get("name", Path(source).stem if not source.startswith("<") else "policy")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where('name')}: `name` must be a non-empty string")
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{where('description')}: `description` must be a string")
    vocab_spec = data.get("vocabulary")
    if vocab_spec is not None:
        if not isinstance(vocab_spec, str) or not vocab_spec.strip():
            raise ConfigError(
                f"{where('vocabulary')}: `vocabulary` is a built-in name (relworld) or a path"
            )
        base = None if source.startswith("<") else Path(source).parent
        try:
            vocab = load_vocabulary(vocab_spec.strip(), base=base)
        except ConfigError as e:
            raise ConfigError(f"{where('vocabulary')}: {e}") from e
    elif vocab is None:
        vocab = default_vocabulary()
    strategy = data.get("counterpart_strategy", DEFAULT_STRATEGY)
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"{where('counterpart_strategy')}: counterpart_strategy must be one of {list(STRATEGIES)}, "
            f"got {strategy!r}{_hint(strategy, STRATEGIES)}"
        )

    entries = data.get("unsafe")
    if entries is None or entries == []:
        at = where("unsafe") if "unsafe" in data else source
        raise ConfigError(f"{at}: the policy is empty; `unsafe` must list at least one tuple")
    if not isinstance(entries, list):
        raise ConfigError(
            f"{where('unsafe')}: `unsafe` must be a list of tuples, got {_kind(entries)}"
        )

    unsafe: list[ORO] = []
    first_at: dict[ORO, str] = {}
    line_of: dict[ORO, int] = {}
    wanted: dict[ORO, tuple[ORO, str]] = {}  # explicit counterpart and where it was written
    for i, entry in enumerate(entries):
        at = where("unsafe", i)
        if isinstance(entry, dict):
            for key in entry:
                if key not in _ENTRY_KEYS:
                    raise ConfigError(
                        f"{where('unsafe', i, key)}: unknown key {key!r} in an unsafe entry"
                        f"{_hint(key, _ENTRY_KEYS)}; an entry is a tuple or {{tuple: ..., counterpart: ...}}"
                    )
            if "tuple" not in entry:
                raise ConfigError(f"{at}: an entry written as a mapping needs a `tuple` key")
            t = _parse_tuple(entry["tuple"], vocab, where("unsafe", i, "tuple"))
            if entry.get("counterpart") is not None:
                cat = where("unsafe", i, "counterpart")
                wanted[t] = (_parse_tuple(entry["counterpart"], vocab, cat), cat)
            elif "counterpart" in entry:
                raise ConfigError(f"{where('unsafe', i, 'counterpart')}: `counterpart` is empty")
        else:
            t = _parse_tuple(entry, vocab, at)
        if t in first_at:
            raise ConfigError(f"{at}: {t.id} is listed twice (first at {first_at[t]})")
        first_at[t] = f"line {lines[('unsafe', i)]}" if ("unsafe", i) in lines else f"unsafe[{i}]"
        if ("unsafe", i) in lines:
            line_of[t] = lines[("unsafe", i)]
        unsafe.append(t)

    banned = set(unsafe)
    counterparts: dict[ORO, ORO] = {}
    for i, t in enumerate(unsafe):
        if t in wanted:
            c, cat = wanted[t]
            if c == t:
                raise ConfigError(f"{cat}: the counterpart of {t.id} is the tuple itself")
            if c in banned:
                raise ConfigError(
                    f"{cat}: the counterpart of {t.id} is {c.id}, which the policy lists as unsafe "
                    f"(at {first_at[c]}); a counterpart must be safe"
                )
            counterparts[t] = c
            continue
        c = choose_counterpart(t, vocab, banned, strategy)
        if c is None:
            keep = "subject" if strategy == "keep_subject" else "object"
            raise ConfigError(
                f"{where('unsafe', i)}: {t.id} has no safe counterpart under {strategy} (every "
                f"neighbour that keeps the {keep} is unsafe); give one with "
                f"{{tuple: {t.id}, counterpart: ...}} or change counterpart_strategy"
            )
        counterparts[t] = c

    return Policy(
        name=name.strip(),
        unsafe=tuple(unsafe),
        vocabulary=vocab,
        counterparts=MappingProxyType(counterparts),
        explicit=frozenset(wanted),
        counterpart_strategy=strategy,
        description=description.strip(),
        source=source,
        sha256=digest,
        lines=MappingProxyType(line_of),
        vocabulary_spec=vocab_spec.strip()
        if isinstance(vocab_spec, str)
        else ("relworld" if vocab is default_vocabulary() else vocab.source),
    )


# ---- small helpers -------------------------------------------------------------------------------


def _norm_word(word: Any, at: str, role: str) -> str:
    """Canonical spelling of a word: lower case, spaces and hyphens as underscores (``next to``)."""
    if not isinstance(word, str) or not word.strip():
        raise ConfigError(f"{at}: the {role} must be a word, got {word!r}")
    return "_".join(word.strip().lower().replace("-", " ").split())


def _parse_tuple(value: Any, vocab: Vocabulary, at: str) -> ORO:
    """Parse ``s|r|o`` or ``[s, r, o]``, normalise the words and check them against ``vocab``."""
    if isinstance(value, str):
        parts: list[Any] = value.split("|")
    elif isinstance(value, list):
        parts = value
    else:
        raise ConfigError(
            f"{at}: a tuple is written subject|relation|object or [subject, relation, object], "
            f"got {_kind(value)}"
        )
    if len(parts) != 3:
        raise ConfigError(
            f"{at}: a tuple is written subject|relation|object or [subject, relation, object], "
            f"got {value!r}"
        )
    words = [_norm_word(w, at, role) for w, role in zip(parts, ROLES, strict=True)]
    try:
        return vocab.tuple(ORO(*words), at)
    except ConfigError:
        raise
    except InputError as e:  # the vocabulary's message already names `at` and suggests a word
        raise ConfigError(str(e)) from e


def _as_oro(t: ORO | str | tuple[str, str, str]) -> ORO:
    if isinstance(t, ORO):
        return t
    if isinstance(t, str):
        parts = t.split("|")
    else:
        parts = list(t)
    if len(parts) != 3 or not all(isinstance(p, str) and p.strip() for p in parts):
        raise InputError(f"a tuple is written subject|relation|object, got {t!r}")
    return ORO(*("_".join(p.strip().lower().replace("-", " ").split()) for p in parts))


def _hint(word: Any, choices: Iterable[str]) -> str:
    hits = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f"; did you mean {hits[0]!r}?" if hits else f"; expected one of {sorted(choices)}"


def _char(c: Any) -> Any:
    return chr(c) if isinstance(c, int) else c


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(
        type(value), type(value).__name__
    )


# ---- human-readable summary ----------------------------------------------------------------------


def describe(policy: Policy) -> str:
    """A readable table of the policy: each unsafe tuple, its counterpart and its neighbours."""
    derivs = policy.derivations
    head = [
        f"policy {policy.name!r} from {policy.source} (sha256 {policy.sha256[:12]})",
    ]
    if policy.description:
        head.append(policy.description)
    head.append(
        f"{len(policy)} unsafe tuples; counterpart strategy {policy.counterpart_strategy}; "
        f"{len(policy.all_neighbours())} safe neighbours, {len(policy.all_marginals())} marginals, "
        f"{len(policy.unrelated())} unrelated tuples "
        f"({len(policy.unrelated('unseen'))} of them evaluation-only)"
    )
    cols = ["unsafe tuple", "counterpart", "chosen by", *NEIGHBOUR_KINDS]
    rows = [
        [
            d.id,
            d.counterpart.id,
            d.counterpart_source,
            *(str(len(d.by_kind(k))) for k in NEIGHBOUR_KINDS),
        ]
        for d in derivs
    ]
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    table = [fmt(cols), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
    details: list[str] = []
    for d in derivs:
        details.append("")
        details.append(d.id)
        details.append(f"  {'marginals':<15} " + ", ".join(f"{r} {w}" for r, w in d.marginals))
        for k in NEIGHBOUR_KINDS:
            ids = ", ".join(t.id for t in d.by_kind(k)) or "(none)"
            details.append(f"  {k:<15} {ids}")
    return "\n".join([*head, "", *table, *details]) + "\n"
