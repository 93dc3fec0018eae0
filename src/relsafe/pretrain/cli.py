"""``relsafe pretrain`` and ``python -m relsafe.pretrain``: flags, config file, overrides.

Like every relsafe command, the config is a dataclass (:class:`PretrainConfig`) loaded from an
optional YAML file (``--config``) with ``--set key=value`` overrides. The short flags of earlier
versions (``--steps``, ``--out``, ``--resume``, ...) still work and win over both; with no flag at
all the run is ``PretrainConfig()``, the one that made the bundled weights.

This module imports no torch at import time, so ``relsafe`` can build its parser quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from relsafe.pretrain.config import PretrainConfig

# flag attribute -> PretrainConfig field, for the short flags (None when not given)
_FLAGS = {
    "seed": "seed",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "lora_rank": "lora_rank",
    "out": "out_dir",
    "checkpoint_dir": "checkpoint_dir",
    "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints",
    "resume": "resume",
    "threads": "threads",
    "eval_per_tuple": "eval_per_tuple",
}


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the pretraining flags to ``ap`` (``relsafe pretrain``'s subparser or a standalone one)."""
    d = PretrainConfig()
    ap.add_argument("--config", default=None, help="pretraining config YAML (PretrainConfig keys)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set steps=10",
    )
    ap.add_argument("--seed", type=int, default=None, help=f"(default {d.seed})")
    ap.add_argument("--steps", type=int, default=None, help=f"(default {d.steps})")
    ap.add_argument("--batch-size", type=int, default=None, help=f"(default {d.batch_size})")
    ap.add_argument("--lr", type=float, default=None, help=f"(default {d.lr})")
    ap.add_argument("--lora-rank", type=int, default=None, help=f"(default {d.lora_rank})")
    ap.add_argument(
        "--out", default=None, help=f"folder for the trained weights (default {d.out_dir})"
    )
    ap.add_argument("--checkpoint-dir", default=None, help="default: <out>/checkpoints")
    ap.add_argument(
        "--checkpoint-every", type=int, default=None, help=f"(default {d.checkpoint_every})"
    )
    ap.add_argument("--keep-checkpoints", action="store_true", default=None)
    ap.add_argument(
        "--resume", action="store_true", default=None, help="continue from the last checkpoint"
    )
    ap.add_argument("--threads", type=int, default=None, help=f"(default {d.threads})")
    ap.add_argument(
        "--eval-per-tuple", type=int, default=None, help=f"(default {d.eval_per_tuple})"
    )
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """``--config`` file, then ``--set`` overrides, then the short flags; validated."""
    from relsafe.config import load_config

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    flags = {f: getattr(args, a) for a, f in _FLAGS.items() if getattr(args, a, None) is not None}
    if flags:
        cfg = dataclasses.replace(cfg, **flags)
        cfg.validate()
    return cfg


def run_pretrain_cli(args: argparse.Namespace) -> int:
    """Run ``relsafe pretrain`` from parsed arguments."""
    from relsafe.pretrain.loop import pretrain

    cfg = config_from_args(args)
    pretrain(cfg, progress=not args.no_progress)
    print(f"relsafe-mini written to {cfg.out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m relsafe.pretrain [--config F] [--set k=v ...] [--steps N] [--out DIR] ...``."""
    from relsafe.errors import RelsafeError

    ap = add_arguments(
        argparse.ArgumentParser(
            prog="relsafe pretrain", description="Train relsafe-mini on RelWorld."
        )
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run_pretrain_cli(args)
    except RelsafeError as e:
        print(f"relsafe pretrain: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
