"""Run every hostile case of ``benchmarks/hostile/`` against the ``relsafe`` CLI and count outcomes.

Each case runs in its own subprocess (``python -m relsafe.cli ...``) under a 4 GiB address-space
limit and a timeout. Outcomes: ``clean error`` (non-zero exit, a message, no traceback), ``ok``
(exit 0), and the failures: ``traceback`` (a Python traceback reached the user), ``silent garbage``
(a bad input was accepted), ``data loss`` (a file the case protects changed or vanished),
``hang / oom`` (timeout or killed). The exit status is the number of failures (0 = all good).

    python benchmarks/hostile_probe.py                 # every case file
    python benchmarks/hostile_probe.py --only inputs   # benchmarks/hostile/cases_inputs.py only
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import pkgutil
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import Case  # noqa: E402

FAILURES = ("traceback", "silent garbage", "data loss", "hang / oom")


def _digest(path: Path) -> str | None:
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run_case(case: Case, cwd: Path) -> tuple[str, str]:
    before = {p: _digest(p) for p in case.keep}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "relsafe.cli", *case.argv],
            cwd=cwd,
            input=case.stdin,
            capture_output=True,
            text=True,
            timeout=case.timeout,
            preexec_fn=_limit,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return "hang / oom", f"timed out after {case.timeout:.0f} s"
    err = (proc.stderr or "") + (proc.stdout or "")
    last = next((ln for ln in reversed(err.strip().splitlines()) if ln.strip()), "")
    if any(_digest(p) != d for p, d in before.items()):
        return "data loss", last
    if "Traceback (most recent call last)" in err:
        return "traceback", last
    if proc.returncode < 0 or "MemoryError" in err:
        return "hang / oom", f"signal {-proc.returncode}" if proc.returncode < 0 else last
    if proc.returncode == 0:
        return ("silent garbage" if case.expect == "error" else "ok"), last
    if case.expect == "ok":
        return "traceback" if not last else "clean error (expected ok)", last
    return "clean error", last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="case file suffix, e.g. inputs")
    args = ap.parse_args()
    import hostile

    counts: dict[str, int] = {}
    n_fail = 0
    mods = sorted(
        m.name for m in pkgutil.iter_modules(hostile.__path__) if m.name.startswith("cases_")
    )
    for name in mods:
        if args.only and name.removeprefix("cases_") not in args.only:
            continue
        mod = importlib.import_module(f"hostile.{name}")
        with tempfile.TemporaryDirectory(prefix=f"relsafe-{name}-") as tmp:
            for case in mod.cases(Path(tmp)):
                t = time.time()
                outcome, msg = run_case(case, Path(tmp))
                counts[outcome] = counts.get(outcome, 0) + 1
                bad = outcome in FAILURES or outcome.endswith("(expected ok)")
                n_fail += bad
                mark = "FAIL" if bad else "ok  "
                print(f"{mark} {name}:{case.name} [{outcome}, {time.time() - t:.1f} s] {msg[:140]}")
    total = sum(counts.values())
    print(f"\n{total} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return n_fail


if __name__ == "__main__":
    raise SystemExit(main())
