"""Batching across concurrent callers: one asyncio queue per (kind, modality), one model thread.

A request handler :meth:`Batcher.submit` s its inputs (one queue item each) and awaits their
futures. Each queue has a worker task: it waits for a first item, then collects more until it has
``max_batch`` or ``max_wait_ms`` passed since the first (it does not wait when no other HTTP
request is in flight: a lone caller pays no batching latency), and runs the queue's handler on the whole
batch in **one** single-thread executor shared by every queue, so the model is never used from two
threads at once and one call embeds (and classifies, and searches) the batch together. The
handler returns one result (or one exception) per item; each caller's future gets its own.

Without batching (``ServeSettings.batching=False``) the same workers run with ``max_batch`` 1 and
no wait: the one-request-at-a-time baseline the load benchmark compares against.

Queues and workers belong to the event loop that first used them; a new loop (a new
``TestClient`` context, a restarted server) gets new ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from relsafe.serve.metrics import Metrics
from relsafe.serve.settings import ServeSettings

__all__ = ["Batcher", "Busy", "Handler"]

log = logging.getLogger("relsafe.serve")

Handler = Callable[[list[Any]], Sequence[Any]]
"""A batch handler: payloads -> one result or exception per payload, same order."""


class Busy(Exception):
    """More inputs are waiting than ``ServeSettings.max_queue`` allows (the caller gets 503)."""


@dataclass
class _Pending:
    payload: Any
    future: asyncio.Future[Any]


class Batcher:
    """Queues, workers and the model thread of one app.

    Args:
        settings: batch size, wait and queue bound (:class:`ServeSettings`).
        metrics: where batch sizes are counted.
        handlers: queue name (e.g. ``"moderate:text"``) -> its batch handler.
    """

    def __init__(
        self, settings: ServeSettings, metrics: Metrics, handlers: dict[str, Handler]
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.handlers = dict(handlers)
        self.max_batch = settings.effective_batch
        self.wait_s = settings.effective_wait_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relsafe-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[_Pending]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self.pending = 0
        metrics.queue_depth = self.depths

    def depths(self) -> dict[str, int]:
        """Inputs waiting in each queue (not counting the batch a worker is running)."""
        return {name: q.qsize() for name, q in self._queues.items()}

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._queues = {name: asyncio.Queue() for name in self.handlers}
        self._workers = [
            loop.create_task(self._worker(name, q), name=f"relsafe-batcher-{name}")
            for name, q in self._queues.items()
        ]
        self.pending = 0

    async def submit(self, queue: str, payloads: Sequence[Any]) -> list[Any]:
        """Queue ``payloads`` on ``queue`` and wait for their results (in order). An exception a
        handler returned for an item is raised here (the first one, if several)."""
        if queue not in self.handlers:
            raise KeyError(queue)
        self._ensure_started()
        if self.pending + len(payloads) > self.settings.max_queue:
            raise Busy(
                f"{self.pending} inputs are waiting (at most {self.settings.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        items = [_Pending(p, loop.create_future()) for p in payloads]
        self.pending += len(items)
        q = self._queues[queue]
        for it in items:
            q.put_nowait(it)
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        finally:
            for it in items:
                if not it.future.done():
                    it.future.cancel()

    async def _collect(self, q: asyncio.Queue[_Pending]) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        batch = [await q.get()]
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(q.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0 or self.metrics.inflight <= len(batch):
                break  # waited enough, or no other request in flight could join this batch
            try:
                batch.append(await asyncio.wait_for(q.get(), left))
            except TimeoutError:
                break
        return batch

    async def _worker(self, name: str, q: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        handler = self.handlers[name]
        while True:
            batch = await self._collect(q)
            self.pending -= len(batch)
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            self.metrics.observe_batch(name, len(live))
            try:
                results = await loop.run_in_executor(
                    self._executor, handler, [p.payload for p in live]
                )
                if len(results) != len(live):
                    raise RuntimeError(
                        f"batch handler {name} returned {len(results)} results for {len(live)}"
                    )
            except Exception as e:  # noqa: BLE001 - delivered to every caller of the batch
                if not isinstance(e, _expected_errors()):
                    log.exception("batch handler %s failed on %d inputs", name, len(live))
                results = [e] * len(live)
            for p, r in zip(live, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(r, BaseException):
                    p.future.set_exception(r)
                else:
                    p.future.set_result(r)

    async def aclose(self) -> None:
        """Stop the workers (waiting callers are cancelled) and the model thread."""
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            try:
                await t
            except (asyncio.CancelledError, RuntimeError):
                pass
        self._workers = []
        self._loop = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relsafe-model")


def _expected_errors() -> tuple[type[BaseException], ...]:
    from relsafe.errors import RelsafeError

    return (RelsafeError,)
