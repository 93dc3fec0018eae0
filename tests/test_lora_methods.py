"""LoRA safety methods on a tiny random CLIP: they suppress what they target, keep what they must,
keep their frozen references frozen, export merged checkpoints faithfully, and survive bad input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from relsafe.data.edit_sets import SetSizes, concept_sets, relational_sets
from relsafe.errors import InputError
from relsafe.methods.export import write_edit
from relsafe.methods.lora import attach_lora
from relsafe.methods.relational_lora import LoraEditConfig, relational_lora
from relsafe.methods.safeclip import SafeClipConfig, safeclip
from relsafe.methods.training import run_loop
from relsafe.models.registry import load_model
from relsafe.policy import load_policy
from relsafe.world.captions import CONTEXTS, TEMPLATES, canonical_caption
from relsafe.world.render import render_batch
from relsafe.world.vocab import ORO, default_vocabulary

SMALL = SetSizes(
    texts_per_forget_tuple=12,
    images_per_forget_tuple=4,
    texts_per_retain_tuple=2,
    images_per_retain_tuple=2,
    n_unrelated=4,
    size=32,
)
# relsafe-mini's edit sets: its renders are 64 px
SMALL_MINI = SetSizes(
    texts_per_forget_tuple=8,
    images_per_forget_tuple=8,
    texts_per_retain_tuple=2,
    images_per_retain_tuple=2,
    n_unrelated=8,
    size=64,
)
WINE, JUICE, ADULT_WINE = (
    ORO("child", "drinking", "wine"),
    ORO("child", "drinking", "juice"),
    ORO("adult", "drinking", "wine"),
)


@pytest.fixture(scope="module")
def policy():
    return load_policy("tiny")


def _scores(model, texts: list[str], tuples: list[ORO], seeds: list[int]) -> torch.Tensor:
    imgs = render_batch(tuples, seeds, "plain", 32)
    t = model.encode_text(texts)
    v = model.encode_image([Image.fromarray(a) for a in imgs])
    return model.similarity(v, t)


def _texts_of(texts: list[str], tuples: list, t: ORO) -> list[str]:
    return [x for x, tt in zip(texts, tuples, strict=True) if tt == t]


def test_relational_lora_suppresses_target_and_keeps_neighbour(tiny_clip_dir: Path, policy) -> None:
    model = load_model(str(tiny_clip_dir))
    # evaluation strings: the canonical captions, a template no loss of the edit trains on
    texts = [canonical_caption(t) for t in (WINE, JUICE, ADULT_WINE)]
    seeds = list(range(500, 508))
    before = _scores(
        model, texts, [WINE] * 8, seeds
    )  # wine images vs (wine, juice, adult-wine) captions
    sets = relational_sets(policy, SMALL)
    unsafe = _texts_of(sets.forget_texts, sets.forget_text_tuples, WINE)
    target = _texts_of(sets.forget_text_targets, sets.forget_text_tuples, WINE)
    neighbour = _texts_of(sets.retain_texts, sets.retain_text_tuples, ADULT_WINE)
    assert unsafe and neighbour and not set(texts) & set(unsafe + target + neighbour)
    u0, c0, n0 = (model.encode_text(x) for x in (unsafe, target, neighbour))
    cfg = LoraEditConfig(steps=60, lr=3e-3, data=SMALL, seed=0, w_retain_align=0.0)
    relational_lora(model, policy, cfg, progress=False)
    after = _scores(model, texts, [WINE] * 8, seeds)
    u1, c1, n1 = (model.encode_text(x) for x in (unsafe, target, neighbour))
    cos = torch.nn.functional.cosine_similarity
    # on unseen images and untrained strings, the unsafe caption now loses to its counterpart ...
    assert (after[:, 0] >= after[:, 1]).float().mean() <= 0.125, after[:, :2]
    # ... and the edit did that: the random tiny CLIP may already rank the counterpart first, so
    # the rate alone proves nothing; on every image the unsafe caption's margin must have fallen
    margin_before, margin_after = before[:, 0] - before[:, 1], after[:, 0] - after[:, 1]
    assert (margin_after < margin_before).all(), (margin_before, margin_after)
    # the mechanism, on the strings it trained on: each unsafe text was redirected onto its
    # counterpart's frozen embedding (it was not there before). On this random tiny CLIP the move
    # itself does not carry over to the unseen canonical template, only the ranking above does;
    # the suites measure that transfer on real backbones (docs/splits.md).
    gap_before, gap_after = (1 - cos(u0, c0)).mean(), (1 - cos(u1, c0)).mean()
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)
    # while the retained neighbour (adult drinking wine) and the counterpart texts barely moved
    assert cos(n1, n0).min() > 0.97, cos(n1, n0)
    assert cos(c1, c0).mean() > 0.97, cos(c1, c0)


def test_frozen_references_do_not_drift(tiny_clip_dir: Path, policy) -> None:
    model = load_model(str(tiny_clip_dir))
    res = relational_lora(
        model, policy, LoraEditConfig(steps=15, lr=1e-2, data=SMALL), progress=False
    )
    refs = res.artifacts["references"]
    fresh = load_model(str(tiny_clip_dir))
    sets = relational_sets(policy, SMALL)
    # the record says which tuples the edit was trained to keep
    assert res.record.extra["retained_tuples"] == sets.retained_ids()
    assert len(res.record.extra["retained_tuples"]["unrelated"]) == SMALL.n_unrelated
    # the references equal the *original* model's embeddings, although the model was edited
    assert torch.allclose(refs["T0_target"], fresh.encode_text(sets.forget_text_targets), atol=1e-6)
    assert torch.allclose(refs["T0_retain"], fresh.encode_text(sets.retain_texts), atol=1e-6)
    assert not torch.allclose(
        model.encode_text(sets.forget_text_targets[:4]), refs["T0_target"][:4], atol=1e-4
    )
    # the same for safeclip's references
    model2 = load_model(str(tiny_clip_dir))
    res2 = safeclip(
        model2, policy, SafeClipConfig(steps=5, n_per_pair=4, batch_size=4, size=32), progress=False
    )
    from relsafe.methods.safeclip import quadruplet_arrays

    data = quadruplet_arrays(policy, SafeClipConfig(n_per_pair=4, size=32))
    assert torch.allclose(
        res2.artifacts["references"]["T0_S"], fresh.encode_text(data["S"]), atol=1e-6
    )


def test_merged_export_matches_adapter_model(tiny_clip_dir: Path, policy, tmp_path: Path) -> None:
    from transformers import CLIPModel

    model = load_model(str(tiny_clip_dir))
    res = relational_lora(
        model,
        policy,
        LoraEditConfig(steps=5, lr=1e-2, data=SMALL, towers=["text", "vision"]),
        progress=False,
    )
    probe = ["a child drinking wine", "an adult holding a book"]
    pix = torch.rand(3, 3, 32, 32)
    with_adapter_t, with_adapter_v = model.encode_text(probe), model.encode_image(pix)
    out = write_edit(tmp_path / "edit", res, {"test": True})
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (
        out / "record.json"
    ).is_file()
    merged = load_model(str(out / "merged"))
    assert torch.allclose(merged.encode_text(probe), with_adapter_t, atol=1e-5)
    assert torch.allclose(merged.encode_image(pix), with_adapter_v, atol=1e-5)
    plain = CLIPModel.from_pretrained(out / "merged")  # a plain HF checkpoint
    feats = plain.get_text_features(**merged.tokenize(probe))
    feats = getattr(feats, "pooler_output", feats)
    assert torch.allclose(torch.nn.functional.normalize(feats, dim=-1), with_adapter_t, atol=1e-5)
    with pytest.raises(InputError, match="exists"):
        write_edit(tmp_path / "edit", res, {})


def test_nan_loss_stops_and_restores_last_good_adapter(tiny_clip_dir: Path) -> None:
    model = load_model(str(tiny_clip_dir))
    handle = attach_lora(model, ("text",), r=2)
    tok = model.tokenize(["a b c"])

    def losses(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        out = model.forward_text(tok).pow(2).mean()
        return {"l": out * float("nan") if step == 7 else out}

    res = run_loop(
        handle,
        handle.parameters(),
        losses,
        {"l": 1.0},
        steps=20,
        lr=1e-2,
        log_every=5,
        progress=False,
    )
    assert res.stopped_early and "non-finite" in res.stopped_early
    assert all(torch.isfinite(p).all() for p in handle.parameters())
    assert res.curve[-1]["step"] == 5.0


def test_training_resumes_from_checkpoint_identically(tiny_clip_dir: Path, tmp_path: Path) -> None:
    def make():
        model = load_model(str(tiny_clip_dir))
        handle = attach_lora(model, ("text",), r=2, seed=1)
        texts = ["a child", "a dog eating bread", "an adult", "wine"]

        def losses(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
            batch = rng.sample(texts, 2)
            return {"l": model.forward_text(model.tokenize(batch)).pow(2).mean()}

        return handle, losses

    h1, l1 = make()
    run_loop(h1, h1.parameters(), l1, {}, steps=10, lr=1e-2, progress=False)

    h2, l2 = make()

    def crashing(step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        if step == 7:
            raise KeyboardInterrupt
        return l2(step, rng)

    with pytest.raises(KeyboardInterrupt):
        run_loop(
            h2,
            h2.parameters(),
            crashing,
            {},
            steps=10,
            lr=1e-2,
            progress=False,
            workdir=tmp_path,
            checkpoint_every=5,
        )
    h3, l3 = make()
    res = run_loop(
        h3,
        h3.parameters(),
        l3,
        {},
        steps=10,
        lr=1e-2,
        progress=False,
        workdir=tmp_path,
        checkpoint_every=5,
    )
    assert res.resumed_from == 5
    for k, v in h1.state_dict().items():
        assert torch.allclose(v, h3.state_dict()[k], atol=1e-6), k


def test_edit_sets_use_no_heldout_material(policy) -> None:
    vocab = default_vocabulary()
    heldout_phrases = [
        p
        for section in (vocab.subjects, vocab.relations, vocab.objects)
        for w in section.values()
        for p in w.heldout
    ]
    heldout_templates = [t.split("{")[0].strip() for t in TEMPLATES["heldout"]]
    heldout_contexts = [c.replace("{caption}", "").strip(" ,.:") for c in CONTEXTS["heldout"]]
    for sets in (relational_sets(policy, SMALL), concept_sets(policy, "object", SMALL)):
        texts = sets.forget_texts + sets.forget_text_targets + sets.retain_texts
        for text in texts:
            for h in heldout_phrases:
                assert f" {h} " not in f" {text} ", (h, text)
            for h in heldout_templates + heldout_contexts:
                assert not (h and h in text), (h, text)
            # nor the evaluation-reserved canonical template or marginal probe form
            assert "a photo" not in text, text


def test_retain_sets_record_their_tuples_and_skip_evaluation_only_ones(policy) -> None:
    from relsafe.world.splits import is_unseen_tuple

    unseen = set(policy.unrelated("unseen"))
    sizes = SetSizes(
        images_per_forget_tuple=1, images_per_retain_tuple=1, size=32
    )  # n_unrelated 48
    rel = relational_sets(policy, sizes)
    # 48 of the tiny policy's 53 retain-pool tuples, none evaluation-only
    assert set(rel.retain_tuples["unrelated"]) <= set(policy.unrelated("retain"))
    assert len(rel.retain_tuples["unrelated"]) == min(48, len(policy.unrelated("retain")))
    assert rel.retain_tuples["neighbour"] == list(policy.all_neighbours())
    assert set(rel.retain_image_tuples) == {t for ts in rel.retain_tuples.values() for t in ts}
    assert not set(rel.retain_image_tuples) & unseen and set(rel.eval_only_tuples) == unseen
    assert rel.retained_ids()["unrelated"] == [t.id for t in rel.retain_tuples["unrelated"]]
    con = concept_sets(policy, "object", sizes)
    assert not [t for t in con.retain_image_tuples if is_unseen_tuple(t.id)]
    assert not [c for c in con.counterparts.values() if is_unseen_tuple(c.id)]
    # concept erasure forgets every wine and beer tuple, the evaluation-only ones too (its cost)
    assert (
        ORO("adult", "holding", "wine") in unseen
        and ORO("adult", "holding", "wine") in con.counterparts
    )
    assert not set(con.eval_only_tuples) & set(con.counterparts)
    # an evaluation-only tuple smuggled into a retain set is refused
    bad = relational_sets(policy, SMALL)
    bad.retain_tuples["unrelated"].append(ORO("adult", "holding", "wine"))
    with pytest.raises(InputError, match="evaluation-only"):
        bad.check()


def test_alignment_terms_never_score_evaluation_strings(tiny_clip, policy) -> None:
    """retain_align scores prototype captions ("a picture of ..."), never the canonical captions
    the suites score, and none of an evaluation-only tuple; marginal_align the prototype
    marginals, never the probes ("a photo of wine"). The edit record lists the retained tuples."""
    from relsafe.methods.relational_lora import _LoraEdit
    from relsafe.world.captions import object_caption, prototype_caption, subject_caption

    sets = relational_sets(policy, SMALL)
    edit = _LoraEdit(tiny_clip, sets, LoraEditConfig(data=SMALL))
    unseen = set(policy.unrelated("unseen"))
    assert unseen and not unseen & set(edit.all_tuples)
    assert len(edit.all_tuples) == len(default_vocabulary().valid_tuples()) - len(unseen)
    assert edit.proto_caps == [prototype_caption(t) for t in edit.all_tuples]
    assert prototype_caption(WINE) == "a picture of a child drinking wine"
    canon = {canonical_caption(t) for t in default_vocabulary().valid_tuples()}
    probes = {subject_caption(w) for w in default_vocabulary().subjects}
    probes |= {object_caption(w) for w in default_vocabulary().objects}
    scored = set(edit.proto_caps) | {c for caps in edit.marg_caps.values() for c in caps}
    assert not scored & (canon | probes)
    assert "a picture of wine" in edit.marg_caps["object"]


def test_concept_erasure_forgets_the_whole_concept(policy) -> None:
    sets = concept_sets(policy, "object", SMALL)
    forgotten = set(sets.counterparts)
    assert ADULT_WINE in forgotten and WINE in forgotten  # collateral by design
    assert all(
        "wine" not in c.object and "beer" not in c.object for c in sets.counterparts.values()
    )
    rel = relational_sets(policy, SMALL)
    assert set(rel.counterparts) == {WINE, ORO("child", "drinking", "beer")}
    assert ADULT_WINE in rel.retain_image_tuples


def test_bad_inputs(tiny_clip_dir: Path) -> None:
    from relsafe.config import from_dict
    from relsafe.errors import ConfigError

    with pytest.raises(ConfigError, match="towers"):
        from_dict(LoraEditConfig, {"towers": ["audio"]})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(LoraEditConfig, {"stepz": 3})
    with pytest.raises(InputError, match="needs a safety policy"):
        relational_lora(load_model(str(tiny_clip_dir)), None, LoraEditConfig(steps=1))


def test_text_layers_restricts_the_lora_to_the_top_layers(tiny_clip_dir: Path) -> None:
    from relsafe.errors import ConfigError
    from relsafe.methods.relational_lora import lora_targets

    model = load_model(str(tiny_clip_dir))
    every = lora_targets(model, LoraEditConfig(text_layers=0))
    top = lora_targets(model, LoraEditConfig(text_layers=1))
    assert lora_targets(model, LoraEditConfig(text_layers=0, text_head=None)) == every
    layers = {int(t.split(".layers.")[1].split(".")[0]) for t in every}
    assert len(layers) > 1
    assert top and all(f".layers.{max(layers)}." in t for t in top)
    assert set(top) < set(every)
    with pytest.raises(ConfigError, match="text projection"):
        lora_targets(model, LoraEditConfig(text_head=True))
    with pytest.raises(ConfigError, match="text_layers"):
        LoraEditConfig(text_layers=-1).validate()


def test_safeclip_info_nce_counts_rows_of_one_tuple_as_positives() -> None:
    """Hand-worked: two identical rows of the same safe tuple. The one-positive InfoNCE calls the
    twin a negative, loss log 2 per direction; the multi-positive form (same group = positive)
    gives 0. With all-distinct groups it is the standard loss."""
    import math

    from relsafe.methods.safeclip import _info_nce

    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert abs(float(_info_nce(a, a, 100.0)) - math.log(2)) < 1e-6
    assert float(_info_nce(a, a, 100.0, torch.tensor([7, 7]))) < 1e-6
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    torch.testing.assert_close(_info_nce(x, y, 10.0, torch.arange(5)), _info_nce(x, y, 10.0))
    # a third row of another group: the twins still are positives, the third a negative
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = float(_info_nce(b, b, 1.0, torch.tensor([0, 0, 1])))
    p_twin = 2 * math.e / (2 * math.e + 1)  # row 0: positives {0, 1}, logits e, e, 1 -> e^1
    p_third = math.e / (math.e + 2)  # row 2: its own logit 1 against two 0s
    want = -(2 * math.log(p_twin) + math.log(p_third)) / 3
    assert abs(loss - want) < 1e-5


def test_vision_redirect_reads_unsafe_images_as_counterpart_and_ranks_them_below_it() -> None:
    """``vision_objective: redirect`` (vision tower only, relsafe-mini: the tiny random CLIP cannot
    tell a wine render from a juice render): on unseen wine renders the juice caption wins
    (image->text redirect), while for the juice caption the same-seed juice render still beats
    the wine render (text->image), which the ``counterpart`` objective gives up."""
    policy = load_policy("default")
    texts = [canonical_caption(t) for t in (WINE, JUICE)]
    seeds = list(range(900, 916))

    def scores(m) -> tuple[torch.Tensor, torch.Tensor]:
        t = m.encode_text(texts)
        imgs = {
            k: m.encode_image(
                [Image.fromarray(a) for a in render_batch([k] * len(seeds), seeds, "plain", 64)]
            )
            for k in (WINE, JUICE)
        }
        return m.similarity(imgs[WINE], t), m.similarity(imgs[JUICE], t)

    def edit(objective: str):
        model = load_model("relsafe-mini")
        cfg = LoraEditConfig(
            steps=40,
            lr=3e-3,
            rank=4,
            data=SMALL_MINI,
            seed=0,
            towers=["vision"],
            vision_objective=objective,
        )
        return model, relational_lora(model, policy, cfg, progress=False)

    w0, j0 = scores(load_model("relsafe-mini"))
    assert (w0[:, 0] > w0[:, 1]).all() and (j0[:, 1] > w0[:, 1]).all()  # the original's reading
    model, res = edit("redirect")
    assert {"vision_forget", "vision_gallery", "vision_retain"} <= set(res.record.curve[-1])
    w1, j1 = scores(model)
    # image->text: unseen wine renders now read as juice
    assert (w1[:, 1] > w1[:, 0]).float().mean() >= 0.75, w1
    # text->image: the juice caption still prefers the juice render to the wine render
    assert (j1[:, 1] > w1[:, 1]).float().mean() >= 0.75, (j1[:, 1], w1[:, 1])
    # the counterpart objective moves the wine render onto the juice render: the juice caption's
    # preference for its own render shrinks more than under redirect
    mc, _ = edit("counterpart")
    wc, jc = scores(mc)
    assert (jc[:, 1] - wc[:, 1]).mean() < (j1[:, 1] - w1[:, 1]).mean()
    # a vision-only edit leaves the text tower as it was
    fresh = load_model("relsafe-mini")
    assert torch.allclose(model.encode_text(texts), fresh.encode_text(texts), atol=1e-6)


def test_vision_objective_is_validated() -> None:
    from relsafe.errors import ConfigError

    with pytest.raises(ConfigError, match="vision_objective"):
        LoraEditConfig(vision_objective="nowhere").validate()  # type: ignore[arg-type]


def test_vision_training_from_the_frozen_image_prefix_is_the_full_forward(
    policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """relational-lora training relsafe-mini's vision tower runs each image's frozen lower layers
    once (the stem and the first stage's convolutions) and the losses only the rest: the same loss
    values and LoRA gradients as the full forward of every image at every step."""
    import relsafe.methods.relational_lora as rl
    from relsafe.methods.lora import lora_root

    cfg = LoraEditConfig(
        towers=["text", "vision"], vision_objective="redirect", rank=4, data=SMALL_MINI
    )
    model = load_model("relsafe-mini")
    sets = relational_sets(policy, SMALL_MINI)
    cached = rl._LoraEdit(model, sets, cfg)
    assert cached.image_split is not None and cached.image_split.at == 0  # every stage adapted
    assert cached.f_pix.shape[1:] != (3, 64, 64)  # activations, not pixels
    with monkeypatch.context() as m:
        m.setattr(rl, "frozen_split", lambda *a: None)
        plain = rl._LoraEdit(model, sets, cfg)
    assert plain.image_split is None and plain.f_pix.shape[1:] == (3, 64, 64)
    handle = attach_lora(model, r=4, alpha=4.0, targets=cached.targets, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so the trained layers matter
        for n, p in lora_root(model).named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    results = []
    for edit in (cached, plain):
        out = edit.losses(0, random.Random(7))
        total = sum(out.values())
        grads = torch.autograd.grad(total, handle.parameters(), allow_unused=True)
        results.append(({k: float(v.detach()) for k, v in out.items()}, grads))
    (loss_c, grad_c), (loss_p, grad_p) = results
    assert loss_c.keys() == loss_p.keys() and "vision_forget" in loss_c
    assert loss_c == pytest.approx(loss_p, rel=1e-5, abs=1e-6)
    n_vision = 0
    for a, b in zip(grad_c, grad_p, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
            n_vision += 1
    assert n_vision > 0


def test_an_interrupted_edit_resumes_only_with_the_same_data(
    tiny_clip_dir: Path, policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """The checkpoint's key covers the training data (policy, world, data seed), not just the
    method, config and model: re-run into the same folder with another policy, it starts afresh
    and says so; with the same policy it resumes."""
    import logging

    import relsafe.methods.relational_lora as rl

    other = tmp_path / "guns.yaml"
    other.write_text(
        "name: guns\nunsafe:\n  - {tuple: child|holding|gun, counterpart: child|holding|toy}\n"
    )
    cfg = LoraEditConfig(steps=4, checkpoint_every=2, data=SMALL)
    real = rl._LoraEdit.losses

    def interrupted(self, step: int, rng: random.Random):  # noqa: ANN001, ANN202
        if step == 3:
            raise KeyboardInterrupt
        return real(self, step, rng)

    def edit(pol) -> dict:  # noqa: ANN001
        model = load_model(str(tiny_clip_dir))
        return relational_lora(model, pol, cfg, progress=False, workdir=str(tmp_path / "w"))

    for second, resumed in ((load_policy(str(other)), 0), (policy, 2)):
        with monkeypatch.context() as m:
            m.setattr(rl._LoraEdit, "losses", interrupted)
            with pytest.raises(KeyboardInterrupt):
                edit(policy)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="relsafe.methods.training"):
            res = edit(second)
        assert res.record.extra["resumed_from"] == resumed
        assert ("starting afresh" in caplog.text) == (resumed == 0)
