"""The engine's precision rules: bf16 detection, what ``auto`` picks, the probe, int8-text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from relsafe.engine import EmbeddingEngine
from relsafe.engine import precision as P
from relsafe.errors import InputError

TEXTS = [f"a photo of thing number {i}" for i in range(9)]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_VERDICTS", {})


def _cpuinfo(tmp_path: Path, flags: str) -> str:
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return str(p)


def test_bf16_units_are_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert P.cpu_has_bf16(_cpuinfo(tmp_path, "avx512f avx512_bf16")) is True
    assert P.cpu_has_bf16(_cpuinfo(tmp_path, "amx_tile amx_bf16")) is True
    assert P.cpu_has_bf16(_cpuinfo(tmp_path, "avx512f avx512_vnni")) is False


def _never(mode: str) -> float:
    raise AssertionError(f"the {mode} probe should not run")


def test_the_environment_can_keep_auto_off_a_cpus_bf16_units(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)
    for value in ("0", "off", "False"):
        monkeypatch.setenv(P.CPU_BF16_ENV, value)
        got = P.choose_precision("auto", CPU, fingerprint=lambda: "fp", probe=_never)
        assert got.mode == "float32" and P.CPU_BF16_ENV in got.reason
    monkeypatch.setenv(P.CPU_BF16_ENV, "1")
    got = P.choose_precision("auto", CPU, fingerprint=lambda: "fp", probe=lambda m: 0.9999)
    assert got.mode == "bfloat16"
    assert P.choose_precision("bfloat16", CPU).mode == "bfloat16"  # a forced dtype is kept


def test_auto_is_float32_on_a_cpu_without_bf16_units_without_probing() -> None:
    pr = P.choose_precision(
        "auto", CPU, fingerprint=lambda: "fp", probe=_never, bf16_units=lambda: False
    )
    assert pr.mode == "float32" and pr.autocast == torch.float32 and "bf16 units" in pr.reason


def test_auto_probes_once_per_fingerprint_and_keeps_the_verdict_on_disk(tmp_path: Path) -> None:
    calls: list[str] = []

    def probe(mode: str) -> float:
        calls.append(mode)
        return 0.9995

    kw = dict(probe=probe, bf16_units=lambda: True, cache_dir=tmp_path)
    a = P.choose_precision("auto", CPU, fingerprint=lambda: "A", **kw)
    b = P.choose_precision("auto", CPU, fingerprint=lambda: "A", **kw)
    assert a.mode == b.mode == "bfloat16" and a.min_cosine == pytest.approx(0.9995)
    assert calls == ["bfloat16"]
    P._VERDICTS.clear()  # a new process: the verdict comes from precision.json
    P.choose_precision("auto", CPU, fingerprint=lambda: "A", **kw)
    assert calls == ["bfloat16"] and (tmp_path / P.VERDICT_FILE).is_file()
    P.choose_precision("auto", CPU, fingerprint=lambda: "B", **kw)  # another model: probed
    assert calls == ["bfloat16", "bfloat16"]


def test_a_failing_probe_falls_back_to_float32_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="relsafe.engine.precision"):
        pr = P.choose_precision(
            "auto", CPU, fingerprint=lambda: "C", probe=lambda m: 0.998, bf16_units=lambda: True
        )
    assert pr.mode == "float32" and pr.min_cosine == pytest.approx(0.998)
    assert "0.998" in caplog.text and "float32" in caplog.text


def test_forced_and_invalid_dtypes() -> None:
    forced = P.choose_precision("bfloat16", CPU, fingerprint=lambda: "x", probe=_never)
    assert forced.mode == "bfloat16"  # forced: used as asked, no probe
    for bad, match in [("int4", "unknown dtype"), ("float16", "needs CUDA")]:
        with pytest.raises(InputError, match=match):
            P.choose_precision(bad, CPU)


def test_engine_auto_with_bf16_units_runs_the_real_probe(
    tiny_clip,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)
    monkeypatch.delenv(P.CPU_BF16_ENV, raising=False)  # (conftest sets it to 0)
    eng = EmbeddingEngine(tiny_clip, device="cpu", progress=False, num_workers=0)
    assert eng.precision.min_cosine is not None
    assert eng.dtype_name == ("bfloat16" if eng.precision.min_cosine >= P.MIN_COSINE else "float32")
    assert eng.stats["forward_batches"] == 0  # the probe is not counted as the caller's work
    f32 = EmbeddingEngine(tiny_clip, device="cpu", dtype="float32", progress=False)
    got, ref = eng.embed_texts(TEXTS), f32.embed_texts(TEXTS)
    if eng.dtype_name == "bfloat16":
        assert not torch.equal(got, ref)  # really computed in bf16
    cos = torch.nn.functional.cosine_similarity(got, ref)
    assert float(cos.min()) > 0.995


def test_int8_text_quantises_only_the_text_tower_and_shares_the_rest(tiny_clip) -> None:  # noqa: ANN001
    q = P.int8_text_model(tiny_clip)
    kinds = {type(m).__module__ for m in q.text_tower.modules()}
    assert any("quantized" in k for k in kinds)
    assert not any("quantized" in type(m).__module__ for m in q.vision_tower.modules())
    orig = dict(tiny_clip.vision_tower.named_parameters())
    for name, p in q.vision_tower.named_parameters():
        assert p is orig[name]  # shared, not copied
    f32 = EmbeddingEngine(tiny_clip, device="cpu", dtype="float32", progress=False)
    ref = f32.embed_texts(TEXTS)
    with torch.inference_mode():
        out = tiny_clip.postprocess(q.forward_text(tiny_clip.tokenize(TEXTS)), "text")
    assert not torch.equal(out, ref)  # int8 really changes the computation
    assert float(torch.nn.functional.cosine_similarity(out, ref).min()) > 0.9


def test_engine_int8_text_is_used_only_when_its_probe_passes(
    tiny_clip,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    for cos, mode in [(0.9999, "int8-text"), (0.95, "float32")]:
        P._VERDICTS.clear()
        monkeypatch.setattr(EmbeddingEngine, "_probe", lambda self, m, c=cos: c)
        eng = EmbeddingEngine(tiny_clip, device="cpu", dtype="int8-text", progress=False)
        assert eng.dtype_name == mode
        out = eng.embed_texts(TEXTS)
        f32 = EmbeddingEngine(tiny_clip, device="cpu", dtype="float32", progress=False)
        assert torch.equal(out, f32.embed_texts(TEXTS)) == (mode == "float32")


def test_threads_fit_the_cores_unless_omp_says(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    old = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert P.fit_threads(1) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(cores * 3)  # more than the cores: capped
        assert P.fit_threads(1) == cores == torch.get_num_threads()
        assert P.fit_threads(cores * 4) == 1 == torch.get_num_threads()  # shared by 4x processes
        assert P.fit_threads(1) == 1  # never raised above what was set
    finally:
        torch.set_num_threads(old)
