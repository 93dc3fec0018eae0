"""Hostile images and model folders (issue 17, findings 6 and 7's model items).

Images: 16-bit, 32-bit and float files must embed by their value range (ok), NaN or out-of-range
floats, corrupt, truncated, empty and non-image files must be clean errors naming the file, files
over 64 megapixels and decompression bombs are refused from their header, and eight 62-megapixel
PNGs embed within the decoded-bytes budget. Model folders: bad ``config.json`` files (a JSON list,
non-UTF-8, ``hidden_size=7``, ``embed_dim=-5``...) and weights that do not fit them are clean
errors, never a traceback and never a model with randomly filled tensors.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hostile import Case


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w x h`` gray pixels, with a tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _edit_json(path: Path, fn: Any) -> None:
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg))


def cases(tmp: Path) -> list[Case]:
    from relsafe.models.hyperbolic import HyperbolicDualEncoder
    from relsafe.models.mini import bundled_weights_dir, load_relsafe_mini
    from relsafe.testing import make_tiny_clip

    out: list[Case] = []
    n = [0]

    def embed_images(name: str, files: dict[str, Any], expect: str, model: str = "") -> None:
        folder = tmp / "img" / name
        folder.mkdir(parents=True)
        for fname, data in files.items():
            p = folder / fname
            if isinstance(data, bytes):
                p.write_bytes(data)
            elif data is None:
                p.mkdir()
            else:
                data.save(p)
        n[0] += 1
        argv = ["embed", "--images", str(folder), "--out", str(tmp / f"out{n[0]}.safetensors")]
        out.append(Case(f"image-{name}", argv + (["--model", model] if model else []), expect))

    rng = np.random.default_rng(0)
    g16 = Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16))
    f01 = Image.fromarray(rng.random((40, 50)).astype(np.float32))
    f255 = Image.fromarray((rng.random((40, 50)) * 255).astype(np.float32))
    i32 = Image.fromarray(
        rng.integers(-(2**31), 2**31 - 1, (40, 50), dtype=np.int64).astype(np.int32)
    )
    rgba = Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA")
    nan = np.zeros((8, 8), dtype=np.float32)
    nan[3, 3] = np.nan
    good_png = tmp / "good.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good_png)
    png = good_png.read_bytes()

    embed_images("16bit-png", {"a.png": g16}, "ok")
    embed_images("float-tiff", {"a.tiff": f01, "b.tiff": f255}, "ok")
    embed_images("int32-tiff", {"a.tiff": i32}, "ok")
    embed_images(
        "all-modes",
        {
            "la.png": rgba.convert("LA"),
            "p.png": rgba.convert("RGB").convert("P"),
            "pt.gif": rgba.convert("P"),
            "cmyk.tiff": rgba.convert("CMYK"),
            "one.png": rgba.convert("1"),
            "rgba.png": rgba,
            "l.bmp": rgba.convert("L"),
        },
        "ok",
    )
    embed_images("float-nan", {"a.tiff": Image.fromarray(nan)}, "error")
    embed_images(
        "float-out-of-range",
        {"a.tiff": Image.fromarray(np.full((8, 8), -40.0, dtype=np.float32))},
        "error",
    )
    embed_images("empty-file", {"a.png": b""}, "error")
    embed_images("text-as-png", {"a.png": b"this is not an image\n"}, "error")
    embed_images("truncated-png", {"a.png": png[: len(png) // 2]}, "error")
    embed_images("corrupt-jpeg", {"a.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4}, "error")
    embed_images("header-only-72mp", {"a.png": _png_header_only(9000, 8000)}, "error")
    embed_images("pil-bomb-900mp", {"a.png": _png_header_only(30000, 30000)}, "error")
    embed_images("zero-width", {"a.png": _png_header_only(0, 10)}, "error")
    embed_images("folder-named-png", {"a.png": None}, "error")
    embed_images("12000x12000", {"a.png": _png_header_only(12000, 12000)}, "error")

    # eight 62-megapixel PNGs (~60 KB each): 2+ GB decoded at once before the budget
    big = tmp / "big.png"
    Image.new("L", (7900, 7900), 90).save(big)
    embed_images("eight-62mp-pngs", {f"b{i}.png": big.read_bytes() for i in range(8)}, "ok")
    big.unlink()
    strip = Image.new("RGB", (1, 4_000_000), (10, 200, 30))
    embed_images("1x4e6-strip-mini", {"s.png": strip}, "ok")

    # ---- Hugging Face CLIP folders ----
    clip = make_tiny_clip(tmp / "models" / "clip")
    embed_images("1x4e6-strip-hf", {"s.png": strip}, "ok", model=str(clip))
    texts = tmp / "texts.txt"
    texts.write_text("a photo of a dog\na child drinking wine\n")

    def model_case(name: str, spec: str, expect: str = "error") -> None:
        n[0] += 1
        argv = ["embed", "--model", spec, "--texts", str(texts)]
        out.append(
            Case(f"model-{name}", [*argv, "--out", str(tmp / f"out{n[0]}.safetensors")], expect)
        )

    def clip_variant(name: str, fn: Any = None, raw: bytes | None = None) -> Path:
        folder = tmp / "models" / name
        shutil.copytree(clip, folder)
        if raw is not None:
            (folder / "config.json").write_bytes(raw)
        elif fn is not None:
            _edit_json(folder / "config.json", fn)
        return folder

    model_case("hf-ok", str(clip), "ok")
    model_case(
        "hf-hidden-7", str(clip_variant("h7", lambda c: c["text_config"].update(hidden_size=7)))
    )
    lst = clip_variant("list", raw=b"[1, 2]")
    model_case("hf-config-list", str(lst))
    model_case("hf-config-list-hf-prefix", f"hf:{lst}")
    model_case("hf-config-not-utf8", str(clip_variant("u8", raw=b'\xff\xfe{"model_type": "clip"}')))
    model_case(
        "hf-config-truncated", str(clip_variant("trunc", raw=b'{"model_type": "clip", "text_'))
    )
    model_case("hf-proj-neg", str(clip_variant("pn", lambda c: c.update(projection_dim=-5))))
    model_case(
        "hf-vocab-str",
        str(clip_variant("vs", lambda c: c["text_config"].update(vocab_size="many"))),
    )
    model_case(
        "hf-heads-0",
        str(clip_variant("h0", lambda c: c["vision_config"].update(num_attention_heads=0))),
    )
    model_case("hf-tower-list", str(clip_variant("tl", lambda c: c.update(vision_config=[1]))))
    model_case(
        "hf-hidden-vs-weights",
        str(clip_variant("h64", lambda c: c["vision_config"].update(hidden_size=64))),
    )
    from safetensors.torch import load_file, save_file

    miss = clip_variant("miss")
    tensors = load_file(miss / "model.safetensors")
    del tensors[next(k for k in tensors if k.endswith("mlp.fc1.weight"))]
    save_file(tensors, miss / "model.safetensors", metadata={"format": "pt"})
    model_case("hf-missing-tensor", str(miss))

    # ---- relsafe-mini folders ----
    mini = tmp / "models" / "mini"
    shutil.copytree(bundled_weights_dir(), mini)

    def mini_variant(name: str, fn: Any = None, raw: bytes | None = None) -> Path:
        folder = tmp / "models" / name
        shutil.copytree(mini, folder)
        if raw is not None:
            (folder / "config.json").write_bytes(raw)
        elif fn is not None:
            _edit_json(folder / "config.json", fn)
        return folder

    model_case("mini-ok", str(mini), "ok")
    model_case(
        "mini-embed-dim-neg", str(mini_variant("m5", lambda c: c["config"].update(embed_dim=-5)))
    )
    model_case("mini-config-list", str(mini_variant("ml", raw=b"[]")))
    model_case("mini-inner-config-list", str(mini_variant("mil", lambda c: c.update(config=[1]))))
    model_case(
        "mini-std-zero", str(mini_variant("ms", lambda c: c["config"].update(image_std=[0, 0, 0])))
    )
    model_case(
        "mini-huge-tower",
        str(
            mini_variant(
                "mh", lambda c: c["config"].update(vision_dims=[2048] * 8, vision_depths=[16] * 8)
            )
        ),
    )
    model_case(
        "mini-shape-mismatch", str(mini_variant("mm", lambda c: c["config"].update(embed_dim=128)))
    )
    model_case("mini-encoder-list", str(mini_variant("me", lambda c: c.update(text_encoder=["x"]))))

    # ---- hyperbolic folders ----
    hyp = tmp / "models" / "hyp"
    HyperbolicDualEncoder(load_relsafe_mini()).save_pretrained(hyp)

    def hyp_variant(name: str, fn: Any) -> str:
        folder = tmp / "models" / name
        shutil.copytree(hyp, folder)
        _edit_json(folder / "config.json", fn)
        return f"hyperbolic:{folder}"

    model_case("hyp-aperture-str", hyp_variant("ha", lambda c: c.update(aperture_k="wide")))
    model_case("hyp-base-dotdot", hyp_variant("hb", lambda c: c.update(base="..")))
    model_case("hyp-fit-info-list", hyp_variant("hf", lambda c: c.update(fit_info=[1])))
    return out
