"""Gallery indexes on a cosine model (relsafe-mini, quicker to load than building the tiny
CLIP): FAISS equals exact search, IVF and HNSW reach their calibrated recall, builds resume after
an interruption without recomputing finished shards, damaged files and other models are refused,
and ``filter`` drops flagged items while still returning ``k``. The hyperbolic side is
tests/test_gallery_hysac.py."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from relsafe.errors import CheckpointError, InputError

WORDS = "red blue green cat dog bird wine juice beer toy child adult drinking eating".split()


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) + f" {i}" for i in range(n)
    ]


@pytest.fixture(scope="module")
def mini() -> Any:
    from relsafe.models.registry import load_model

    return load_model("relsafe-mini")


@pytest.fixture(scope="module")
def safety(mini: Any) -> Any:
    """relsafe-mini with a prompt classifier ('wine' / 'beer' against 'juice' / 'toy'), its
    threshold at the median score of a sample so that about half of any gallery is flagged."""
    from relsafe.engine import EmbeddingEngine
    from relsafe.eval.unsafe_cls import UnsafeClassifier
    from relsafe.safety import SafetyModel

    engine = EmbeddingEngine(mini, device="cpu", progress=False, num_workers=0)
    params = {
        "unsafe": engine.embed_texts(["wine", "beer drinking"]),
        "safe": engine.embed_texts(["juice", "toy"]),
    }
    clf = UnsafeClassifier("prompt", {"text": 0.0}, params)
    sample = engine.embed_texts(_texts(200, 99))
    clf.thresholds["text"] = float(clf.score(mini, sample, "text").median())
    return SafetyModel(mini, clf, None, engine=engine, spec="relsafe-mini")


@pytest.fixture(scope="module")
def gallery_texts() -> list[str]:
    return _texts(300, 0)


@pytest.fixture(scope="module")
def flat_index(safety: Any, gallery_texts: list[str], tmp_path_factory: Any) -> Any:
    from relsafe.gallery import build_index

    out = tmp_path_factory.mktemp("flat") / "idx"
    return build_index(safety, texts=gallery_texts, out=out, faiss="flat", progress=False)


def _exact(safety: Any, index: Any, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    sim = safety.model.similarity(q, index.vectors)
    return torch.topk(sim, k, dim=1)


def test_flat_and_none_equal_exact_search(
    safety: Any, flat_index: Any, gallery_texts: list[str], tmp_path: Path
) -> None:
    from relsafe.gallery import build_index

    q = safety.embed_texts(["red wine", "a dog eating", "juice toy child", gallery_texts[7]])
    es, ei = _exact(safety, flat_index, q, 10)
    s, i = flat_index.search(q, 10, safety.model.similarity)
    assert torch.equal(i, ei)
    assert torch.allclose(s, es, atol=1e-6)
    assert int(i[3, 0]) == 7  # a gallery text finds itself first
    none = build_index(
        safety, texts=gallery_texts, out=tmp_path / "n", faiss="none", progress=False
    )
    assert none.faiss is None and none.meta["faiss"] == {"kind": "none"}
    s2, i2 = none.search(q, 10, safety.model.similarity)
    assert torch.equal(i2, ei) and torch.allclose(s2, es, atol=1e-6)
    # k beyond the gallery is clipped to its size
    s3, _ = none.search(q[:1], 1000, safety.model.similarity)
    assert s3.shape == (1, 300)


def test_index_records_items_scores_and_files(
    safety: Any, flat_index: Any, gallery_texts: list[str]
) -> None:
    meta = flat_index.meta
    assert meta["size"] == 300 and meta["modality"] == "text"
    assert set(meta["files"]) == {"vectors.safetensors", "items.jsonl", "faiss.index"}
    assert flat_index.ids[5] == "text:5" and flat_index.texts[5] == gallery_texts[5]
    emb = safety.embed_texts(gallery_texts[:20])
    a = safety.assess(emb, "text")
    assert torch.allclose(flat_index.safety_scores[:20], a.scores, atol=1e-6)
    assert torch.equal(flat_index.flagged[:20], a.flagged)
    assert 50 < int(flat_index.flagged.sum()) < 250
    assert not (flat_index.path / "shards").exists()
    assert meta["provenance"]["created"] and "checkpoints" in meta["provenance"]


def _clustered(n: int, d: int, n_clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    x = centres[rng.integers(0, n_clusters, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_reach_the_calibrated_recall(kind: str) -> None:
    import faiss

    from relsafe.gallery.faiss_index import build_faiss

    n = 20000 if kind == "ivf" else 5000
    full = _clustered(n + 500, 32, 100, 0)
    x, q = full[:n], full[n:]  # q: fresh queries from the same distribution
    index, params = build_faiss(x, lambda rows: x[rows], kind, seed=0)
    assert params["calibration"]["recall_at_10"] >= 0.95
    if kind == "ivf":
        # 4 sqrt(N) lists, at most N / 39 (FAISS wants 39 training points per centroid)
        assert params["nlist"] == min(round(4 * np.sqrt(len(x))), len(x) // 39)
        assert 1 <= params["nprobe"] < params["nlist"]  # approximate, not exhaustive
    flat = faiss.IndexFlatIP(32)
    flat.add(x)
    _, truth = flat.search(q, 10)
    _, found = index.search(q, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95, (recall, params)


def test_auto_rule_and_bad_kind() -> None:
    from relsafe.gallery.faiss_index import FLAT_MAX, choose_kind

    assert choose_kind("auto", FLAT_MAX) == "flat"
    assert choose_kind("auto", FLAT_MAX + 1) == "ivf"
    assert choose_kind("hnsw", 10) == "hnsw"
    with pytest.raises(InputError, match="--faiss must be one of"):
        choose_kind("annoy", 10)


def test_resume_after_an_interrupted_build(
    safety: Any, gallery_texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relsafe.gallery import build_index

    texts = gallery_texts[:50]
    ref = build_index(safety, texts=texts, out=tmp_path / "ref", shard_size=10, progress=False)

    def stop_after_1(shard: int) -> None:
        if shard == 1:
            raise KeyboardInterrupt

    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(
            safety, texts=texts, out=out, shard_size=10, progress=False, on_shard=stop_after_1
        )
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "00000.safetensors",
        "00001.safetensors",
        "plan.json",
    ]
    assert not (out / "index.json").exists()
    with pytest.raises(CheckpointError, match="unfinished build"):
        from relsafe.gallery import load_index

        load_index(out)
    embedded: list[int] = []
    real = safety.embed

    def counting(modality: str, items: Any) -> torch.Tensor:
        embedded.append(len(items))
        return real(modality, items)

    monkeypatch.setattr(safety, "embed", counting)
    res = build_index(safety, texts=texts, out=out, shard_size=10, progress=False)
    assert embedded == [10, 10, 10]  # shards 0 and 1 were not recomputed
    assert torch.equal(res.vectors, ref.vectors)
    assert torch.equal(res.safety_scores, ref.safety_scores)
    assert res.ids == ref.ids and not (out / "shards").exists()


def test_a_changed_gallery_is_refused_and_a_finished_index_kept(
    safety: Any, gallery_texts: list[str], tmp_path: Path
) -> None:
    from relsafe.gallery import build_index

    out = tmp_path / "idx"

    def stop(shard: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(safety, texts=gallery_texts[:30], out=out, shard_size=10, on_shard=stop)
    with pytest.raises(InputError, match="different gallery or model.*items_sha256"):
        build_index(safety, texts=gallery_texts[1:31], out=out, shard_size=10, progress=False)
    build_index(safety, texts=gallery_texts[1:31], out=out, shard_size=10, overwrite=True)
    with pytest.raises(InputError, match="exists; pass --overwrite to replace it"):
        build_index(safety, texts=gallery_texts[:30], out=out, progress=False)


@pytest.mark.parametrize("name", ["vectors.safetensors", "faiss.index", "items.jsonl"])
def test_truncated_files_are_refused_by_name(
    safety: Any, gallery_texts: list[str], tmp_path: Path, name: str
) -> None:
    from relsafe.gallery import build_index, load_index

    out = tmp_path / "idx"
    build_index(safety, texts=gallery_texts[:40], out=out, progress=False)
    data = (out / name).read_bytes()
    (out / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{name}.*truncated"):
        load_index(out)
    (out / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(CheckpointError, match=rf"{name}.*sha256"):
        load_index(out)


def test_unreadable_faiss_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    from relsafe.gallery.faiss_index import read_faiss

    bad = tmp_path / "faiss.index"
    bad.write_bytes(b"IxFI" + b"\0" * 20)
    with pytest.raises(CheckpointError, match="faiss.index: not a readable FAISS index"):
        read_faiss(bad, {"kind": "flat"})


def test_another_model_is_refused(safety: Any, flat_index: Any, tmp_path: Path) -> None:
    from relsafe.gallery import load_index
    from relsafe.gallery.search import search_embeddings
    from relsafe.models.registry import load_model
    from relsafe.safety import SafetyModel

    with pytest.raises(CheckpointError, match="built with a different model"):
        load_index(flat_index.path, model_fingerprint="0" * 64)
    other = load_model("relsafe-mini")
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    sm = SafetyModel(other, safety.classifier, None, spec="changed")
    with pytest.raises(CheckpointError, match="different model"):
        search_embeddings(sm, flat_index, safety.embed_texts(["x"]), "text")
    with pytest.raises(CheckpointError, match="not a gallery index"):
        load_index(tmp_path)


def test_filter_drops_flagged_and_still_returns_k(safety: Any, flat_index: Any) -> None:
    from relsafe.gallery.search import search_embeddings

    q = safety.embed_texts(["red wine beer drinking", "a toy", "cat"])
    off = search_embeddings(safety, flat_index, q, "text", k=10, mode="off")
    filt = search_embeddings(safety, flat_index, q, "text", k=10, mode="filter")
    _, full = flat_index.search(q, flat_index.size, safety.model.similarity)
    for j, (o, f) in enumerate(zip(off, filt, strict=True)):
        assert len(f.hits) == 10 and not any(h.flagged for h in f.hits)
        # the model's ranking with flagged items removed
        safe_order = [int(i) for i in full[j] if not bool(flat_index.flagged[i])][:10]
        assert [h.index for h in f.hits] == safe_order
        n_dropped = sum(h.flagged for h in o.hits)
        assert f.acted == (n_dropped > 0 or safe_order != [h.index for h in o.hits])
        assert f.mode == "filter" and ("dropped" in f.reason or "nothing dropped" in f.reason)
    assert any(h.flagged for o in off for h in o.hits)  # the filter had something to do


def test_filter_with_too_few_safe_items(safety: Any, flat_index: Any, tmp_path: Path) -> None:
    from relsafe.gallery import build_index
    from relsafe.gallery.search import search_embeddings

    texts = [flat_index.texts[i] for i in range(300) if flat_index.flagged[i]][:20]
    texts += [flat_index.texts[i] for i in range(300) if not flat_index.flagged[i]][:3]
    idx = build_index(safety, texts=texts, out=tmp_path / "i", progress=False)
    r = search_embeddings(safety, idx, safety.embed_texts(["wine"]), "text", k=10, mode="filter")[0]
    assert len(r.hits) == 3 and not any(h.flagged for h in r.hits)
    assert "only 3 unflagged" in r.reason


def test_redirect_without_a_rule_is_a_clear_error(safety: Any, flat_index: Any) -> None:
    from relsafe.gallery.search import search_embeddings

    with pytest.raises(InputError, match="cannot redirect"):
        search_embeddings(safety, flat_index, safety.embed_texts(["wine"]), "text", mode="redirect")
    with pytest.raises(InputError, match="safety mode must be one of"):
        search_embeddings(safety, flat_index, safety.embed_texts(["wine"]), "text", mode="block")
    with pytest.raises(InputError, match="k must be"):
        search_embeddings(safety, flat_index, safety.embed_texts(["wine"]), "text", k=0)


def test_image_gallery_ids_and_cross_modal_search(safety: Any, tmp_path: Path) -> None:
    from PIL import Image

    from relsafe.gallery import build_index
    from relsafe.gallery.search import search

    # the text-only classifier cannot score images: refused before any embedding
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = root / ("sub" if i % 2 else "") / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    with pytest.raises(InputError, match="no image threshold"):
        build_index(safety, images=paths, root=root, out=tmp_path / "x", progress=False)
    clf = type(safety.classifier)(
        "prompt", {**safety.classifier.thresholds, "image": 0.0}, safety.classifier.params
    )
    sm = type(safety)(safety.model, clf, None, engine=safety.engine, spec="relsafe-mini")
    idx = build_index(sm, images=paths, root=root, out=tmp_path / "i", progress=False)
    assert idx.ids[1] == "sub/im1.png" and idx.paths[1] == str(paths[1].resolve())
    r = search(sm, idx, text="red wine", k=3)
    assert len(r.hits) == 3 and r.hits[0].path is not None
    r2 = search(sm, idx, image=paths[4], k=1)
    assert r2.hits[0].id == "im4.png"
