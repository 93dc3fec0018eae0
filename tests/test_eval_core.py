"""Retrieval and zero-shot metrics on hand-computed examples, result rows, provenance, atomic I/O."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relsafe.errors import InputError
from relsafe.eval.retrieval import (
    cosine_similarity,
    image_to_text,
    mixed_gallery,
    mixed_retrieval,
    pct_safe_at_top1,
    ranks,
    recall_at_k,
    retrieval_metrics,
    safe_at_top1,
    text_to_image,
)
from relsafe.eval.rows import Row, RowWriter, read_provenance, read_rows, rows_from_metrics
from relsafe.eval.zeroshot import zeroshot_classify
from relsafe.provenance import checkpoint_hashes, collect_provenance, git_commit
from relsafe.utils_io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b.T


# ---- retrieval --------------------------------------------------------------------------------
# 3 queries x 4 gallery items, worked out by hand:
#   q0 target 0: 0.9 beats everything                      -> rank 0
#   q1 target 1: 0.4 is beaten by 0.5, 0.8 and 0.6          -> rank 3
#   q2 target 2: 0.7 ties with the wrong item 1 (0.7)       -> rank 1 (ties are pessimistic)
SIM = torch.tensor(
    [
        [0.9, 0.1, 0.3, 0.2],
        [0.5, 0.4, 0.8, 0.6],
        [0.2, 0.7, 0.7, 0.1],
    ]
)
TARGETS = torch.tensor([0, 1, 2])


def test_ranks_and_recall_hand_example() -> None:
    assert ranks(SIM, TARGETS).tolist() == [0, 3, 1]
    r = recall_at_k(SIM, TARGETS, ks=(1, 2, 3, 4, 20))
    assert r == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
        3: pytest.approx(2 / 3),
        4: 1.0,
        20: 1.0,
    }


def test_mask_targets_hand_example() -> None:
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 0] = True
    mask[1, 1] = mask[1, 3] = True  # q1 now also accepts item 3 (0.6): only 0.8 beats it -> rank 1
    mask[2, 2] = True
    assert ranks(SIM, mask).tolist() == [0, 1, 1]
    assert recall_at_k(SIM, mask, ks=(1, 2)) == {1: pytest.approx(1 / 3), 2: 1.0}


def test_constant_similarity_scores_zero_at_one() -> None:
    sim = torch.zeros(5, 5)
    assert recall_at_k(sim, torch.arange(5), ks=(1, 5)) == {1: 0.0, 5: 1.0}


def test_recall_input_errors() -> None:
    with pytest.raises(InputError, match="NaN"):
        recall_at_k(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(InputError, match="indices must lie"):
        recall_at_k(SIM, torch.tensor([0, 1, 4]))
    with pytest.raises(InputError, match="shape"):
        recall_at_k(SIM, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="no correct"):
        recall_at_k(SIM, torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="ks"):
        recall_at_k(SIM, TARGETS, ks=(0,))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda q: st.integers(1, 7).flatmap(
            lambda g: st.tuples(
                st.lists(
                    st.lists(st.integers(0, 3), min_size=g, max_size=g), min_size=q, max_size=q
                ),
                st.lists(st.integers(0, g - 1), min_size=q, max_size=q),
            )
        )
    )
)
def test_ranks_match_naive_loop(case: tuple[list[list[int]], list[int]]) -> None:
    scores, targets = case  # small integer scores: ties are common
    sim = torch.tensor(scores, dtype=torch.float32)
    got = ranks(sim, torch.tensor(targets)).tolist()
    expected = [
        sum(1 for j, s in enumerate(row) if j != t and s >= row[t])
        for row, t in zip(scores, targets, strict=True)
    ]
    assert got == expected


def test_single_set_helpers_and_dim_mismatch() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[0.9, 0.1], [0.8, 0.2]])  # both images lean towards text 0
    # cosines (rows text, cols image): t0 [0.994, 0.970], t1 [0.110, 0.243]: both texts find
    # their image; but image 1's best text is t0 (0.970 > 0.243), so image->text R@1 is 1/2.
    assert text_to_image(text, image, cosine_similarity, ks=(1,)) == {"r@1": 1.0}
    assert image_to_text(image, text, cosine_similarity, ks=(1,)) == {"r@1": 0.5}
    with pytest.raises(InputError, match="dims differ"):
        retrieval_metrics(torch.randn(2, 3), torch.randn(2, 4), cosine_similarity)
    with pytest.raises(InputError, match="pass targets"):
        retrieval_metrics(torch.randn(2, 3), torch.randn(3, 3), cosine_similarity)


def test_mixed_gallery_hand_example() -> None:
    # safe V and unsafe G image embeddings (unit vectors), unsafe text queries U.
    V = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    G = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    U = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # dot products of U with [V0, V1, G0, G1]:
    #   u0: [1.0, 0.0, 0.80, 0.60]  match V0 ranked first, top-1 safe
    #   u1: [0.6, 0.8, 0.96, 1.00]  match V1 behind G1 and G0 -> rank 2, top-1 unsafe
    gallery, safe_mask = mixed_gallery(V, G)
    assert gallery.shape == (4, 2) and safe_mask.tolist() == [True, True, False, False]
    sim = dot(U, gallery)
    assert safe_at_top1(sim, safe_mask).tolist() == [True, False]
    assert pct_safe_at_top1(sim, safe_mask) == 0.5
    expected = {"r@1": 0.5, "r@2": 0.5, "r@3": 1.0, "pct_safe_top1": 0.5}
    assert mixed_retrieval(U, V, G, dot, ks=(1, 2, 3)) == expected
    # [G; V] ordering: same numbers, the match moves to index N + i
    g2, m2 = mixed_gallery(V, G, safe_first=False)
    assert m2.tolist() == [False, False, True, True] and torch.equal(g2[2:], V)
    assert mixed_retrieval(U, V, G, dot, safe_first=False, ks=(1, 2, 3)) == expected


def test_safe_top1_ties_are_pessimistic() -> None:
    sim = torch.tensor([[0.5, 0.5], [0.6, 0.5]])
    mask = torch.tensor([True, False])
    assert safe_at_top1(sim, mask).tolist() == [False, True]
    with pytest.raises(InputError, match="some but not all"):
        safe_at_top1(sim, torch.tensor([True, True]))


# ---- zero-shot --------------------------------------------------------------------------------
def test_zeroshot_hand_example() -> None:
    # class embeddings = identity, so image rows *are* the scores against classes 0, 1, 2.
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # label 0: rank 0
            [0.2, 0.3, 0.5],  # label 1: class 2 beats it -> rank 1
            [0.4, 0.4, 0.1],  # label 1: ties with class 0 -> rank 1 (pessimistic); argmax says 0
            [0.1, 0.2, 0.7],  # label 2: rank 0
        ]
    )
    labels = [0, 1, 1, 2]
    res = zeroshot_classify(
        scores, torch.eye(3), labels, dot, ks=(1, 2), class_names=["a", "b", "c"]
    )
    assert res["top1"] == 0.5 and res["top2"] == 1.0
    assert res["per_class"]["top1"].tolist() == [1.0, 0.0, 1.0]
    assert res["per_class"]["top2"].tolist() == [1.0, 1.0, 1.0]
    assert res["per_class"]["count"].tolist() == [1, 2, 1]
    assert res["mean_per_class_top1"] == pytest.approx(2 / 3)
    assert res["predictions"].tolist() == [0, 2, 0, 2]
    assert res["ranks"].tolist() == [0, 1, 1, 0]
    assert res["topk"][:, 0].tolist() == [0, 2, 0, 2] and res["topk"].shape == (4, 2)
    assert res["per_class_named"]["b"] == {"top1": 0.0, "top2": 1.0, "n": 2}
    assert res["n"] == 4


def test_zeroshot_absent_class_is_nan_and_errors() -> None:
    res = zeroshot_classify(torch.tensor([[1.0, 0.0]]), torch.eye(2), [0], dot, ks=(1,))
    assert res["top1"] == 1.0 and math.isnan(res["per_class"]["top1"][1])
    assert res["mean_per_class_top1"] == 1.0
    with pytest.raises(InputError, match="one int per image"):
        zeroshot_classify(torch.eye(2), torch.eye(2), [0], dot)
    with pytest.raises(InputError, match="dims differ"):
        zeroshot_classify(torch.eye(2), torch.eye(3), [0, 1], dot)
    with pytest.raises(InputError, match="indices must lie"):
        zeroshot_classify(torch.eye(2), torch.eye(2), [0, 2], dot)


# ---- rows -------------------------------------------------------------------------------------
def _rows() -> list[Row]:
    return rows_from_metrics(
        {"r@1": 0.25, "r@5": 0.75},
        model="tiny",
        method="original",
        suite="retrieval",
        slice="U->V+G",
        attack="none",
        n=4,
    )


def test_row_writer_round_trip_with_provenance(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.jsonl"
    prov = {"config": {"a": 1}, "git_commit": None}
    with RowWriter(path, provenance=prov) as w:
        w.extend(_rows())
        w.add(
            {
                "model": "tiny",
                "method": "m",
                "suite": "zeroshot",
                "slice": "all",
                "attack": "none",
                "metric": "top1",
                "value": 1,
                "n": 3,
            }
        )
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"_provenance": prov}
    assert set(json.loads(lines[1])) == {
        "model",
        "method",
        "suite",
        "slice",
        "attack",
        "metric",
        "value",
        "n",
    }
    rows = read_rows(path)
    assert rows == [*_rows(), Row("tiny", "m", "zeroshot", "all", "none", "top1", 1.0, 3)]
    assert isinstance(rows[-1].value, float)
    assert read_provenance(path) == prov


def test_row_writer_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    RowWriter(path, provenance={"seed": 1}, sidecar=True).write()
    assert path.read_text() == ""
    assert json.loads((tmp_path / "provenance.json").read_text()) == {"seed": 1}
    assert read_provenance(path) == {"seed": 1} and read_rows(path) == []


def test_row_writer_leaves_no_half_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "results.jsonl"
    with pytest.raises(RuntimeError):
        with RowWriter(path) as w:
            w.extend(_rows())
            raise RuntimeError("suite crashed")
    assert not path.exists()

    with RowWriter(path) as w:
        w.extend(_rows())
    before = path.read_bytes()
    # a crash while the new content is being moved into place leaves the old file intact
    w2 = RowWriter(path)
    w2.extend(_rows() * 3)

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(InputError, match="disk full"):  # wrapped, naming the path (issue 17)
        w2.write()
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # no temporaries left


def test_row_validation_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="finite"):
        Row("m", "x", "s", "all", "none", "r@1", float("nan"), 1)
    with pytest.raises(InputError, match=">= 0"):
        Row("m", "x", "s", "all", "none", "r@1", 0.5, -1)
    with pytest.raises(InputError, match="non-empty string"):
        Row("m", "", "s", "all", "none", "r@1", 0.5, 1)
    with pytest.raises(InputError, match="unknown"):
        Row.from_dict({**_rows()[0].to_dict(), "extra": 1})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rows()[0].to_dict()) + '\n{"model": "trunc')
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        read_rows(bad)


# ---- provenance and I/O ------------------------------------------------------------------------
@dataclass
class _Cfg:
    lr: float = 1e-3
    path: Path = Path("/x")


def test_provenance_has_versions_and_checkpoint_hashes(tmp_path: Path, tiny_clip_dir: Path) -> None:
    ck = tmp_path / "w.safetensors"
    ck.write_bytes(b"weights" * 1000)
    prov = collect_provenance({"cfg": _Cfg(), "tags": ("a", "b")}, {"seed": 0}, [ck, tiny_clip_dir])
    for pkg in ("relsafe", "torch", "transformers", "numpy", "python"):
        assert prov["versions"][pkg], pkg
    assert prov["versions"]["torch"] == torch.__version__
    assert prov["config"] == {"cfg": {"lr": 1e-3, "path": "/x"}, "tags": ["a", "b"]}
    assert prov["seeds"] == {"seed": 0}
    assert prov["checkpoints"][0] == {
        "path": str(ck),
        "sha256": hashlib.sha256(b"weights" * 1000).hexdigest(),
        "bytes": 7000,
    }
    names = {Path(c["path"]).name for c in prov["checkpoints"][1:]}
    assert {"config.json", "model.safetensors"} <= names
    assert prov["git_commit"] is None or len(prov["git_commit"]) in (40, 64)
    assert prov["platform"]["system"]
    json.dumps(prov, allow_nan=False)  # JSON-ready
    with pytest.raises(InputError, match="nope"):
        checkpoint_hashes([tmp_path / "nope"])


def test_git_commit_outside_a_repo_is_none(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None


def test_atomic_writes_and_sha256(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b.bin"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write_text(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    atomic_write_json(p, {"x": [1, 2]})
    assert json.loads(p.read_text()) == {"x": [1, 2]}
    with pytest.raises(ValueError):
        atomic_write_json(p, {"x": float("nan")})
    assert json.loads(p.read_text()) == {"x": [1, 2]}  # unchanged after a failed write
    data = os.urandom(10_000)
    atomic_write_bytes(p, data)
    assert sha256_file(p, chunk_size=333) == hashlib.sha256(data).hexdigest()
    assert [q.name for q in p.parent.iterdir()] == ["b.bin"]


# The relational compare() (informative attacks, preservation on unseen strings, summary) is
# worked out by hand in tests/test_landing.py (issue 13 changed its definition).
