"""The service's counters, written out in the Prometheus text format (no client library).

What ``GET /metrics`` shows: requests by route and status, a latency histogram per route,
the size of every batch the workers ran (a histogram per queue), how many batches and inputs each
queue ran, and the current depth of every queue. All updates happen on the event loop thread
except :meth:`Metrics.observe_batch`, called by the workers; a lock keeps them consistent.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

__all__ = ["LATENCY_BUCKETS", "BATCH_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the request latency histogram."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Upper bounds of the batch size histogram."""


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cum = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.bounds, self.counts, strict=False):
            cum += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {cum}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        out.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.n}")
        return out


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Request, latency and batch counters of one app."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batch_sizes: dict[str, _Histogram] = {}
        self.batches: dict[str, int] = defaultdict(int)
        self.batched_inputs: dict[str, int] = defaultdict(int)
        self.queue_depth: Callable[[], dict[str, int]] = dict
        self.inflight = 0
        """HTTP requests being handled now (updated on the event loop by the Guard)."""

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request (``route`` is the route template, not the raw path)."""
        with self._lock:
            self.requests[(method, route, int(status))] += 1
            self.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, queue: str, size: int) -> None:
        """Count one worker call of ``size`` inputs on ``queue``."""
        with self._lock:
            self.batches[queue] += 1
            self.batched_inputs[queue] += size
            self.batch_sizes.setdefault(queue, _Histogram(BATCH_BUCKETS)).observe(size)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP relsafe_requests_total HTTP requests by method, route and status.",
                "# TYPE relsafe_requests_total counter",
            ]
            for (m, r, s), n in sorted(self.requests.items()):
                lines.append(
                    f'relsafe_requests_total{{method="{m}",route="{_esc(r)}",status="{s}"}} {n}'
                )
            lines += [
                "# HELP relsafe_request_seconds Request latency by route.",
                "# TYPE relsafe_request_seconds histogram",
            ]
            for r, h in sorted(self.latency.items()):
                lines += h.lines("relsafe_request_seconds", f'route="{_esc(r)}"')
            lines += [
                "# HELP relsafe_batch_size Inputs per worker call, by queue.",
                "# TYPE relsafe_batch_size histogram",
            ]
            for q, h in sorted(self.batch_sizes.items()):
                lines += h.lines("relsafe_batch_size", f'queue="{_esc(q)}"')
            lines += [
                "# HELP relsafe_batches_total Worker calls by queue.",
                "# TYPE relsafe_batches_total counter",
            ]
            lines += [
                f'relsafe_batches_total{{queue="{_esc(q)}"}} {n}'
                for q, n in sorted(self.batches.items())
            ]
            lines += [
                "# HELP relsafe_batched_inputs_total Inputs processed by the workers, by queue.",
                "# TYPE relsafe_batched_inputs_total counter",
            ]
            lines += [
                f'relsafe_batched_inputs_total{{queue="{_esc(q)}"}} {n}'
                for q, n in sorted(self.batched_inputs.items())
            ]
        lines += [
            "# HELP relsafe_queue_depth Inputs waiting for a worker, by queue.",
            "# TYPE relsafe_queue_depth gauge",
        ]
        for q, n in sorted(self.queue_depth().items()):
            lines.append(f'relsafe_queue_depth{{queue="{_esc(q)}"}} {n}')
        return "\n".join(lines) + "\n"
