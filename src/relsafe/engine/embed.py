"""Batched, cached embedding of texts and images with any :class:`~relsafe.models.base.DualEncoder`.

:class:`EmbeddingEngine` is the one place relsafe turns raw inputs into embedding matrices:

* inputs run in batches of ``batch_size`` (texts shortest first, :mod:`relsafe.batching`)
  through ``forward_text`` / ``forward_image`` (inference mode) and ``model.postprocess``; only
  the ``(N, D)`` float32 outputs accumulate, so memory is bounded by the batch size, never by the
  dataset: image files open lazily and their decoded pixels are bounded across worker threads by
  :func:`relsafe.data.images.max_decoded_bytes` (huge files in smaller chunks, same values);
* a thread pool prepares the next batches (JPEG decoding, resizing, tokenisation) while the current
  one runs, like a ``DataLoader`` with worker threads (PIL and the tokenizers release the GIL);
* ``dtype="auto"`` computes in bfloat16 with ``torch.autocast`` on CUDA; on CPU in bfloat16 only
  where the CPU has bf16 units and a probe batch agrees with float32 (min cosine >= 0.999), else
  float32; ``int8-text`` runs the text tower with dynamic int8 linears (see
  :mod:`relsafe.engine.precision`); outputs are always float32 on CPU, with the torch threads
  fitted to the cores (:func:`~relsafe.engine.precision.fit_threads`). Whoever loads the model
  picks attention (SDPA on CUDA) and weight dtype (:func:`recommended_load_kwargs`);
* with ``cache_dir`` set, every call's result is stored on disk (see :mod:`relsafe.engine.cache`)
  keyed by the model fingerprint (recomputed on every call, so edited weights never hit stale
  entries) and a hash of the inputs; a repeated call loads the matrix without running the model;
* with ``distributed=True`` under a launcher (``accelerate launch`` / ``torchrun``), each process
  embeds its share of whole batches, gathered on every process (:mod:`relsafe.distributed`); with
  a cache each share is its own entry, so a killed launch resumes per shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from relsafe.batching import in_input_order, length_order
from relsafe.data.images import image_source, load_image_file, source_pixels
from relsafe.engine.cache import EmbeddingCache, cache_key, hash_images, hash_texts
from relsafe.engine.precision import (
    Precision,
    choose_precision,
    fit_threads,
    probe_cosine,
    resolve_dtype,
)
from relsafe.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "EmbeddingEngine",
    "load_image_file",
    "progress_enabled",
    "recommended_load_kwargs",
    "resolve_device",
    "resolve_dtype",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; asking for absent CUDA is an error."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise InputError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {str(dev)!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def recommended_load_kwargs(device: str | torch.device = "auto") -> dict[str, Any]:
    """Loader keyword arguments for fast inference with the HF backend on ``device``.

    SDPA attention everywhere (flash / memory-efficient kernels on CUDA); weights stay float32 and
    the engine's autocast computes in bfloat16 on CUDA. Pass to ``load_model(spec, **kwargs)``.
    """
    dev = resolve_device(device)
    return {"device": str(dev), "attn_implementation": "sdpa"}


def progress_enabled(progress: bool) -> bool:
    """Progress bars are on when asked for, unless the environment says ``CI=true``."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(progress) and not ci


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("embed_texts takes a list of strings, got a single string")
    texts = list(texts)
    if not texts:
        raise InputError("embed_texts got an empty list of texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text #{i} is {type(t).__name__}, not str")
    return texts


