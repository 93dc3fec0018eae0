"""Tests for relsafe.policy: loading, validation with file-and-line errors, and derivations."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from relsafe.errors import ConfigError, InputError
from relsafe.policy import (
    NEIGHBOUR_KINDS,
    Neighbour,
    Policy,
    choose_counterpart,
    describe,
    find_policy,
    load_policy,
)
from relsafe.world.vocab import ORO, default_vocabulary

REPO = Path(__file__).resolve().parents[1]


def T(text: str) -> ORO:
    return ORO(*text.split("|"))


def ids(ts) -> list[str]:
    return [t.id for t in ts]


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_text(tmp_path: Path, text: str) -> Policy:
    return load_policy(write(tmp_path, text))


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    msg = str(info.value)
    assert str(path) in msg, msg  # every error names the file
    return msg


WINE_BEER = """
name: wb
unsafe:
  - child|drinking|wine
  - [child, drinking, beer]
"""


# ---- hand-checked derivation ---------------------------------------------------------------------


def test_hand_checked_derivation(tmp_path):
    p = load_text(tmp_path, WINE_BEER)
    assert p.name == "wb"
    assert p.unsafe_ids == ("child|drinking|wine", "child|drinking|beer")
    d = p.derive("child|drinking|wine")
    assert d.marginals == (("subject", "child"), ("object", "wine"))
    assert ids(d.other_subject) == ["adult|drinking|wine", "dog|drinking|wine"]
    assert ids(d.other_object) == ["child|drinking|juice", "child|drinking|milk"]
    assert ids(d.other_relation) == ["child|holding|wine", "child|next_to|wine"]
    assert T("child|drinking|beer") not in [n.oro for n in d.neighbours]
    assert d.counterpart == T("child|drinking|juice")
    assert d.counterpart_source == "keep_subject"
    assert d.counterpart_changes == ("object",)
    # each neighbour records its kind and the tuple it neighbours
    assert d.neighbours[0] == Neighbour(T("adult|drinking|wine"), "other_subject", d.tuple)
    assert [n.kind for n in d.neighbours] == [k for k in NEIGHBOUR_KINDS for _ in range(2)]
    # same derivation whichever way the tuple is named
    assert p.derive(T("child|drinking|wine")) == d == p.derive(("child", "drinking", "wine"))


def test_policy_level_unions(tmp_path):
    p = load_text(tmp_path, WINE_BEER)
    assert p.all_marginals() == [("subject", "child"), ("object", "wine"), ("object", "beer")]
    nb = p.all_neighbours()
    assert len(nb) == len(set(nb))
    assert nb.count(T("child|drinking|juice")) == 1  # shared by both tuples, listed once
    assert not set(nb) & set(p.unsafe)
    assert [n.of for n in p.neighbour_sources()[T("child|drinking|juice")]] == list(p.unsafe)
    assert p.pairs() == [
        (T("child|drinking|wine"), T("child|drinking|juice")),
        (T("child|drinking|beer"), T("child|drinking|juice")),
    ]
    unrelated = p.unrelated()
    valid = default_vocabulary().valid_tuples()
    assert set(unrelated) | set(nb) | set(p.unsafe) == set(valid)
    assert len(unrelated) + len(nb) + len(p) == len(valid)
    assert T("adult|eating|bread") in unrelated


def test_derive_rejects_a_tuple_outside_the_policy(tmp_path):
    p = load_text(tmp_path, WINE_BEER)
    with pytest.raises(InputError, match="not an unsafe tuple"):
        p.derive("adult|drinking|wine")
    assert p.is_unsafe("child|drinking|wine") and "child|drinking|beer" in p
    assert not p.is_unsafe("adult|drinking|wine") and not p.is_unsafe("nonsense")


def test_explicit_counterpart_and_strategies(tmp_path):
    p = load_text(
        tmp_path,
        """
        unsafe:
          - {tuple: child|holding|knife, counterpart: child|holding|book}
          - child|holding|gun
          - dog|eating|chocolate
        """,
    )
    assert p.name == "p"  # defaults to the file's stem
    assert p.counterpart("child|holding|knife") == T("child|holding|book")
    assert p.derive("child|holding|knife").counterpart_source == "explicit"
    # same kind (item) first in vocab order: knife is unsafe, so toy
    assert p.counterpart("child|holding|gun") == T("child|holding|toy")
    assert p.counterpart("dog|eating|chocolate") == T("dog|eating|bread")
    keep_obj = load_text(
        tmp_path,
        """
        unsafe: [dog|eating|chocolate]
        counterpart_strategy: keep_object
        """,
    )
    assert keep_obj.counterpart("dog|eating|chocolate") == T("child|eating|chocolate")


def test_keep_subject_falls_back_to_other_relation():
    vocab = default_vocabulary()
    t = T("child|smoking|cigarette")  # smoking takes only cigarettes
    assert choose_counterpart(t, vocab, [t]) == T("child|holding|cigarette")
    # all objects of the same kind unsafe -> any other object, in vocab order
    wine = T("child|drinking|wine")
    drinks = [T(f"child|drinking|{o}") for o in ("wine", "beer", "juice", "milk")]
    assert choose_counterpart(wine, vocab, drinks) == T("child|holding|wine")
    # same kind first, benign objects first in vocab order
    assert choose_counterpart(T("child|holding|wine"), vocab, [T("child|holding|wine")]) == T(
        "child|holding|juice"
    )


def test_no_safe_counterpart_is_an_error(tmp_path):
    msg = error_of(
        tmp_path,
        """
        unsafe:
          - child|smoking|cigarette
          - child|holding|cigarette
          - child|next_to|cigarette
        """,
    )
    assert "line 2" in msg and "child|smoking|cigarette has no safe counterpart" in msg


# ---- validation errors ---------------------------------------------------------------------------


def test_unknown_word_suggests_and_names_line(tmp_path):
    msg = error_of(
        tmp_path,
        """
        name: typo
        unsafe:
          - child|drinking|wine
          - child|drinking|wnie
        """,
    )
    assert "line 4" in msg and "did you mean 'wine'" in msg
    msg = error_of(tmp_path, "unsafe:\n  - [chlid, drinking, wine]\n")
    assert "line 2" in msg and "did you mean 'child'" in msg
    msg = error_of(tmp_path, "unsafe:\n  - child|drinkin|wine\n")
    assert "did you mean 'drinking'" in msg


def test_tuple_outside_compatibility(tmp_path):
    msg = error_of(tmp_path, "unsafe:\n  - child|drinking|wine\n  - child|smoking|wine\n")
    assert "line 3" in msg and "child|smoking|wine is not in the world" in msg


def test_malformed_tuple(tmp_path):
    assert "subject|relation|object" in error_of(tmp_path, "unsafe:\n  - child drinking wine\n")
    assert "subject|relation|object" in error_of(tmp_path, "unsafe:\n  - [child, wine]\n")
    assert "must be a word" in error_of(tmp_path, "unsafe:\n  - [child, drinking, 3]\n")


def test_duplicates_name_both_lines(tmp_path):
    msg = error_of(
        tmp_path,
        """
        unsafe:
          - child|drinking|wine
          - child|drinking|beer
          - [child, drinking, wine]
        """,
    )
    assert re.search(r"line 4 .*listed twice \(first at line 2\)", msg), msg
    # a duplicate written in another spelling is still a duplicate
    msg = error_of(tmp_path, "unsafe:\n  - child|next to|wine\n  - child|next_to|wine\n")
    assert "line 3" in msg and "line 2" in msg


def test_contradictions(tmp_path):
    msg = error_of(
        tmp_path,
        """
        unsafe:
          - child|drinking|wine
          - tuple: child|drinking|beer
            counterpart: child|drinking|wine
        """,
    )
    assert "line 4" in msg and "lists as unsafe" in msg and "line 2" in msg
    msg = error_of(
        tmp_path, "unsafe:\n  - {tuple: child|drinking|wine, counterpart: child|drinking|wine}\n"
    )
    assert "line 2" in msg and "the tuple itself" in msg
    msg = error_of(
        tmp_path, "unsafe:\n  - {tuple: child|drinking|wine, counterpart: child|smoking|juice}\n"
    )
    assert "line 2" in msg and "not in the world" in msg
    msg = error_of(
        tmp_path, "unsafe:\n  - {tuple: child|drinking|wine, counterpart: child|drinking|juic}\n"
    )
    assert "did you mean 'juice'" in msg


@pytest.mark.parametrize(
    "text",
    ["", "# only a comment\n", "name: x\n", "name: x\nunsafe: []\n", "name: x\nunsafe:\n"],
)
def test_empty_policy(tmp_path, text):
    assert "empty" in error_of(tmp_path, text)


def test_unknown_keys(tmp_path):
    msg = error_of(tmp_path, "name: x\nunsafe_tuples:\n  - child|drinking|wine\n")
    assert "line 2" in msg and "'unsafe_tuples'" in msg and "did you mean 'unsafe'" in msg
    msg = error_of(
        tmp_path,
        """
        unsafe:
          - tuple: child|drinking|wine
            counterpoint: child|drinking|juice
        """,
    )
    assert "line 3" in msg and "did you mean 'counterpart'" in msg
    msg = error_of(tmp_path, "unsafe: [child|drinking|wine]\ncounterpart_strategy: keep_verb\n")
    assert "line 2" in msg and "keep_subject" in msg
    msg = error_of(tmp_path, "unsafe: [child|drinking|wine]\nunsafe: [child|drinking|beer]\n")
    assert "appears twice" in msg and "line 1" in msg


def test_wrong_shapes(tmp_path):
    assert "must be a mapping" in error_of(tmp_path, "- child|drinking|wine\n")
    assert "must be a list" in error_of(tmp_path, "unsafe: child|drinking|wine\n")
    assert "needs a `tuple`" in error_of(
        tmp_path, "unsafe:\n  - counterpart: child|drinking|juice\n"
    )


def test_malformed_yaml(tmp_path):
    msg = error_of(tmp_path, "name: x\nunsafe:\n  - [child, drinking, wine\n  - x: y\n")
    assert "malformed YAML" in msg and "line" in msg
    msg = error_of(tmp_path, "name: x\n\tunsafe: []\n")
    assert "malformed YAML" in msg
    msg = error_of(tmp_path, "unsafe: &a [*a]\n")
    assert "recursive" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "nope.yaml")


def test_next_to_normalised(tmp_path):
    p = load_text(
        tmp_path,
        """
        unsafe:
          - child|next to|knife
          - [dog, next-to, chocolate]
          - {tuple: [Child, Next To, gun], counterpart: child|next to|toy}
        """,
    )
    assert p.unsafe_ids == ("child|next_to|knife", "dog|next_to|chocolate", "child|next_to|gun")
    assert p.counterpart("child|next to|gun") == T("child|next_to|toy")


# ---- from_dict, records, bundled policies --------------------------------------------------------


def test_from_dict_round_trip_and_provenance(tmp_path):
    p = load_text(
        tmp_path,
        """
        name: rt
        description: round trip
        unsafe:
          - child|drinking|wine
          - {tuple: child|holding|knife, counterpart: child|holding|toy}
        """,
    )
    spec = p.to_dict(derived=False)
    q = Policy.from_dict(spec, "<spec>")
    assert q.unsafe == p.unsafe and dict(q.counterparts) == dict(p.counterparts)
    assert q.explicit == p.explicit == {T("child|holding|knife")}
    rec = p.to_dict()
    json.dumps(rec)
    assert rec["sha256"] == p.sha256 and len(p.sha256) == 64
    # wine alone: the first other drink in vocab order (benign drinks come first) is juice
    assert rec["derivations"][0]["counterpart"] == "child|drinking|juice"
    assert rec["counts"]["unsafe"] == 2
    assert p.lines[T("child|holding|knife")] == 5


def test_from_dict_errors_name_the_entry():
    with pytest.raises(ConfigError, match=r"<mine>: unsafe\[1\].*did you mean 'beer'"):
        Policy.from_dict({"unsafe": ["child|drinking|wine", "child|drinking|bear"]}, "<mine>")
    with pytest.raises(ConfigError, match="unknown key"):
        Policy.from_dict({"unsafe": ["child|drinking|wine"], "extra": 1})


def test_sha256_is_of_the_source_text(tmp_path):
    import hashlib

    path = write(tmp_path, WINE_BEER)
    assert load_policy(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_policy():
    p = load_policy(REPO / "policies" / "default.yaml")
    assert find_policy("default") == (REPO / "policies" / "default.yaml").resolve()
    assert len(p) >= 6 and "child|drinking|wine" in p.unsafe_ids
    assert p.counterpart("child|drinking|wine") == T("child|drinking|juice")
    for kind in NEIGHBOUR_KINDS:
        assert any(d.by_kind(kind) for d in p.derivations), kind
    nb, unsafe, unrelated = set(p.all_neighbours()), set(p.unsafe), set(p.unrelated())
    assert not unrelated & unsafe and not unrelated & nb and not nb & unsafe
    assert len(unrelated | nb | unsafe) == len(default_vocabulary().valid_tuples())
    for t, c in p.pairs():
        assert c not in unsafe and default_vocabulary().is_valid(c) and c != t
    text = describe(p)
    for t in p.unsafe_ids:
        assert t in text


def test_tiny_policy():
    p = load_policy("tiny")
    assert p.unsafe_ids == ("child|drinking|wine", "child|drinking|beer")
    assert all(c == T("child|drinking|juice") for _, c in p.pairs())


def test_concepts_policy_covers_every_gun_and_cigarette_tuple():
    """The concept-level policy (issue 14): every valid tuple with a gun or a cigarette is unsafe,
    each redirected to a safe scene with a harmless object, and no safe tuple holds either."""
    from relsafe.world.vocab import default_vocabulary

    p = load_policy("concepts")
    valid = default_vocabulary().valid_tuples()
    concept = {t for t in valid if t.object in ("gun", "cigarette")}
    assert set(p.unsafe) == concept and len(concept) == 15
    for t in p.unsafe:
        cp = p.counterpart(t)
        assert cp.object in ("toy", "apple") and cp.subject == t.subject and not p.is_unsafe(cp)
    assert not any(t.object in ("gun", "cigarette") for t in p.all_neighbours() + p.unrelated())
