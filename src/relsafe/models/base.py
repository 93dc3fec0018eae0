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
"""

from __future__ import annotations

import fnmatch
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from relsafe.errors import InputError


@dataclass(frozen=True)
class LayerPreset:
    """Names the linear layers that methods may adapt (LoRA) or negate (UWM).

    Patterns are ``fnmatch`` globs over module names *relative to the tower* (as returned by
    ``tower.named_modules()``), e.g. ``"encoder.layers.*.self_attn.out_proj"``.
    """

    text_lora: tuple[str, ...] = ()
    vision_lora: tuple[str, ...] = ()
    text_uwm: tuple[str, ...] = ()
    vision_uwm: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def patterns(self, group: str) -> tuple[str, ...]:
        if hasattr(self, group) and group != "extra":
            return getattr(self, group)
        if group in self.extra:
            return self.extra[group]
        raise KeyError(f"layer preset has no group {group!r}")


def match_linear_layers(
    tower: nn.Module, patterns: Sequence[str], types: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> dict[str, nn.Module]:
    """Return the ``nn.Linear`` (or ``types``) modules of ``tower`` whose names match a glob.

    Raises :class:`InputError` when the patterns match nothing, so a misspelt layer name in a config
    is reported instead of silently editing no weights.
    """
    found = {
        name: mod
        for name, mod in tower.named_modules()
        if isinstance(mod, types) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }
    if patterns and not found:
        raise InputError(
            f"layer patterns {list(patterns)} match no nn.Linear in {type(tower).__name__}; "
            f"linear layers look like: {[n for n, m in tower.named_modules() if isinstance(m, nn.Linear)][:4]}"
        )
    return found


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
        """Embed texts in batches; returns postprocessed float32 features on CPU ``(N, D)``."""
        texts = _check_texts(texts)
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = {
                k: v.to(self.device) for k, v in self.tokenize(texts[i : i + batch_size]).items()
            }
            out.append(self.postprocess(self.forward_text(tokens), "text").float().cpu())
        return torch.cat(out)

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

    # ---- identity ----------------------------------------------------------------------
    def fingerprint(self, modality: str | None = None) -> str:
        """SHA-256 over class, geometry, image size and every parameter and buffer (persistent or
        not, so preprocessing constants count): changes whenever the outputs could.

        With ``modality`` (``"text"`` or ``"image"``), tensors that belong only to the *other*
        tower are left out, so an edit of one tower keeps the other modality's cached embeddings
        valid (a text-only safety edit re-embeds no images). Tensors outside both towers (logit
        scale, shared projections, wrapper scalars) count for both.
        """
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
