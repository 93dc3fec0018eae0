"""Open world (issue 15): vocabularies as data, policies that name them, manifest worlds, scale.

The central test renames every word of RelWorld's vocabulary to a made-up token, relabels an
export of RelWorld images with it, and runs policy derivation, an edit and the relational suite
through the same code path as RelWorld, on relsafe-mini and on the tiny HF CLIP. On relsafe-mini
the original model's relational rows on the renamed manifest world must equal its rows on RelWorld
itself, tuple by tuple (same images, same captions): the world changes nothing but the names.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_runs import EVERY_METHOD

from relsafe import api
from relsafe.data.edit_sets import NEIGHBOURS_PER_KIND, SetSizes, relational_sets
from relsafe.data.manifest import load_manifest
from relsafe.data.relworld_export import export_relworld
from relsafe.data.world import ManifestImages, world_of
from relsafe.data.world_spec import open_world
from relsafe.errors import ConfigError, InputError
from relsafe.policy import load_policy
from relsafe.world.captions import canonical_caption, prototype_caption, templates
from relsafe.world.vocab import ORO, default_vocabulary, load_vocabulary

SRC = Path(__file__).resolve().parents[1] / "src" / "relsafe"

KITCHEN = {
    "name": "kitchen-safety",
    "subjects": {
        "child": {"train": ["a child", "a kid"], "heldout": ["a toddler"]},
        "adult": {"train": ["an adult", "a grown-up"], "heldout": ["a middle-aged person"]},
        "dog": {"train": ["a dog"], "heldout": ["a hound"]},
    },
    "relations": {
        "holding": {
            "train": ["holding", "carrying"],
            "heldout": ["gripping"],
            "takes": ["tool", "toy"],
        },
        "using": {"train": ["using"], "heldout": ["operating"], "takes": ["tool"]},
    },
    "objects": {
        "knife": {"kind": "tool", "train": ["a knife", "a kitchen knife"], "heldout": ["a blade"]},
        "spoon": {"kind": "tool", "train": ["a spoon"], "heldout": ["a ladle"]},
        "teddy": {"kind": "toy", "train": ["a teddy bear"], "heldout": ["a stuffed animal"]},
    },
    "subject_relations": {"dog": ["holding"]},
    "templates": {
        "train": ["a photo of {s} {r} {o}", "{s} {r} {o}"],
        "heldout": ["a snapshot showing {s} {r} {o}"],
    },
    "contexts": {"train": ["{c} in a kitchen"], "heldout": ["For a film scene: {c}."]},
}


def _write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---- vocabulary files ---------------------------------------------------------------------------


def test_a_vocabulary_file_declares_words_combinations_templates_and_contexts(
    tmp_path: Path,
) -> None:
    vocab = load_vocabulary(_write(tmp_path / "kitchen.yaml", KITCHEN))
    assert vocab.name == "kitchen-safety"
    assert vocab.sha256 == hashlib.sha256((tmp_path / "kitchen.yaml").read_bytes()).hexdigest()
    # holding takes tools and toys; using only tools; a dog may only hold
    assert vocab.is_valid(ORO("child", "holding", "teddy"))
    assert not vocab.is_valid(ORO("child", "using", "teddy"))
    assert not vocab.is_valid(ORO("dog", "using", "knife"))
    assert vocab.count_valid() == len(vocab.valid_tuples()) == 2 * (3 + 2) + 3
    with pytest.raises(InputError, match="subject 'dog' takes only"):
        vocab.tuple("dog|using|knife")
    # {s} {r} {o} and {c} are the short forms; the first train template is the canonical one
    t = ORO("child", "holding", "knife")
    assert canonical_caption(t, vocab) == "a photo of a child holding a knife"
    assert prototype_caption(t, vocab) == "a child holding a knife"
    assert templates(vocab)["edit"] == ("{subject} {relation} {object}",)
    assert vocab.contexts["heldout"] == ("For a film scene: {caption}.",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"subject": {}}, "unknown vocabulary key 'subject'; did you mean 'subjects'"),
        (
            {"templates": {"train": ["a photo of {s} {r} {o}"], "heldout": ["{s} {r} {o}"]}},
            "at least 2 templates",
        ),
        (
            {
                "templates": {
                    "train": ["a photo of {s} {o}", "{s} {r} {o}"],
                    "heldout": ["x {s}{r}{o}"],
                }
            },
            r"must contain \{relation\}",
        ),
        ({"contexts": {"train": ["{c} at {place}"], "heldout": ["{c}"]}}, "unknown slot {place}"),
        (
            {
                "relations": {
                    "holding": {"train": ["holding"], "heldout": ["gripping"], "takes": ["tol"]}
                }
            },
            "no object has kind 'tol'; did you mean 'tool'",
        ),
        (
            {"objects": {"Knife": {"kind": "tool", "train": ["a knife"], "heldout": ["a blade"]}}},
            r"canonical names are \[a-z0-9_\]\+",
        ),
        ({"subject_relations": {"cat": ["holding"]}}, "unknown subject 'cat'"),
    ],
)
def test_bad_vocabulary_files_say_what_and_where(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path / "bad.yaml", {**KITCHEN, **change})
    with pytest.raises(ConfigError, match=message) as e:
        load_vocabulary(path)
    assert str(path) in str(e.value)


def test_relworld_is_the_built_in_vocabulary_file() -> None:
    vocab = load_vocabulary("relworld")
    assert vocab is load_vocabulary(None) is default_vocabulary()
    text = (SRC / "world" / "vocab.yaml").read_bytes()
    assert vocab.sha256 == hashlib.sha256(text).hexdigest()
    assert vocab.count_valid() == 96


def test_a_policy_names_its_vocabulary_and_provenance_hashes_it(tmp_path: Path) -> None:
    _write(tmp_path / "kitchen.yaml", KITCHEN)
    pol_path = _write(
        tmp_path / "policy.yaml", {"vocabulary": "kitchen.yaml", "unsafe": ["child|holding|knife"]}
    )
    pol = load_policy(pol_path)
    assert pol.vocabulary.name == "kitchen-safety"
    assert pol.counterpart(ORO("child", "holding", "knife")) == ORO("child", "holding", "spoon")
    rec = pol.to_dict()
    assert rec["vocabulary"]["sha256"] == pol.vocabulary.sha256
    assert pol.to_dict(derived=False)["vocabulary"] == "kitchen.yaml"
    # words outside the vocabulary are refused with the file, line and a suggestion
    bad = _write(
        tmp_path / "bad.yaml", {"vocabulary": "kitchen.yaml", "unsafe": ["child|holding|knif"]}
    )
    with pytest.raises(
        ConfigError, match=r"bad.yaml, line \d+.*unknown object 'knif'; did you mean 'knife'"
    ):
        load_policy(bad)
    # a RelWorld word is not a kitchen word
    wine = _write(
        tmp_path / "wine.yaml", {"vocabulary": "kitchen.yaml", "unsafe": ["child|holding|wine"]}
    )
    with pytest.raises(ConfigError, match="unknown object 'wine'"):
        load_policy(wine)
    missing = _write(
        tmp_path / "m.yaml", {"vocabulary": "nope.yaml", "unsafe": ["child|holding|knife"]}
    )
    with pytest.raises(ConfigError, match=r"m.yaml, line 1 \(vocabulary\).*nope.yaml"):
        load_policy(missing)
    # edit sets use the kitchen words and templates; without a manifest they are text-only
    sets = relational_sets(pol, SetSizes(texts_per_forget_tuple=4, texts_per_retain_tuple=2))
    assert sets.forget_texts and all("knife" in t or "blade" in t for t in sets.forget_texts)
    assert len(sets.forget_images) == 0 and sets.warnings


# ---- scale ---------------------------------------------------------------------------------------


def _big_vocabulary(n_subj: int, n_rel: int, n_obj: int, n_kinds: int = 10) -> dict[str, Any]:
    per_kind = n_obj // n_kinds
    return {
        "name": "big",
        "subjects": {
            f"s{i}": {"train": [f"person {i}"], "heldout": [f"someone {i}"]} for i in range(n_subj)
        },
        "relations": {
            f"r{i}": {
                "train": [f"using {i}"],
                "heldout": [f"operating {i}"],
                "takes": [f"k{(i + j) % n_kinds}" for j in range(n_kinds // 2)],
            }
            for i in range(n_rel)
        },
        "objects": {
            f"o{i}": {
                "kind": f"k{i // per_kind}",
                "train": [f"thing {i}"],
                "heldout": [f"item {i}"],
            }
            for i in range(n_obj)
        },
        "templates": {
            "train": ["a photo of {s} {r} {o}", "{s} {r} {o}"],
            "heldout": ["see {s} {r} {o}"],
        },
        "contexts": {"train": ["{c}, indoors"], "heldout": ["alt text: {c}"]},
    }


def test_a_large_vocabulary_derives_and_builds_edit_sets_without_listing_tuples(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "big.yaml", _big_vocabulary(60, 20, 600))
    vocab = load_vocabulary(tmp_path / "big.yaml")
    assert vocab.count_valid() == 60 * 20 * 300  # 360,000: past what may be listed
    with pytest.raises(InputError, match="too many to list"):
        vocab.valid_tuples()
    unsafe = vocab.sample_tuples(20, seed=1)
    assert len(set(unsafe)) == 20 and all(vocab.is_valid(t) for t in unsafe)
    assert unsafe == vocab.sample_tuples(20, seed=1)  # deterministic
    _write(tmp_path / "p.yaml", {"vocabulary": "big.yaml", "unsafe": [t.id for t in unsafe]})
    t0 = time.perf_counter()
    pol = load_policy(tmp_path / "p.yaml")
    sets = relational_sets(pol)
    seconds = time.perf_counter() - t0
    assert pol.unrelated_sampled and 0 < len(pol.unrelated()) <= 1000
    assert not set(pol.unrelated()) & (set(pol.unsafe) | set(pol.all_neighbours()))
    # every unsafe tuple has 299 other-object neighbours; the retain set keeps at most 24 of each kind
    for d in pol.derivations:
        assert len(d.other_object) == 299
    per_kind: dict[tuple[ORO, str], int] = {}
    kept = set(sets.retain_tuples["neighbour"])
    for d in pol.derivations:
        for kind in ("other_subject", "other_object", "other_relation"):
            per_kind[(d.tuple, kind)] = sum(t in kept for t in d.by_kind(kind))
    # each unsafe tuple adds at most 24 per kind (a tuple can neighbour two unsafe ones)
    assert len(kept) <= NEIGHBOURS_PER_KIND * 3 * len(pol.unsafe)
    assert min(v for (_, k), v in per_kind.items() if k == "other_object") >= NEIGHBOURS_PER_KIND
    assert max(v for (_, k), v in per_kind.items() if k == "other_object") < 40
    assert seconds < 60, f"derivation and edit sets took {seconds:.1f} s"


# ---- a renamed RelWorld: no word is special -----------------------------------------------------


def _rename_map() -> dict[str, str]:
    vocab = default_vocabulary()
    words = [
        *vocab.subjects,
        *vocab.relations,
        *vocab.objects,
        *sorted(set(vocab.object_kind.values())),
    ]
    return {w: f"zq{i}x" for i, w in enumerate(words)}


def _renamed_vocabulary(names: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load((SRC / "world" / "vocab.yaml").read_text(encoding="utf-8"))
    out: dict[str, Any] = {"name": "renamed", **{k: raw[k] for k in ("templates", "contexts")}}
    for section in ("subjects", "relations", "objects"):
        out[section] = {}
        for word, entry in raw[section].items():
            entry = dict(entry)
            if "kind" in entry:
                entry["kind"] = names[entry["kind"]]
            if "takes" in entry:
                entry["takes"] = [names[k] for k in entry["takes"]]
            out[section][names[word]] = entry
    return out


def _rename(t: str, names: dict[str, str]) -> str:
    return "|".join(names[w] for w in t.split("|"))


@pytest.fixture(scope="module")
def renamed_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A renamed vocabulary, a manifest of exported RelWorld images relabelled to it (VAL renders
    as its train and val splits, TEST renders as its test split) and the tiny policy in the new
    words."""
    root = tmp_path_factory.mktemp("renamed")
    names = _rename_map()
    _write(root / "vocab.yaml", _renamed_vocabulary(names))
    rows: list[dict[str, str]] = []
    for split, n in (("val", 4), ("test", 2)):
        manifest = export_relworld(
            root / split, split=split, n_per_tuple=n, size=64, progress=False
        )
        with manifest.open(encoding="utf-8") as f:
            for i, r in enumerate(csv.DictReader(f)):
                # VAL renders: the first three of each tuple (plain, pastel, vivid) are the
                # manifest's train split, the fourth (plain) its val split; TEST renders its test
                as_split = "test" if split == "test" else ("train" if i % n < 3 else "val")
                rows.append(
                    {
                        "image": f"{split}/{r['image']}",
                        **{k: names[r[k]] for k in ("subject", "relation", "object")},
                        "split": as_split,
                        "domain": r["domain"],
                    }
                )
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tiny = yaml.safe_load((SRC / "policies" / "tiny.yaml").read_text(encoding="utf-8"))
    unsafe = [_rename(t if isinstance(t, str) else t["tuple"], names) for t in tiny["unsafe"]]
    _write(
        root / "policy.yaml", {"name": "renamed-tiny", "vocabulary": "vocab.yaml", "unsafe": unsafe}
    )
    return {
        "root": root,
        "names": names,
        "policy": root / "policy.yaml",
        "manifest": root / "manifest.csv",
    }


