"""``relsafe edit``: load a model and a policy, apply a method, export the result."""

from __future__ import annotations

import argparse
import logging
import time

from relsafe.errors import InputError

log = logging.getLogger(__name__)


def run_edit_cli(args: argparse.Namespace) -> int:
    from relsafe.config import load_config, to_dict
    from relsafe.methods.base import get_method
    from relsafe.methods.export import check_out_dir, workdir_for, write_edit
    from relsafe.models.registry import load_model
    from relsafe.provenance import collect_provenance

    if args.revert:
        from relsafe.methods.uwm import revert_cli

        return revert_cli(args)
    method = get_method(args.method)
    cfg = load_config(method.config_cls, args.config, args.overrides)
    check_out_dir(args.out, args.overwrite)  # fail before any work
    policy = None
    if args.policy:
        from relsafe.policy import load_policy

        policy = load_policy(args.policy)
    t0 = time.perf_counter()
    model = load_model(args.model)
    inputs = [p for p in getattr(model, "checkpoint_files", lambda: [])()]
    result = method.fn(
        model, policy, cfg, progress=not args.no_progress, workdir=str(workdir_for(args.out))
    )
    prov = collect_provenance(
        config={
            "method": args.method,
            "model": args.model,
            "policy": args.policy,
            "method_config": to_dict(cfg),
        },
        seeds={"method_seed": getattr(cfg, "seed", None)},
        checkpoints=[
            *inputs,
            *([policy.source] if policy is not None and getattr(policy, "source", None) else []),
        ],
    )
    saver = result.artifacts.get("save") if result.artifacts else None
    out = write_edit(args.out, result, prov, overwrite=args.overwrite, save_artifacts=saver)
    for w in result.record.warnings:
        print(f"warning: {w}")
    rec = result.record
    print(
        f"{args.method}: edited {rec.params_touched:,} of {rec.params_total:,} parameters in "
        f"{time.perf_counter() - t0:.1f} s; wrote {out} (load it with --model {out / 'merged'})"
    )
    if rec.curve:
        last = rec.curve[-1]
        terms = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "step")
        print(f"final losses (step {int(last['step'])}): {terms}")
    if any("non-finite" in w for w in rec.warnings):
        raise InputError(
            "training stopped on a non-finite loss; the last good adapter was exported (see record.json)"
        )
    return 0
