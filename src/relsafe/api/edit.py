"""``relsafe.api.edit``: apply a registered safety method to a model and export the result."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsafe.api._resolve import build_config, load_model, load_policy, provenance
from relsafe.config import to_dict
from relsafe.errors import InputError
from relsafe.outputs import exclusive, output_dir, writing


@dataclass
class EditOutcome:
    """Where an edit was written and what it did (``record`` is the method's EditRecord)."""

    out: Path
    record: Any
    seconds: float

    @property
    def model_spec(self) -> str:
        """The spec that loads the edited model (the edit folder itself also works)."""
        return str(self.out / "merged")

    @property
    def stopped_on_nonfinite(self) -> bool:
        return any("non-finite" in w for w in self.record.warnings)


def edit_model(
    method: str,
    method_config: Any,
    *,
    model: str,
    policy: Any,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    policy_spec: Any = None,
) -> EditOutcome:
    """Load ``model``, apply ``method`` with a validated ``method_config``, write ``out``.

    The output layout and atomicity are :func:`relsafe.methods.export.write_edit`'s; its
    ``provenance.json`` lists the SHA-256 of the input model's checkpoint files and the policy."""
    from relsafe.methods.base import get_method
    from relsafe.methods.export import check_out_dir, workdir_for, write_edit

    entry = get_method(method)
    output_dir(out, overwrite=overwrite)  # fail before any work: links, files, no permission
    check_out_dir(out, overwrite)
    t0 = time.perf_counter()
    loaded = load_model(model)
    prov = provenance(
        config={
            "method": method,
            "model": model,
            "policy": policy_spec if policy_spec is not None else getattr(policy, "source", None),
            "method_config": to_dict(method_config),
        },
        seeds={"method_seed": getattr(method_config, "seed", None)},
        models=[loaded],
        policy=policy,
    )  # hashed before the method runs: an in-place edit must not change what we say we read
    with writing(out):  # (a full disk while a training checkpoint is written names OUT)
        result = entry.fn(
            loaded, policy, method_config, progress=progress, workdir=str(workdir_for(out))
        )
    saver = (result.artifacts or {}).get("save")
    output_dir(out, overwrite=overwrite)  # again: the path may have changed during training
    with writing(out):
        written = write_edit(out, result, prov, overwrite=overwrite, save_artifacts=saver)
    return EditOutcome(written, result.record, time.perf_counter() - t0)


def edit(
    method: str,
    *,
    out: str | Path,
    model: str = "relsafe-mini",
    policy: Any = None,
    config: Any = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
    world: Any = None,
) -> EditOutcome:
    """Edit ``model`` with ``method`` under ``policy`` and write the result to ``out``.

    ``world`` (a manifest path, a :class:`relsafe.data.world.World` or a run config's ``world:``
    mapping) makes the edit train on that world's images (see :func:`api.evaluate`).

    ``config`` is the method's config dataclass, a mapping or a YAML path; ``overrides`` are
    ``key=value`` strings. Returns an :class:`EditOutcome`; ``outcome.model_spec`` loads the
    edited model (as does ``out`` itself)."""
    from relsafe.methods.base import get_method

    entry = get_method(method)
    cfg = build_config(entry.config_cls, config, overrides, f"{method} config")
    pol = load_policy(policy, world)
    with exclusive(out):  # one writer per output folder
        return edit_model(
            method,
            cfg,
            model=model,
            policy=pol,
            out=out,
            overwrite=overwrite,
            progress=progress,
            policy_spec=policy if isinstance(policy, str | Path) else None,
        )


def revert(
    edit_dir: str | Path,
    *,
    out: str | Path,
    model: str | None = None,
    method: str | None = None,
    overwrite: bool = False,
) -> EditOutcome:
    """Undo a saved edit: load ``model`` (default: the edit's merged model), let the method that
    made ``edit_dir`` restore the weights it changed, write the result to ``out``.

    Only methods that declare a ``revert`` can (UWM); asking another is an error, as is naming a
    ``method`` other than the one the edit's ``record.json`` says made it."""
    from relsafe.methods.base import get_method
    from relsafe.methods.export import check_out_dir, write_edit
    from relsafe.utils_io import read_json_file

    edit_dir = Path(edit_dir)
    if not edit_dir.is_dir():
        raise InputError(f"--revert {edit_dir}: no such edit folder")
    rec_path = edit_dir / "record.json"
    made_by = None
    if rec_path.is_file():
        made_by = read_json_file(rec_path, "edit record").get("method")
        if made_by is not None and not isinstance(made_by, str):
            raise InputError(f"{rec_path}: 'method' must be a string, got {made_by!r}")
    elif rec_path.exists():
        raise InputError(f"{rec_path} is not a regular file")
    name = method or made_by
    if name is None:
        raise InputError(
            f"{edit_dir} has no record.json saying which method made it; pass --method"
        )
    if method is not None and made_by is not None and method != made_by:
        raise InputError(
            f"--method {method!r} disagrees with {rec_path}: that edit was made by {made_by!r} "
            f"(drop --method, or name {made_by!r})"
        )
    entry = get_method(name)
    if entry.revert is None:
        raise InputError(f"method {name!r} cannot revert an edit (only methods with a mask can)")
    with exclusive(out):  # one writer per output folder
        output_dir(out, overwrite=overwrite)
        check_out_dir(out, overwrite)
        t0 = time.perf_counter()
        spec = model or str(edit_dir / "merged")
        loaded = load_model(spec)
        result, files = entry.revert(loaded, edit_dir, spec)
        prov = provenance(
            config={"revert": str(edit_dir), "model": spec, **result.record.config},
            seeds={},
            models=[loaded],
        )
        from relsafe.provenance import checkpoint_hashes

        prov["checkpoints"] += checkpoint_hashes(files)
        output_dir(out, overwrite=overwrite)
        with writing(out):
            written = write_edit(out, result, prov, overwrite=overwrite)
    return EditOutcome(written, result.record, time.perf_counter() - t0)


__all__ = ["EditOutcome", "edit", "edit_model", "revert"]