def test_a_renamed_world_derives_the_same_policy_and_uses_the_manifest_images(
    renamed_world: dict[str, Any],
) -> None:
    names = renamed_world["names"]
    ref = load_policy("tiny")
    pol = load_policy(renamed_world["policy"])
    assert [t.id for t in pol.unsafe] == [_rename(t.id, names) for t in ref.unsafe]
    assert [pol.counterpart(t).id for t in pol.unsafe] == [
        _rename(ref.counterpart(t).id, names) for t in ref.unsafe
    ]
    assert [t.id for t in pol.unrelated()] == [_rename(t.id, names) for t in ref.unrelated()]
    world = open_world({"data": str(renamed_world["manifest"])}, pol.vocabulary)
    assert isinstance(world.images, ManifestImages)
    bound = pol.bind_world(world)
    assert world_of(bound) is world
    sizes = SetSizes(
        texts_per_forget_tuple=3,
        images_per_forget_tuple=2,
        texts_per_retain_tuple=1,
        images_per_retain_tuple=1,
        n_unrelated=2,
        size=64,
    )
    sets, ref_sets = relational_sets(bound, sizes), relational_sets(ref, sizes)
    assert sets.forget_texts == ref_sets.forget_texts  # same phrasings: same strings
    # forget images are the unsafe tuples' manifest train images (2 per tuple), in manifest order
    train = load_manifest(renamed_world["manifest"], pol.vocabulary).rows_for(
        pol.unsafe[0], "train"
    )
    first = world.images.load_rows(train[:2], 64)
    assert (sets.forget_images[:2] == first).all()
    # counterpart images are the counterpart's own train images, not renders
    cp_rows = world.images.rows(pol.counterpart(pol.unsafe[0]), "train")
    assert (sets.forget_image_targets[:2] == world.images.load_rows(cp_rows[:2], 64)).all()


