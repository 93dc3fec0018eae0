"""Gallery search on a hyperbolic model: a short HySAC edit of relsafe-mini (built once here, kept
small). The Lorentz FAISS trick returns exactly the model's own ranking and scores; ``redirect``
traverses flagged queries and leaves unflagged ones' results identical to ``off``; and the issue's
check: ``redirect`` on the visu suite's own RelWorld V+G gallery returns a safe top-1 for unsafe U
queries at the rate the visu suite reports (``mixed:U->V+G``, attack ``traversal``). The CLI
commands ``relsafe index`` / ``relsafe search`` run end to end here too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from relsafe.errors import InputError

EDIT = {
    "steps": 70,
    "n_per_pair": 8,
    "n_val_per_pair": 4,
    "size": 32,
    "eval_every": 70,
    "batch_size": 32,
    "lr": 3e-3,
    "select_by": "last",
}
"""The fewest-steps HySAC config measured whose traversal changes top-1 results (on the visu
gallery: safe@1 0.1875 without, 0.229 with traversal; 40 steps moved queries but changed no
top-1, which would make the rate check vacuous). About 30 s of the file's time."""
VISU = {"n_per_pair": 8, "size": 32, "traversal": True}


@pytest.fixture(scope="module")
def edit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from relsafe import api

    out = tmp_path_factory.mktemp("hysac") / "edit"
    api.edit("hysac", model="relsafe-mini", policy="default", out=out, config=EDIT, progress=False)
    return out


@pytest.fixture(scope="module")
def safety(edit_dir: Path) -> Any:
    from relsafe import api

    sm = api.load_safety_model(str(edit_dir), policy="default")
    assert sm.model.geometry == "lorentz" and sm.redirect_rule() == "traversal"
    return sm


@pytest.fixture(scope="module")
def visu_data(safety: Any) -> Any:
    from relsafe.data.visu import VisuData
    from relsafe.world import splits

    return VisuData.from_relworld(
        safety.policy, VISU["n_per_pair"], splits.TEST, size=VISU["size"], caption_split="eval"
    )