class EmbeddingEngine:
    """Batched, prefetching, optionally cached embedding with a :class:`DualEncoder`.

    Args:
        model: the dual encoder. It is moved to ``device`` if it is not there already, and put in
            eval mode for the duration of each call (its training flag is restored afterwards).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: compute dtype: ``"auto"`` (bfloat16 autocast on CUDA; on CPU bfloat16 where bf16
            units exist and the probe passes, else float32), ``"float32"``, ``"bfloat16"``
            (autocast, also on CPU), ``"float16"`` (CUDA only) or ``"int8-text"`` (CPU: dynamic
            int8 text tower when its probe passes). Outputs are float32 whatever the dtype.
        batch_size: items per forward pass; bounds peak memory.
        cache_dir: folder for the on-disk embedding cache; ``None`` disables caching.
        progress: show a tqdm bar (never under ``CI=true``).
        num_workers: threads that prepare batches ahead (decode, preprocess, tokenise); ``0``
            prepares each batch in the calling thread just before it runs. ``None`` picks
            ``min(8, cpu_count)``.
        prefetch_batches: how many prepared batches may wait ahead of the running one (at least
            ``num_workers`` are in flight so every worker has something to do).
        distributed: shard each call across the processes of a launch and gather the rows
            (every process must make the same calls); a no-op without a launcher.

    ``stats`` counts ``forward_batches``, ``cache_hits`` and ``cache_misses`` over the engine's
    life; ``last_call`` describes the latest call (items, seconds, items/s, cached).
    """

    def __init__(
        self,
        model: Any,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        batch_size: int = 256,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        num_workers: int | None = None,
        prefetch_batches: int = 2,
        distributed: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_workers is not None and num_workers < 0:
            raise InputError(f"num_workers must be >= 0, got {num_workers}")
        if prefetch_batches < 0:
            raise InputError(f"prefetch_batches must be >= 0, got {prefetch_batches}")
        self.model = model
        self.device = resolve_device(device)
        if _model_device(model) != self.device:
            model.to(self.device)
        self.distributed = bool(distributed)
        if self.device.type == "cpu":
            fit_threads(_local_processes() if self.distributed else 1)
        self.batch_size = batch_size
        self.cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.prefetch_batches = prefetch_batches
        self.stats: dict[str, int] = {"forward_batches": 0, "cache_hits": 0, "cache_misses": 0}
        self.last_call: dict[str, Any] = {}
        self._int8: Any = None
        self.precision: Precision = choose_precision(
            dtype,
            self.device,
            fingerprint=self.model_fingerprint,
            probe=self._probe,
            cache_dir=self.cache_dir_path(cache_dir),
        )
        self.dtype = self.precision.autocast
        if self.precision.mode != "int8-text":
            self._int8 = None  # a probe's int8 copy that failed: not kept

    # ---- public API ----------------------------------------------------------------------
    @property
    def dtype_name(self) -> str:
        """The compute mode: ``float32``, ``bfloat16``, ``float16`` or ``int8-text``."""
        return self.precision.mode

    @property
    def cache_dir(self) -> Any:
        """The on-disk cache's folder (a ``Path``), or None when caching is off."""
        return self.cache.folder if self.cache is not None else None

    @staticmethod
    def cache_dir_path(cache_dir: str | os.PathLike[str] | None) -> Any:
        from pathlib import Path

        return Path(cache_dir) if cache_dir is not None else None

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts ``-> (N, D)`` float32 on CPU, postprocessed into the model's geometry.
        They run shortest first (:mod:`relsafe.batching`); the rows come back in input order."""
        texts = _check_texts(texts)
        order = length_order(texts)
        by_length = [texts[i] for i in order]  # what is embedded, cached and hashed

        def produce(sl: slice) -> dict[str, torch.Tensor]:
            return self._pin(self.model.tokenize(by_length[sl]))

        out = self._run("text", len(texts), lambda: hash_texts(by_length), produce)
        return in_input_order(out, order)

    def embed_images(self, images: Any) -> torch.Tensor:
        """Embed images ``-> (N, D)`` float32 on CPU, postprocessed into the model's geometry.

        ``images`` is one of:

        * a list of PIL images and/or image file paths (``str`` / ``PathLike``); files are opened
          lazily, one batch at a time, by the worker threads; a missing, unreadable or corrupt
          file raises :class:`InputError` naming it;
        * a ``uint8`` array or tensor ``(N, H, W, 3)`` of RGB pixels (preprocessed per batch like
          PIL images);
        * a preprocessed float tensor or array ``(N, 3, S, S)`` with ``S = model.image_size``,
          fed to the model as is.
        """
        n, produce, data = self._image_source(images)
        # hash what was actually embedded (a generator is consumed by _image_source)
        return self._run("image", n, lambda: hash_images(data), produce)

    def model_fingerprint(self, modality: str | None = None) -> str:
        """``model.fingerprint(modality)`` plus what it leaves out but outputs depend on.

        The base fingerprint hashes the ``state_dict``; non-persistent buffers (such as the HF
        backend's image mean/std), the image size and the tokenizer's identity are folded in too,
        so a model that preprocesses differently never reads another's cache entries. Recomputed
        on every call: an in-place weight edit always changes it.
        """
        h = hashlib.sha256(self.model.fingerprint(modality).encode())
        state = set(self.model.state_dict())
        for name, buf in sorted(self.model.named_buffers(), key=lambda kv: kv[0]):
            if name in state:
                continue
            t = buf.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        tok = getattr(self.model, "tokenizer", None)
        h.update(f"image_size={getattr(self.model, 'image_size', None)}".encode())
        if tok is not None:
            h.update(
                f"tokenizer={type(tok).__name__}|{_safe_len(tok)}|"
                f"{getattr(tok, 'model_max_length', None)}".encode()
            )
        return h.hexdigest()

    # ---- input handling --------------------------------------------------------------------
    def _pin(self, x: Any) -> Any:
        if self.device.type != "cuda":
            return x
        if isinstance(x, torch.Tensor):
            return x.pin_memory()
        return {k: v.pin_memory() for k, v in x.items()}

    def _image_source(
        self, images: Any
    ) -> tuple[int, Callable[[slice], torch.Tensor], list[Any] | np.ndarray | torch.Tensor]:
        """Validate ``images``; return ``(N, batch producer, the materialised input)``; decoding
        is :mod:`relsafe.data.images`' (files opened lazily by the producer, a batch at a time)."""
        model = self.model
        src = image_source(
            images, what="embed_images", image_size=int(model.image_size), array_items=False
        )
        if isinstance(src, torch.Tensor):
            pix = src

            def produce_pix(sl: slice) -> torch.Tensor:
                return self._pin(pix[sl].float()) if pix.device.type == "cpu" else pix[sl]

            return len(pix), produce_pix, pix

        def produce(sl: slice) -> torch.Tensor:
            return self._pin(source_pixels(model, src, sl))

        return len(src), produce, src

    # ---- running -------------------------------------------------------------------------
    def _run(
        self,
        modality: str,
        n: int,
        input_hash: Callable[[], str],
        produce: Callable[[slice], Any],
    ) -> torch.Tensor:
        t0 = time.perf_counter()
        key = None
        if self.cache is not None:
            key = cache_key(
                self.model_fingerprint(modality),
                modality,
                input_hash(),
                self.dtype_name,
                self.device.type,
            )
            hit = self.cache.load(key, n)
            if hit is not None:
                self.stats["cache_hits"] += 1
                self._record(modality, n, t0, cached=True)
                log.debug("embedding cache hit for %d %s inputs (%s)", n, modality, key[:12])
                return hit
            self.stats["cache_misses"] += 1
        out = (
            self._compute_sharded(modality, n, produce, key)
            if self.distributed
            else self._compute(modality, n, produce)
        )
        if self.cache is not None and key is not None and _is_main(self.distributed):
            self.cache.save(
                key,
                out,
                {
                    "modality": modality,
                    "n": str(n),
                    "dtype": self.dtype_name,
                    "device": self.device.type,
                    "model_spec": str(getattr(self.model, "spec", "")),
                },
            )
        self._record(modality, n, t0, cached=False)
        return out

    def _record(self, modality: str, n: int, t0: float, cached: bool) -> None:
        dt = time.perf_counter() - t0
        self.last_call = {
            "modality": modality,
            "n": n,
            "seconds": dt,
            "items_per_s": n / dt if dt > 0 else float("inf"),
            "cached": cached,
        }
        log.debug(
            "embedded %d %ss in %.2fs (%.1f/s)%s",
            n,
            modality,
            dt,
            self.last_call["items_per_s"],
            " from cache" if cached else "",
        )

    def _autocast(self, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _int8_model(self) -> Any:
        if self._int8 is None:
            from relsafe.engine.precision import int8_text_model

            self._int8 = int8_text_model(self.model)
        return self._int8

    def _forward(self, modality: str, inputs: Any, mode: str | None = None) -> torch.Tensor:
        """One batch through the model in ``mode`` (default: the engine's) ``-> (B, D)`` float32
        on CPU."""
        model = self.model
        mode = mode or self.precision.mode
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(mode, torch.float32)
        with torch.inference_mode():
            with self._autocast(dtype):
                if modality == "text":
                    tokens = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
                    tower = self._int8_model() if mode == "int8-text" else model
                    feats = tower.forward_text(tokens)
                else:
                    feats = model.forward_image(inputs.to(self.device, non_blocking=True))
            emb = model.postprocess(feats.float(), modality).float()
        self.stats["forward_batches"] += 1
        return emb.to("cpu")

    def _probe(self, mode: str) -> float:
        """Min cosine of ``mode`` against float32 on the probe batch (eval mode, restored)."""
        was_training = bool(getattr(self.model, "training", False))
        batches = self.stats["forward_batches"]
        self.model.eval()
        try:
            modalities = ("text",) if mode == "int8-text" else ("text", "image")

            def run(which: str, batch: tuple[str, Any]) -> torch.Tensor:
                return self._forward(batch[0], batch[1], "float32" if which == "float32" else mode)

            return probe_cosine(run, self.model, modalities)
        finally:
            self.model.train(was_training)
            self.stats["forward_batches"] = batches  # the probe is not the caller's work

    def _batches(self, n: int, produce: Callable[[slice], Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(start, prepared batch)`` in order, preparing up to ``depth`` batches ahead."""
        starts = range(0, n, self.batch_size)
        if self.num_workers == 0:
            for s in starts:
                yield s, produce(slice(s, s + self.batch_size))
            return
        depth = max(self.num_workers, self.prefetch_batches, 1)
        pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="relsafe-embed")
        pending: deque[tuple[int, Future[Any]]] = deque()
        it = iter(starts)
        try:
            for s in it:
                pending.append((s, pool.submit(produce, slice(s, s + self.batch_size))))
                if len(pending) >= depth:
                    break
            while pending:
                s, fut = pending.popleft()
                batch = fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(produce, slice(nxt, nxt + self.batch_size))))
                yield s, batch
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _compute_sharded(
        self, modality: str, n: int, produce: Callable[[slice], Any], key: str | None
    ) -> torch.Tensor:
        """This process's share of whole batches, then all shares gathered in order
        (:func:`relsafe.distributed.sharded_rows`; each share cached on its own)."""
        from relsafe.distributed import sharded_rows

        def compute(lo: int, hi: int) -> torch.Tensor:
            return self._compute(
                modality, hi - lo, lambda sl: produce(slice(lo + sl.start, min(hi, lo + sl.stop)))
            )

        return sharded_rows(n, self.batch_size, compute, self.cache, key, modality)

    def _compute(self, modality: str, n: int, produce: Callable[[slice], Any]) -> torch.Tensor:
        from tqdm.auto import tqdm

        model = self.model
        was_training = bool(getattr(model, "training", False))
        model.eval()
        out: torch.Tensor | None = None
        bar = tqdm(
            total=n,
            desc=f"embed {modality}s",
            unit=modality,
            disable=not progress_enabled(self.progress),
            leave=False,
        )
        batches = self._batches(n, produce)
        try:
            for start, batch in batches:
                emb = self._forward(modality, batch)
                expected = min(self.batch_size, n - start)
                if emb.ndim != 2 or emb.shape[0] != expected:
                    raise InputError(
                        f"model returned {modality} features of shape {tuple(emb.shape)} for a "
                        f"batch of {expected}; expected ({expected}, D)"
                    )
                if out is None:
                    out = torch.empty(n, emb.shape[1], dtype=torch.float32)
                out[start : start + expected] = emb
                bar.update(expected)
        finally:
            batches.close()  # stops the prefetch threads now, also on errors
            bar.close()
            model.train(was_training)
        assert out is not None  # n >= 1 is checked by every caller
        return out


def _is_main(distributed: bool) -> bool:
    if not distributed:
        return True
    from relsafe.distributed import is_main

    return is_main()


def _local_processes() -> int:
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _safe_len(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def _model_device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