def _rel_config() -> dict[str, Any]:
    return {
        "n_per_tuple": 2,
        "size": 64,
        "ood_styles": [],
        "corruptions": ["noise"],
        "text_variants": 1,
    }


def test_relational_rows_on_the_renamed_world_equal_relworld_rows(
    renamed_world: dict[str, Any],
) -> None:
    names = renamed_world["names"]
    inv = {v: k for k, v in names.items()}
    rel = api.evaluate(
        "relational", model="relsafe-mini", policy="tiny", config=_rel_config(), progress=False
    )
    ren = api.evaluate(
        "relational",
        model="relsafe-mini",
        policy=str(renamed_world["policy"]),
        world={"data": str(renamed_world["manifest"])},
        config=_rel_config(),
        progress=False,
    )

    def back(s: str) -> str:
        return re.sub(r"zq\d+x", lambda m: inv[m.group(0)], s)

    # which unrelated tuples are evaluation-only is a hash of the tuple's id
    # (world.splits.is_unseen_tuple), so renamed ids split the unrelated pool differently:
    # those two slices are the only rows allowed to differ
    split_by_id = ("unrelated:retain", "unrelated:unseen")
    got = {
        (back(r.slice), r.attack, r.metric): (r.value, r.n)
        for r in ren.rows
        if r.slice not in split_by_id
    }
    want = {
        (r.slice, r.attack, r.metric): (r.value, r.n)
        for r in rel.rows
        if r.slice not in split_by_id
    }
    assert set(got) == set(want) and len(want) > 100
    for key, (value, n) in want.items():
        assert got[key][1] == n, key
        assert got[key][0] == pytest.approx(value, abs=1e-6), key
    assert ren.provenance["world"]["manifest_sha256"]
    assert ren.provenance["world"]["vocabulary"]["name"] == "renamed"


