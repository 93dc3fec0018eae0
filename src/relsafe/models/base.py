"""The one interface every dual encoder in relsafe implements.

A :class:`DualEncoder` is an ``nn.Module`` with a text tower and an image tower that map into a
shared space. Everything else in relsafe (the embedding engine, every method, every eval suite) talks
to models only through this interface, so a new backbone needs one subclass and one registry entry.

Two levels of access:

* differentiable: :meth:`tokenize` / :meth:`preprocess` turn raw inputs into tensors, and
  :meth:`forward_text` / :meth:`forward_image` map those tensors to *raw* projected features with
  gradients (what training methods use);
* inference: :meth:`encode_text` / :meth:`encode_image` take raw inputs, run batched under
  ``torch.inference_mode`` and return features already put into the model's geometry by
  :meth:`postprocess` (L2-normalised for cosine models). :meth:`similarity` scores them.

Every backbone also lists the files it read (:meth:`~DualEncoder.checkpoint_files`, required), and
may offer typed optional capabilities whose base-class defaults mean "not supported", so callers
never probe with ``getattr``: :meth:`~DualEncoder.peft_root` (where LoRA goes),
:meth:`~DualEncoder.contrastive_logit_scale`, :meth:`~DualEncoder.split_tower` (frozen-prefix
cuts, :class:`TowerSplit`), :attr:`~DualEncoder.supports_traversal` /
:meth:`~DualEncoder.traverse` and :attr:`~DualEncoder.supports_unsafe_score` /
:meth:`~DualEncoder.unsafe_score`. :class:`LayerPreset` names a backbone's layers by
architectural role (:data:`ROLES`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relsafe.batching import in_input_order, length_order
from relsafe.errors import InputError
from relsafe.models.presets import (  # re-exported: the preset is part of this interface
    ROLES,
    TOWERS,
    LayerPreset,
    match_linear_layers,
)

__all__ = [
    "MODALITIES",
    "ROLES",
    "TOWERS",
    "DualEncoder",
    "LayerPreset",
    "TowerSplit",
    "check_modality",
    "match_linear_layers",
]

MODALITIES: tuple[str, ...] = ("text", "image")


def check_modality(modality: str) -> str:
    """``modality`` itself when it is ``"text"`` or ``"image"``, else an :class:`InputError`."""
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    return modality


class TowerSplit(ABC):
    """One tower cut in two at a frozen boundary (see :meth:`DualEncoder.split_tower`).

    When a method trains only the layers above the boundary, everything below computes the same
    activations for a given input at every step, so :meth:`prefix` runs it once per input and
    :meth:`suffix` finishes the tower from those activations with gradients. ``suffix(prefix(x))``
    is the same function as ``forward_text`` / ``forward_image`` on ``x`` (up to float rounding
    from batching). The backbone owns the cut, so methods never learn its module names.

    ``hidden`` is whatever the backbone needs: a tensor ``(N, ...)`` (relsafe-mini's image stages)
    or a dict of tensors (hidden states and their attention mask). :meth:`unbatch` splits it into
    per-item pieces a cache can keep and :meth:`batch` stacks such pieces again.

    Attributes:
        modality: ``"text"`` or ``"image"``.
        at: where the tower is cut, in the backbone's numbering of blocks (the first block the
            suffix runs).
    """

    def __init__(self, modality: str, at: int) -> None:
        self.modality = check_modality(modality)
        self.at = int(at)

    @abstractmethod
    def prefix(self, inputs: Any) -> Any:
        """Frozen activations of ``inputs`` (tokens for text, pixels ``(N, 3, H, W)`` for images)
        where the suffix starts; computed without gradients, on the model's device."""

    @abstractmethod
    def suffix(self, hidden: Any) -> torch.Tensor:
        """Raw projected features ``(N, D)`` from :meth:`prefix`'s output, differentiable."""

    @abstractmethod
    def prefix_modules(self) -> list[nn.Module]:
        """The modules :meth:`prefix` runs (their submodules included): they must stay frozen."""

    def keeps_frozen(self, modules: Iterable[nn.Module]) -> bool:
        """True when none of ``modules`` is run by the prefix, i.e. training exactly ``modules``
        leaves the prefix's activations unchanged and this split is valid for them."""
        inside = {id(m) for root in self.prefix_modules() for m in root.modules()}
        return not any(id(m) in inside for m in modules)

    def unbatch(self, hidden: Any) -> list[Any]:
        """Per-item pieces of a batched ``hidden`` (default: the rows of a tensor)."""
        return list(hidden.unbind(0))

    def batch(self, items: Sequence[Any]) -> Any:
        """Batch pieces from :meth:`unbatch` back into a ``hidden`` for :meth:`suffix`."""
        return torch.stack(list(items))

    def item_length(self, item: Any) -> int | None:
        """How many padded positions a piece from :meth:`unbatch` fills in a :meth:`batch`
        (a text's tokens), or None when every piece is the same size (images). Where pieces
        differ, a batch pads them all to the longest, so callers can group pieces of similar
        length (:func:`relsafe.methods.text_prefix.length_buckets`)."""
        return None


