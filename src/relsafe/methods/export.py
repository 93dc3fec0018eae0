"""Write an edit's outputs: adapter, merged checkpoint, record and provenance, atomically.

Layout of ``OUT``::

    OUT/adapter/           PEFT adapter (adapter_config.json, adapter_model.safetensors), LoRA methods
    OUT/merged/            full checkpoint that loads through the registry (``relsafe-mini`` folder,
                           or a Hugging Face CLIP folder that also loads with CLIPModel.from_pretrained)
    OUT/artifacts/         method-specific files (e.g. the UWM mask)
    OUT/record.json        the EditRecord: config, data sizes, curve, time, parameters touched
    OUT/provenance.json    versions, git commit, seeds, SHA-256 of what was read and written

Everything is written into a temporary sibling folder first and renamed into place at the end,
so a crash never leaves a half-written ``OUT``. An existing ``OUT`` is refused unless
``overwrite=True``; checkpoints for resuming live in ``.OUT.work`` beside it until the edit lands.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from relsafe.errors import InputError
from relsafe.methods.base import EditResult
from relsafe.utils_io import atomic_write_json


def workdir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.work"


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"output folder {out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")
    return out


def write_edit(
    out: str | Path,
    result: EditResult,
    provenance: dict[str, Any],
    overwrite: bool = False,
    save_artifacts: Any = None,
) -> Path:
    """Write ``result`` to ``out`` (see module docs). Merges a LoRA adapter into the model (in place)."""
    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
    tmp.mkdir()
    try:
        if result.adapter is not None:
            result.adapter.save_adapter(tmp / "adapter")
            result.adapter.merge()
        result.model.save_pretrained(str(tmp / "merged"))
        if save_artifacts is not None:
            (tmp / "artifacts").mkdir()
            save_artifacts(tmp / "artifacts")
        atomic_write_json(tmp / "record.json", result.record.to_dict())
        from relsafe.provenance import checkpoint_hashes

        written = sorted(
            p for p in tmp.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")
        )
        provenance = dict(provenance)
        provenance["outputs"] = [
            {**h, "path": str(Path(h["path"]).relative_to(tmp))} for h in checkpoint_hashes(written)
        ]
        atomic_write_json(tmp / "provenance.json", provenance)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(workdir_for(out), ignore_errors=True)
    return out