@pytest.mark.parametrize("backbone", ["relsafe-mini", "tiny-hf"])
def test_an_edit_and_the_relational_suite_run_on_the_renamed_world(
    renamed_world: dict[str, Any], tiny_clip_dir: Path, tmp_path: Path, backbone: str
) -> None:
    model = "relsafe-mini" if backbone == "relsafe-mini" else str(tiny_clip_dir)
    world = {"data": str(renamed_world["manifest"])}
    out = api.edit(
        "relational-lora",
        out=tmp_path / "edit",
        model=model,
        policy=str(renamed_world["policy"]),
        world=world,
        config={
            "steps": 3,
            "data": {
                "texts_per_forget_tuple": 4,
                "images_per_forget_tuple": 2,
                "texts_per_retain_tuple": 1,
                "images_per_retain_tuple": 1,
                "n_unrelated": 4,
                "size": 32,
            },
        },
        progress=False,
    )
    prov = api_provenance(out.out)
    assert prov["world"]["vocabulary"]["name"] == "renamed"
    assert any(Path(c["path"]).name == "manifest.csv" for c in prov["checkpoints"])
    res = api.evaluate(
        "relational",
        model=str(out.out),
        policy=str(renamed_world["policy"]),
        world=world,
        reference=model,
        config={**_rel_config(), "n_per_tuple": 1, "size": 32},
        progress=False,
    )
    unsafe = load_policy(renamed_world["policy"]).unsafe[0].id
    slices = {r.slice for r in res.rows}
    assert unsafe in slices and "unrelated:unseen" in slices
    assert not any(w in s for s in slices for w in ("child", "wine", "drinking"))


