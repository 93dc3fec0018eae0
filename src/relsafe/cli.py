"""The ``relsafe`` command line. Each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from relsafe import __version__
from relsafe.commands import add_dtype_argument, add_world_arguments, world_arg
from relsafe.errors import NotMainProcess, RelsafeError

log = logging.getLogger("relsafe")


# ---- subcommand handlers: parse, call relsafe.api, print --------------------------------
def _cmd_models(args: argparse.Namespace) -> int:
    from relsafe import api

    print(f"{'backbone':<14} {'example spec':<36} description")
    for b in api.backbones().values():
        print(f"{b.name:<14} {b.example:<36} {b.description}")
    print(
        "\nA folder path also works: CLIP checkpoints, relsafe-mini and hyperbolic folders are "
        "detected, and an edit's output folder loads its merged model."
    )
    return 0


def _read_lines(path: Path, what: str = "text file") -> list[str]:
    from relsafe.errors import InputError
    from relsafe.utils_io import read_text_file

    lines = [ln for ln in read_text_file(path, what).splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{path} has no non-empty lines")
    return lines


def _cmd_embed(args: argparse.Namespace) -> int:
    from relsafe import api
    from relsafe.errors import InputError

    if not args.texts and not args.images:
        raise InputError("relsafe embed needs --texts FILE and/or --images PATH")
    res = api.embed(
        model=args.model,
        out=args.out,
        texts=_read_lines(Path(args.texts), "--texts file") if args.texts else None,
        images=_image_paths(Path(args.images)) if args.images else None,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
        dtype=args.dtype,
    )
    shapes = ", ".join(f"{k} {v}" for k, v in res.shapes.items())
    print(f"wrote {res.out}: {shapes}")
    return 0


_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _image_paths(path: Path) -> list[Path]:
    """A folder (its images, sorted) or a manifest text file (one image path per line)."""
    from relsafe.errors import InputError

    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_EXTS)
        if not paths:
            raise InputError(f"no images ({', '.join(sorted(_IMAGE_EXTS))}) under {path}")
        return paths
    if path.is_file():
        return [
            (path.parent / ln).resolve() if not Path(ln).is_absolute() else Path(ln)
            for ln in _read_lines(path, "--images manifest")
        ]
    raise InputError(f"--images: {path} is neither a folder nor a manifest file")


def _cmd_eval(args: argparse.Namespace) -> int:
    from relsafe import api
    from relsafe.eval.suites import summarize

    if args.suite == "list":
        for s in api.suites().values():
            needs = "  (needs --policy)" if s.needs_policy else ""
            print(f"{s.name:<12} {s.description}{needs}")
        return 0
    res = api.evaluate(
        args.suite,
        model=args.model,
        policy=args.policy,
        config=args.config,
        overrides=args.overrides,
        reference=args.reference,
        method=args.method,
        out=args.out,
        device=args.device,
        cache_dir=args.cache_dir,
        world=world_arg(args),
    )
    if res.out is not None:
        print(f"wrote {len(res.rows)} rows to {res.out} ({res.seconds:.1f} s)")
    print(summarize(res.rows))
    return 0


def _cmd_world_preview(args: argparse.Namespace) -> int:
    from relsafe.utils_io import atomic_write_bytes
    from relsafe.world.preview import contact_sheet

    sheet = contact_sheet(style=args.style, n=args.n, seed=args.seed, size=args.size)
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(Path(args.out), buf.getvalue())
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, style {args.style})")
    return 0


def _cmd_world_styles(args: argparse.Namespace) -> int:
    from relsafe.world.styles import OOD_STYLES, TRAIN_STYLES

    print("training styles:", ", ".join(TRAIN_STYLES))
    print("held-out OOD styles:", ", ".join(OOD_STYLES))
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    from relsafe.policy import describe, load_policy

    print(describe(load_policy(args.policy)))
    return 0


def _cmd_edit(args: argparse.Namespace) -> int:
    from relsafe import api
    from relsafe.errors import InputError

    if args.revert:
        if args.config or args.overrides or args.policy:
            raise InputError(
                "--revert takes no --config, --set or --policy: it undoes a saved edit"
            )
        res = api.revert(
            args.revert,
            out=args.out,
            model=args.model_given,
            method=args.method,
            overwrite=args.overwrite,
        )
        print(
            f"{res.record.method}: {res.record.config.get('action', 'done')}, "
            f"{res.record.params_touched:,} weights restored; wrote {res.out} "
            f"(load it with --model {res.out})"
        )
        return 0
    if not args.method:
        raise InputError("relsafe edit needs --method NAME (see `relsafe methods`)")
    res = api.edit(
        args.method,
        out=args.out,
        model=args.model_given or "relsafe-mini",
        policy=args.policy,
        config=args.config,
        overrides=args.overrides,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        world=world_arg(args),
    )
    for w in res.record.warnings:
        print(f"warning: {w}")
    rec = res.record
    print(
        f"{args.method}: edited {rec.params_touched:,} of {rec.params_total:,} parameters in "
        f"{res.seconds:.1f} s; wrote {res.out} (load it with --model {res.out})"
    )
    if rec.curve:
        last = rec.curve[-1]
        terms = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "step")
        print(f"final losses (step {int(last['step'])}): {terms}")
    if res.stopped_on_nonfinite:
        raise InputError(
            "training stopped on a non-finite loss; the last good adapter was exported "
            "(see record.json)"
        )
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from relsafe import api

    for m in api.methods().values():
        print(f"{m.name:<18} {m.description}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from relsafe import api

    overrides = list(args.overrides)
    if args.jobs is not None:
        overrides.append(f"jobs={args.jobs}")
    if args.dry_run:
        print(api.plan(args.config, out=args.out, overrides=overrides, timings=args.timings))
        return 0
    res = api.run(
        args.config,
        out=args.out,
        overrides=overrides,
        fresh=args.fresh,
        progress=not args.no_progress,
    )
    print(res.leaderboard)
    print(f"relsafe run finished in {res.seconds:.1f} s")
    print(f"results: {res.out / 'results.jsonl'}")
    if res.report is not None:
        print(f"report:  {res.report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from relsafe import api

    print(f"report: {api.report(args.runs, args.out)}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from relsafe import api
    from relsafe.pretrain.cli import config_from_args

    out = api.pretrain(config_from_args(args), progress=not args.no_progress)
    print(f"relsafe-mini written to {out}")
    return 0


# ---- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relsafe",
        description="Relationship-aware safety for vision-language models: edit, evaluate, report.",
    )
    p.add_argument("--version", action="version", version=f"relsafe {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    add("models", _cmd_models, "list registered model backbones")

    sp = add("embed", _cmd_embed, "embed texts and/or images into a safetensors file")
    sp.add_argument("--model", default="relsafe-mini", help="model spec (default: relsafe-mini)")
    sp.add_argument("--texts", help="text file, one text per line")
    sp.add_argument(
        "--images", help="image folder, or a manifest file with one image path per line"
    )
    sp.add_argument("--out", required=True, help="output .safetensors file")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sp.add_argument("--cache-dir", default=None, help="embedding cache folder (default: no cache)")
    add_dtype_argument(sp)

    sp = add("eval", _cmd_eval, "run an evaluation suite on a model and write tidy rows (JSONL)")
    sp.add_argument("--model", default="relsafe-mini", help="model spec (default: relsafe-mini)")
    sp.add_argument("--suite", required=True, help="suite name (see `relsafe eval --suite list`)")
    sp.add_argument("--policy", default=None, help="safety policy YAML (suites that need one)")
    sp.add_argument("--out", default=None, help="rows file (.jsonl); default: print a summary only")
    sp.add_argument("--config", default=None, help="suite config YAML")
    sp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set n_per_tuple=5",
    )
    sp.add_argument("--method", default="original", help="method label for the rows")
    sp.add_argument(
        "--reference",
        default=None,
        metavar="SPEC",
        help="(relational) the original model: adds drift, deltas, preservation and summary rows",
    )
    sp.add_argument("--device", default="auto")
    sp.add_argument("--cache-dir", default=None, help="embedding cache folder")
    add_world_arguments(sp)

    sp = add(
        "run",
        _cmd_run,
        "benchmark the original model and every method side by side; write a report",
    )
    sp.add_argument("config", help="run config YAML (e.g. configs/benchmark.yaml)")
    sp.add_argument("--out", required=True, help="output folder (re-running resumes what is done)")
    sp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set suites.relational.n_per_tuple=4",
    )
    sp.add_argument("--fresh", action="store_true", help="delete the output folder first")
    sp.add_argument(
        "--dry-run",
        action="store_true",
        help="print every stage of the run, done or not, with an estimate of its time from the "
        "last run's timings; run nothing",
    )
    sp.add_argument(
        "--timings",
        default=None,
        metavar="PATH",
        help="with --dry-run: estimate from this timings.json (another run's) instead of OUT's",
    )
    sp.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="worker processes for the edits and evaluations (the config's `jobs`; default 1), "
        "each on its share of the cores",
    )
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")

    sp = add(
        "report", _cmd_report, "rebuild the HTML report from run folders (several: compare them)"
    )
    sp.add_argument("runs", nargs="+", help="one or more `relsafe run` output folders")
    sp.add_argument("--out", default=None, help="report file (default: FIRST_RUN/report.html)")

    add("methods", _cmd_methods, "list registered safety methods")

    sp = add("edit", _cmd_edit, "apply a safety method to a model and export the edited model")
    add_world_arguments(sp)
    sp.add_argument("--method", default=None, help="method name (see `relsafe methods`)")
    sp.add_argument(
        "--model",
        dest="model_given",
        default=None,
        help="model spec or edit folder (default: relsafe-mini; with --revert: the edit's model)",
    )
    sp.add_argument(
        "--policy", default=None, help="safety policy YAML or bundled name (default, tiny)"
    )
    sp.add_argument(
        "--out", required=True, help="output folder (adapter/, merged/, record.json, ...)"
    )
    sp.add_argument("--config", default=None, help="method config YAML")
    sp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method config key (repeatable), e.g. --set steps=100",
    )
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    sp.add_argument(
        "--revert",
        default=None,
        metavar="EDIT_DIR",
        help="undo a saved edit (methods that can, e.g. uwm): restore the weights it changed",
    )
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")

    world = sub.add_parser("world", help="RelWorld: preview scenes, list styles")
    wsub = world.add_subparsers(dest="world_command", metavar="SUBCOMMAND")
    wp = wsub.add_parser("preview", help="write a PNG contact sheet of scenes with their tuples")
    wp.add_argument("--style", default="plain")
    wp.add_argument("--n", type=int, default=24, help="number of scenes")
    wp.add_argument("--seed", type=int, default=0)
    wp.add_argument("--size", type=int, default=64)
    wp.add_argument("--out", default="relworld_preview.png")
    wp.set_defaults(func=_cmd_world_preview)
    ws = wsub.add_parser("styles", help="list training and held-out styles")
    ws.set_defaults(func=_cmd_world_styles)
    world.set_defaults(func=lambda a: (world.print_help(), 2)[1])

    sp = add("policy", _cmd_policy, "validate a safety policy and show its derived neighbours")
    sp.add_argument("policy", help="policy YAML file")

    sp = add("pretrain", _cmd_pretrain, "reproduce the bundled relsafe-mini weights from a seed")
    from relsafe.pretrain.cli import add_arguments as add_pretrain_arguments  # no torch import

    add_pretrain_arguments(sp)  # --config, --set KEY=VALUE and the short flags

    from relsafe.commands import register_commands  # classify, index, search, serve

    register_commands(add, sub)
    return p


def _printable(msg: str) -> str:
    """An error message safe to print on any terminal: control characters (an escape sequence in
    a hostile file name or value) and undecodable bytes of a path (lone surrogates) are shown as
    escapes instead of being sent to the terminal or crashing the print."""
    out = []
    for ch in msg or "(no message)":
        if ch in "\n\t" or (ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NotMainProcess as e:  # a non-main rank of a distributed run: the main one writes
        logging.getLogger("relsafe").info("%s", e)
        return 0
    except RelsafeError as e:
        print(f"relsafe: error: {_printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relsafe: interrupted; completed work was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