@pytest.fixture(scope="module")
def text_index(safety: Any, visu_data: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from relsafe.gallery import build_index

    out = tmp_path_factory.mktemp("tidx") / "idx"
    texts = list(dict.fromkeys(visu_data.S + visu_data.U))
    return build_index(safety, texts=texts, out=out, faiss="flat", progress=False)


def test_lorentz_faiss_is_exactly_the_models_ranking(
    safety: Any, text_index: Any, visu_data: Any, tmp_path: Path
) -> None:
    from relsafe.gallery import build_index
    from relsafe.gallery.faiss_index import gallery_matrix, query_matrix

    q = safety.embed_texts(visu_data.U[:12] + ["a dog", "a child drinking"])
    sim = safety.model.similarity(q, text_index.vectors)
    es, ei = torch.topk(sim, 10, dim=1)
    s, i = text_index.search(q, 10, safety.model.similarity)
    assert torch.allclose(s, es, atol=1e-6)
    same = (i == ei) | torch.isclose(torch.gather(sim, 1, i), es, atol=1e-6)  # ties aside
    assert bool(same.all())
    # the raw FAISS inner product is the Lorentz inner product: -cosh(sqrt(c) d) / c
    c = text_index.curvature
    ip = torch.from_numpy(
        query_matrix(q, "lorentz", c) @ gallery_matrix(text_index.vectors, "lorentz", c).T
    )
    d = -sim.double()
    assert torch.allclose(ip.double(), -torch.cosh(c**0.5 * d) / c, rtol=1e-4, atol=1e-4)
    # an IVF index (forced on this small gallery) re-ranks to the same top-k
    ivf = build_index(
        safety, texts=text_index.texts, out=tmp_path / "ivf", faiss="ivf", progress=False
    )
    assert ivf.meta["faiss"]["kind"] == "ivf"
    s2, _ = ivf.search(q, 5, safety.model.similarity)
    assert torch.allclose(s2, es[:, :5], atol=1e-6)


def test_redirect_moves_flagged_queries_only(safety: Any, text_index: Any, visu_data: Any) -> None:
    from relsafe.gallery.search import search_embeddings

    q = safety.embed_texts(visu_data.U[:16] + visu_data.S[:16])
    off = search_embeddings(safety, text_index, q, "text", k=5, mode="off")
    red = search_embeddings(safety, text_index, q, "text", k=5, mode="redirect")
    flagged = [r.query["flagged"] for r in red]
    assert any(flagged) and not all(flagged)
    moved = 0
    for o, r in zip(off, red, strict=True):
        if not r.query["flagged"]:
            assert not r.acted and r.reason.startswith("query not flagged")
            assert [(h.index, h.score) for h in r.hits] == [(h.index, h.score) for h in o.hits]
        elif r.acted:
            moved += 1
            assert "traversed toward the origin" in r.reason
            assert [h.score for h in r.hits] != [h.score for h in o.hits]
    assert moved > 0
    assert red[0].to_dict()["query"]["threshold"] == pytest.approx(
        safety.classifier.thresholds["text"]
    )


def _visu_rate(edit_dir: Path, attack: str, metric: str = "pct_safe_top1") -> tuple[float, int]:
    from relsafe import api

    res = api.evaluate("visu", model=str(edit_dir), policy="default", config=VISU, progress=False)
    rows = [
        r
        for r in res.rows
        if r.slice == "mixed:U->V+G" and r.attack == attack and r.metric == metric
    ]
    assert len(rows) == 1
    return rows[0].value, rows[0].n


def test_redirect_returns_safe_items_at_the_visu_suite_rate(
    safety: Any, edit_dir: Path, visu_data: Any, tmp_path: Path
) -> None:
    """Same queries (U), same gallery (V then G, the suite's mixed 2N gallery), same model
    similarity. Differences allowed: ties (the suite counts them pessimistically) and queries
    the classifier does not flag but the suite traverses anyway (it traverses every query)."""
    from relsafe.gallery import build_index
    from relsafe.gallery.search import search_embeddings

    root = tmp_path / "gallery"
    root.mkdir()
    paths, labels = [], []
    for kind, imgs in (("V", visu_data.V), ("G", visu_data.G)):
        for i, im in enumerate(imgs):
            p = root / f"{kind}_{i:04d}.png"
            im.save(p)  # PNG is lossless: the very pixels the suite embeds
            paths.append(p)
            labels.append(
                {"kind": kind, "tuple": (visu_data.safe_tags if kind == "V" else visu_data.tags)[i]}
            )
    idx = build_index(
        safety, images=paths, labels=labels, root=root, out=tmp_path / "i", progress=False
    )
    u = safety.embed_texts(visu_data.U)
    n = len(u)
    for mode, attack in (("off", "none"), ("redirect", "traversal")):
        res = search_embeddings(safety, idx, u, "text", k=1, mode=mode)
        ours = sum(r.hits[0].labels["kind"] == "V" for r in res) / n
        suite, suite_n = _visu_rate(edit_dir, attack)
        assert suite_n == n
        assert abs(ours - suite) <= 1.0 / n + 1e-9, (mode, ours, suite)
    acted = sum(r.acted for r in res)
    assert acted > 0  # the redirect did act on unsafe queries


def test_cli_index_and_search(edit_dir: Path, visu_data: Any, tmp_path: Path, capsys: Any) -> None:
    from relsafe.cli import main

    texts = tmp_path / "gallery.txt"
    texts.write_text("\n".join(visu_data.S[:20] + visu_data.U[:20]) + "\n", encoding="utf-8")
    out = tmp_path / "idx"
    args = ["index", "--model", str(edit_dir), "--texts", str(texts), "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "indexed 40 texts" in printed and "faiss: flat" in printed
    assert main([*args, "--no-progress"]) == 2  # exists: needs --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    q = visu_data.U[0]
    assert main(["search", "--index", str(out), "--text", q, "--k", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "flagged", "id"] and len(table) == 6
    assert table[-1].startswith("safety off: did not act") and table[-2].startswith("query: ")
    assert main(["search", "--index", str(out), "--text", q, "--safety", "redirect", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mode"] == "redirect" and len(d["hits"]) == 10
    assert d["query"]["flagged"] == d["acted"] or "already inside" in d["reason"]
    # bad input: a clear error, exit 2
    assert main(["search", "--index", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "not found" in capsys.readouterr().err
    (out / "vectors.safetensors").write_bytes(b"\0" * 10)
    assert main(["search", "--index", str(out), "--text", "x"]) == 2
    assert "vectors.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--index", str(out), "--text", "x", "--safety", "block"])


def test_cli_choices_match_the_library() -> None:
    from relsafe.commands.gallery import FAISS_CHOICES, SAFETY_CHOICES
    from relsafe.gallery.faiss_index import FAISS_KINDS
    from relsafe.gallery.search import SAFETY_MODES

    assert FAISS_CHOICES == FAISS_KINDS and SAFETY_CHOICES == SAFETY_MODES


def test_unsupported_geometry_is_refused() -> None:
    from relsafe.gallery.faiss_index import gallery_matrix

    with pytest.raises(InputError, match="cosine and lorentz"):
        gallery_matrix(torch.zeros(2, 3), "poincare", 1.0)