def api_provenance(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "provenance.json").read_text(encoding="utf-8"))


EVERY_SUITE = {
    "zeroshot": {"n_per_tuple": 1, "size": 32, "paraphrase_variants": 1, "corruptions": []},
    "relational": {"n_per_tuple": 1, "size": 32, "text_variants": 1, "corruptions": ["noise"]},
    "safeground": {"n_per_pair": 2, "size": 32},
    "visu": {"n_per_pair": 2, "size": 32},
    "unsafe_cls": {"n_images_per_tuple": 1, "n_val_images_per_tuple": 1, "size": 32},
}


def test_a_policy_outside_relworld_runs_every_method_and_suite_and_the_report_names_the_world(
    renamed_world: dict[str, Any], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    from relsafe.eval.rows import read_rows

    vocab_file = renamed_world["root"] / "vocab.yaml"
    cfg = {
        "model": str(tiny_clip_dir),
        "policy": str(renamed_world["policy"]),
        "world": {"vocabulary": str(vocab_file), "data": str(renamed_world["manifest"])},
        "methods": EVERY_METHOD,
        "suites": EVERY_SUITE,
        "seeds": 1,
        "examples": 2,
    }
    api.run(cfg, out=tmp_path / "run", progress=False)
    rows = read_rows(tmp_path / "run" / "results.jsonl")
    assert {r.method for r in rows} >= {"original", *(m["name"] for m in EVERY_METHOD)}
    assert {r.suite for r in rows} == set(EVERY_SUITE)
    assert not any(r.attack.startswith("ood:") for r in rows)  # no RelWorld styles here
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text(encoding="utf-8"))
    sha = load_manifest(renamed_world["manifest"], load_vocabulary(vocab_file)).sha256
    assert prov["world"]["manifest_sha256"] == sha
    report = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "vocabulary renamed" in report and sha[:12] in report and "manifest.csv" in report