class DualEncoder(nn.Module, ABC):
    """A text tower and an image tower mapping into one space with a similarity.

    Subclasses set :attr:`spec` (the string the registry resolved), :attr:`preset`, and implement
    the abstract methods. ``geometry`` is ``"cosine"`` unless a subclass says otherwise.
    """

    geometry: str = "cosine"
    preset: LayerPreset = LayerPreset()

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec

    # ---- towers and inputs -------------------------------------------------------------
    @property
    @abstractmethod
    def text_tower(self) -> nn.Module:
        """The text encoder (including its projection head where it has one)."""

    @property
    @abstractmethod
    def vision_tower(self) -> nn.Module:
        """The image encoder (including its projection head where it has one)."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer used by :meth:`tokenize`."""

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Dimension of the shared space."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side length in pixels that :meth:`preprocess` produces."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise texts into tensors for :meth:`forward_text` (on CPU)."""

    @abstractmethod
    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Turn PIL images into a float batch ``(N, 3, H, W)`` for :meth:`forward_image` (CPU)."""

    @abstractmethod
    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw projected text features ``(N, D)``, differentiable."""

    @abstractmethod
    def forward_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw projected image features ``(N, D)``, differentiable."""

    # ---- geometry ----------------------------------------------------------------------
    def postprocess(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Map raw features into the model's geometry (L2-normalised for cosine models)."""
        del modality
        return nn.functional.normalize(features.float(), dim=-1)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Pairwise similarity ``(Na, Nb)`` between postprocessed embeddings (higher = closer)."""
        if a.shape[-1] != b.shape[-1]:
            raise InputError(
                f"embedding dims differ: a has {a.shape[-1]}, b has {b.shape[-1]} "
                f"(were they made by the same model?)"
            )
        return a.float() @ b.float().T

    def pair_similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise similarity ``(N,)`` between matching rows of ``a`` and ``b``."""
        if a.shape != b.shape:
            raise InputError(
                f"pair_similarity needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        return (a.float() * b.float()).sum(-1)

    # ---- inference ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embed texts in batches of similar length (characters stand in for tokens, so a batch
        pads little); returns postprocessed float32 features on CPU ``(N, D)``, in input order."""
        texts = _check_texts(texts)
        order = length_order(texts)
        out = []
        for i in range(0, len(texts), batch_size):
            chunk = [texts[j] for j in order[i : i + batch_size]]
            tokens = {k: v.to(self.device) for k, v in self.tokenize(chunk).items()}
            out.append(self.postprocess(self.forward_text(tokens), "text").float().cpu())
        return in_input_order(torch.cat(out), order)

    @torch.inference_mode()
    def encode_image(
        self, images: Sequence[Any] | torch.Tensor, batch_size: int = 256
    ) -> torch.Tensor:
        """Embed PIL images (or an already preprocessed ``(N,3,H,W)`` batch) ``-> (N, D)``."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[0] == 0:
                raise InputError(
                    f"expected a non-empty (N, 3, H, W) pixel batch, got shape {tuple(images.shape)}"
                )
            batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
            pix_iter = iter(batches)
        else:
            images = list(images)
            if not images:
                raise InputError("encode_image got an empty list of images")
            pix_iter = (
                self.preprocess(images[i : i + batch_size])
                for i in range(0, len(images), batch_size)
            )
        out = []
        for pix in pix_iter:
            out.append(
                self.postprocess(self.forward_image(pix.to(self.device)), "image").float().cpu()
            )
        return torch.cat(out)

    # ---- optional capabilities (typed, with "not supported" defaults) ----------------------
    @abstractmethod
    def checkpoint_files(self) -> list[Path]:
        """Every file read to build this model (weights, configs, tokenizer and processor files,
        and those of any model it was built on), for provenance hashes. A model built in memory
        returns what it did read, possibly ``[]``."""

    def peft_root(self) -> nn.Module:
        """The module PEFT wraps for LoRA (default: the model itself). A backend that has its own
        model class returns it (HF CLIP: the ``CLIPModel``), so a saved adapter loads onto it."""
        return self

    def contrastive_logit_scale(self) -> torch.Tensor | None:
        """The learned *log* temperature of the contrastive loss (a 0-d tensor, unclamped, as
        stored: CLIP's ``logit_scale``), or None when the model has none (default)."""
        return None

    def split_tower(self, modality: str, at: int) -> TowerSplit | None:
        """Cut the ``modality`` tower before its block ``at`` (see :class:`TowerSplit`), or None
        when this backbone cannot (the default) or ``at`` is out of range. Methods that train only
        the top of a tower use it to run the frozen bottom once per input."""
        check_modality(modality)
        del at
        return None

    @property
    def supports_traversal(self) -> bool:
        """Whether the model has :meth:`traverse` (hyperbolic models: True; they still need their
        radii fitted, and say so)."""
        return False

    def traverse(self, emb: torch.Tensor, modality: str, target: str | None = None) -> torch.Tensor:
        """Safety traversal of postprocessed query embeddings ``(N, D)`` toward a safe region.

        Only models whose geometry has one implement it (:attr:`supports_traversal`); the default
        raises :class:`InputError`.
        """
        del emb, target
        check_modality(modality)
        raise InputError(
            f"{type(self).__name__} ({self.geometry} geometry) has no safety traversal; it needs "
            "a hyperbolic model, e.g. one trained with the hysac method"
        )

    @property
    def supports_unsafe_score(self) -> bool:
        """Whether :meth:`unsafe_score` works (hyperbolic models: True)."""
        return False

    def unsafe_score(self, emb: torch.Tensor) -> torch.Tensor:
        """Unsafe score ``(N,)`` of postprocessed embeddings from the geometry alone (hyperbolic:
        distance from the origin). The default raises :class:`InputError`."""
        del emb
        raise InputError(
            f"{type(self).__name__} ({self.geometry} geometry) has no geometric unsafe score; "
            "fit a classifier (a probe or prompts) instead"
        )

    # ---- identity ----------------------------------------------------------------------
    def freeze_fingerprint(self) -> None:
        """Promise that this model's weights will not change from now on (a model loaded to be
        evaluated): :meth:`fingerprint` is then hashed once per modality and remembered, instead
        of on every call (about 0.2 s each for relsafe-mini's text tower).

        A remembered fingerprint is still checked against a cheap identity of every tensor (its
        name, object, storage and version counter), so an in-place operation, a replaced tensor or
        an added or removed adapter rehashes. Only writes through ``tensor.data`` (which bypass
        the version counter, as PEFT's merge does) escape that check: do not freeze a model that
        will be edited."""
        self.__dict__["_fingerprint_memo"] = {}

    def _tensor_identity(self) -> tuple[Any, ...]:
        return tuple(
            (n, id(t), t.data_ptr(), t._version)
            for n, t in (*self.named_parameters(), *self.named_buffers())
        )

    def fingerprint(self, modality: str | None = None) -> str:
        """SHA-256 over class, geometry, image size and every parameter and buffer (persistent or
        not, so preprocessing constants count): changes whenever the outputs could.

        With ``modality`` (``"text"`` or ``"image"``), tensors that belong only to the *other*
        tower are left out, so an edit of one tower keeps the other modality's cached embeddings
        valid (a text-only safety edit re-embeds no images). Tensors outside both towers (logit
        scale, shared projections, wrapper scalars) count for both.

        Hashed on every call unless :meth:`freeze_fingerprint` was called.
        """
        memo: dict[str | None, tuple[tuple[Any, ...], str]] | None = self.__dict__.get(
            "_fingerprint_memo"
        )
        if memo is None:
            return self._hash_tensors(modality)
        identity = self._tensor_identity()
        hit = memo.get(modality)
        if hit is None or hit[0] != identity:
            hit = memo[modality] = (identity, self._hash_tensors(modality))
        return hit[1]

    def _hash_tensors(self, modality: str | None) -> str:
        h = hashlib.sha256()
        h.update(
            f"{type(self).__module__}.{type(self).__qualname__}|{self.geometry}|{self.image_size}".encode()
        )
        if modality is None:
            tensors = dict(self.state_dict())
            tensors.update({f"buffer:{n}": b for n, b in self.named_buffers()})
        else:
            if modality not in ("text", "image"):
                raise InputError(f"modality must be 'text' or 'image', got {modality!r}")
            this, other = (
                (self.text_tower, self.vision_tower)
                if modality == "text"
                else (self.vision_tower, self.text_tower)
            )

            def ids(m: nn.Module) -> set[int]:
                return {id(t) for t in (*m.parameters(), *m.buffers())}

            skip = ids(other) - ids(this)
            h.update(f"|modality={modality}".encode())
            tensors = {
                n: t
                for n, t in (*self.named_parameters(), *self.named_buffers())
                if id(t) not in skip
            }
        for name, t in sorted(tensors.items()):
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(
                t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            )
        return h.hexdigest()

    @abstractmethod
    def save_pretrained(self, folder: str) -> None:
        """Write the model to ``folder`` so the registry can load it back (safetensors only)."""


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("encode_text takes a list of strings, got a single string")
    texts = list(texts)
    if not texts:
        raise InputError("encode_text got an empty list of texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text #{i} is {type(t).__name__}, not str")
    return texts
