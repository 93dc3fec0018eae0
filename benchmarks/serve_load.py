"""Load test of ``relsafe serve`` on loopback: throughput and p50/p99 latency of
``/v1/moderations`` and ``/v1/search`` at 1, 8 and 32 concurrent clients, the batched server
against ``--no-batching`` (one input at a time through the same worker).

Setup (in a temporary folder): relsafe-mini with a ``prompt`` unsafe classifier fitted on the
default policy (saved with ``save_classifier``), and a text gallery index of ``--gallery``
RelWorld captions (``build_index``). Each server is the real command (``python -m relsafe.cli
serve ... --port P``) in a subprocess on 127.0.0.1, so client and server do not share a GIL;
the clients are httpx async tasks, each sending one request at a time (a moderation of one
caption, a text search with ``k`` 10 and ``--safety``) until ``--requests`` requests are done or
``--max-seconds`` pass. Bounded in count and time; nothing leaves the machine.

    python benchmarks/serve_load.py            # 512 requests per cell, gallery of 5000
    python benchmarks/serve_load.py --quick    # 96 requests per cell, gallery of 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

CLIENTS = (1, 8, 32)
ROUTES = ("moderations", "search")


def _captions(n: int) -> list[str]:
    """``n`` distinct RelWorld captions (every tuple's ``eval`` and ``heldout`` captions)."""
    from relsafe.data.probes import probe_tuples
    from relsafe.world.captions import all_captions

    out: list[str] = []
    for split in ("eval", "heldout", "edit"):
        for t in probe_tuples(None):
            out += all_captions(t, split)
            if len(out) >= n:
                return list(dict.fromkeys(out))[:n]
    return list(dict.fromkeys(out))[:n]


def _setup(folder: Path, gallery: int) -> tuple[Path, Path]:
    """Fit and save the classifier, build the text gallery index; returns (classifier, index)."""
    from relsafe.api import load_model, load_policy
    from relsafe.eval.unsafe_cls import fit_unsafe_classifier
    from relsafe.gallery import build_index
    from relsafe.safety.model import SafetyModel
    from relsafe.safety.store import save_classifier

    model, policy = load_model("relsafe-mini"), load_policy("default")
    clf = fit_unsafe_classifier(model, policy, "prompt", attach=False)
    clf_dir = save_classifier(
        clf, folder / "classifier", model_fingerprint=model.fingerprint(), policy="default"
    )
    sm = SafetyModel(model, clf, policy, spec="relsafe-mini")
    idx = build_index(sm, texts=_captions(gallery), out=folder / "index", progress=False)
    return clf_dir, idx.path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``relsafe serve`` in a subprocess on a free loopback port."""

    def __init__(
        self, clf: Path, index: Path, batching: bool, max_batch: int, max_wait_ms: float
    ) -> None:
        self.port = _free_port()
        cmd = [
            sys.executable, "-m", "relsafe.cli", "serve", "--model", "relsafe-mini",
            "--policy", "default", "--classifier", str(clf), "--index", str(index),
            "--port", str(self.port), "--log-level", "warning", "--max-batch", str(max_batch),
            "--max-wait-ms", str(max_wait_ms),
        ]  # fmt: skip
        if not batching:
            cmd.append("--no-batching")
        env = {k: v for k, v in os.environ.items() if k != "RELSAFE_API_KEY"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relsafe serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("relsafe serve did not start in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _drive(
    url: str, route: str, clients: int, n: int, max_s: float, texts: list[str], safety: str
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))
    start = time.perf_counter()

    async def client(c: Any) -> None:
        nonlocal errors
        for i in counter:
            if time.perf_counter() - start > max_s:
                return
            text = texts[i % len(texts)]
            body = (
                {"input": text}
                if route == "moderations"
                else {"text": text, "k": 10, "safety": safety}
            )
            t0 = time.perf_counter()
            r = await c.post(f"/v1/{route}", json=body)
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:
        await c.post(
            f"/v1/{route}",
            json={"input": "warm up"} if route == "moderations" else {"text": "warm up"},
        )
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "requests": len(lat),
        "errors": errors,
        "seconds": wall,
        "rps": len(lat) / wall if wall > 0 else 0.0,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
    }


def _batches(url: str) -> dict[str, float]:
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(("relsafe_batches_total", "relsafe_batched_inputs_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=512, help="requests per cell")
    ap.add_argument("--gallery", type=int, default=5000, help="captions in the text gallery")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time bound of one cell")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--routes", default=",".join(ROUTES), help="comma-separated subset")
    ap.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="comma-separated")
    ap.add_argument("--safety", default="redirect", choices=["off", "redirect", "filter"])
    ap.add_argument("--quick", action="store_true", help="96 requests per cell, gallery of 500")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.gallery, args.max_seconds = 96, 500, 20.0
    texts = _captions(1000)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="relsafe-serve-load-") as tmp:
        t0 = time.perf_counter()
        clf, index = _setup(Path(tmp), args.gallery)
        print(
            f"setup (classifier + {args.gallery}-caption index): {time.perf_counter() - t0:.1f} s"
        )
        for batching in (True, False):
            server = Server(clf, index, batching, args.max_batch, args.max_wait_ms)
            try:
                server.wait()
                for route in args.routes.split(","):
                    for clients in map(int, args.clients.split(",")):
                        res = asyncio.run(
                            _drive(
                                server.url,
                                route,
                                clients,
                                args.requests,
                                args.max_seconds,
                                texts,
                                args.safety,
                            )
                        )
                        rows.append(
                            {"batching": batching, "route": route, "clients": clients, **res}
                        )
                        print(
                            f"  {'batched' if batching else 'unbatched'} {route} x{clients}: "
                            f"{res['rps']:.1f} req/s, p50 {res['p50_ms']:.1f} ms, "
                            f"p99 {res['p99_ms']:.1f} ms ({res['requests']} requests, "
                            f"{res['errors']} errors)",
                            flush=True,
                        )
                print("  worker calls:", _batches(server.url))
            finally:
                server.stop()
    _table(rows)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


def _table(rows: list[dict[str, Any]]) -> None:
    cell = {(r["batching"], r["route"], r["clients"]): r for r in rows}
    print()
    print(
        "| route | clients | batched req/s | p50 ms | p99 ms | unbatched req/s | p50 ms | p99 ms "
        "| speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for route in ROUTES:
        for c in CLIENTS:
            b, u = cell.get((True, route, c)), cell.get((False, route, c))
            if b is None or u is None:
                continue
            up = b["rps"] / u["rps"] if u["rps"] else float("nan")
            print(
                f"| /v1/{route} | {c} | {b['rps']:.1f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} "
                f"| {u['rps']:.1f} | {u['p50_ms']:.1f} | {u['p99_ms']:.1f} | {up:.2f}x |"
            )


if __name__ == "__main__":
    sys.exit(main())