# ---- no word is special in code ------------------------------------------------------------------


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String literals of a module that are not docstrings or comments (statement strings)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_no_relworld_word_is_written_into_code_outside_world() -> None:
    vocab = default_vocabulary()
    words = sorted({*vocab.subjects, *vocab.relations, *vocab.objects}, key=len, reverse=True)
    pattern = re.compile(r"(?<![-\w])(" + "|".join(words) + r")(?![-\w])")  # not -apple-system
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "world":
            continue
        for line, text in _code_strings(path):
            if m := pattern.search(text):
                hits.append(f"{rel}:{line}: {m.group(0)!r} in {text[:60]!r}")
    assert not hits, "RelWorld words in code (they belong in world/ or a policy):\n" + "\n".join(
        hits
    )


def test_the_word_scan_finds_a_planted_word(tmp_path: Path) -> None:
    planted = tmp_path / "m.py"
    planted.write_text(
        '"""a child|drinking|wine docstring"""\nX = "a glass of wine"\n', encoding="utf-8"
    )
    assert [t for _, t in _code_strings(planted)] == ["a glass of wine"]


def test_a_relative_vocabulary_path_is_the_policy_folders_not_the_working_directorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/policies.md: a relative ``vocabulary:`` is relative to the policy file; a file of the
    same name in the working directory never stands in for it."""
    (tmp_path / "pol").mkdir()
    (tmp_path / "cwd").mkdir()
    _write(tmp_path / "pol" / "kitchen.yaml", KITCHEN)
    _write(tmp_path / "cwd" / "kitchen.yaml", {"name": "impostor", "subjects": ["x"]})
    pol_path = _write(
        tmp_path / "pol" / "policy.yaml",
        {"vocabulary": "kitchen.yaml", "unsafe": ["child|holding|knife"]},
    )
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_policy(pol_path).vocabulary.name == "kitchen-safety"


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("subjects", "child", "heldout"), ["A  Kid"], "both train and held-out"),
        (("subjects", "dog", "heldout"), ["a DOG "], "both train and held-out"),
        (("templates", "heldout"), ["A photo of {s}  {r} {o}"], "both train and held-out"),
        (("contexts", "heldout"), ["{c} In a Kitchen"], "both train and held-out"),
    ],
)
def test_held_out_phrasings_differ_from_train_ones_as_the_tokenizer_reads_them(
    tmp_path: Path, path: tuple[str, ...], value: list[str], words: str
) -> None:
    """Case and spacing are invisible to the (uncased, whitespace-splitting) tokenizers, so a
    held-out phrasing that differs from a train one only there would leak it."""
    import copy

    data = copy.deepcopy(KITCHEN)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=words):
        load_vocabulary(_write(tmp_path / "v.yaml", data))
