"""The frozen CLIP foundation model: loading by pretrained tag or local checkpoint, batched encoding.

Everything downstream (pseudo-labels, the CLAIR head, the text-only mapping) consumes the
L2-normalised features this module produces, so normalisation happens here and only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from clair_vec.errors import CheckpointError, WeightsNotFoundError
from clair_vec.method._torchvision_shim import ensure_torchvision
from clair_vec.method.int8_encoder import int8_vision_tower
from clair_vec.method.linear_attention import attention_view
from clair_vec.method.pixel_batches import autocast, prepared_batches, to_device
from clair_vec.progress import progress_bar

ensure_torchvision()
import open_clip  # noqa: E402

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)
#: Small random-initialisable architectures shipped for tests and the offline demo.
TINY_ARCHS = tuple(sorted(p.stem for p in _CONFIG_DIR.glob("*.json")))
#: Images an int8 forward takes at once: its GEMMs slow down past this (ViT-B-32, 2 cores, one run:
#: 56 / 69 / 69 / 52 img/s at 8 / 16 / 32 / 64), where fp32's stay flat; a batch is run in slices.
INT8_SLICE = 32
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class _RandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    quiet = _RandomInitFilter()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


@contextlib.contextmanager
def _seeded_rng(seed: int | None) -> Iterator[None]:
    """torch's global RNG seeded with ``seed`` inside, and as it was outside; untouched for None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _looks_like_path(pretrained: str) -> bool:
    return pretrained.endswith(_CHECKPOINT_SUFFIXES) or os.sep in pretrained or pretrained.startswith(".")


def _offline_error(arch: str, pretrained: str) -> WeightsNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    return WeightsNotFoundError(
        f"CLIP weights {arch}/{pretrained} are not in the local cache and cannot be downloaded"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ''}. Download them on a connected machine "
        "(open_clip caches under ~/.cache/huggingface) or pass the path of a local checkpoint "
        f"file, e.g. --clip-pretrained /models/{arch}.pt"
    )


#: at most this many images are preprocessed on the calling thread, without worker threads
INLINE_IMAGES = 8


class FoundationModel:
    """A frozen open_clip model with the encode helpers CLAIR needs.

    ``pretrained`` is an open_clip tag (``"openai"``), a local checkpoint file, or ``None`` for
    random initialisation (tests and the bootstrap of the offline demo).
    """

    def __init__(self, model: Any, arch: str, pretrained: str | None, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.arch = arch
        self.pretrained = pretrained
        self.device = device
        self.tokenizer = open_clip.get_tokenizer(arch)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.preprocess = open_clip.image_transform(self.image_size, is_train=False)
        self._int8: torch.nn.Module | None = None
        self._bf16: torch.nn.Module | None = None  # the tower a CPU runs in bf16 (cpu_bf16_visual)
        self._towers_lock = threading.Lock()  # the int8 and bf16 towers are each made once

    @classmethod
    def load(cls, arch: str = "ViT-B-32", pretrained: str | None = "openai", device: str = "cpu",
             seed: int | None = None) -> FoundationModel:  # fmt: skip
        """``seed`` fixes random weights (``pretrained=None``) whatever torch's global RNG holds, so a
        training run from random CLIP is the same in a fresh process and after other work; None draws
        them from the global RNG, as open_clip does."""
        if arch not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip architecture {arch!r}; e.g. ViT-B-32, ViT-B-16, or a tiny test "
                f"architecture {list(TINY_ARCHS)}. open_clip.list_models() lists all."
            )
        if pretrained is None:
            # random weights are what the caller asked for (tests, benchmarks, the bootstrap's
            # starting point): open_clip's root-logger warning about them is noise in every run
            with _without_random_init_warning(), _seeded_rng(seed):
                model = open_clip.create_model(arch, pretrained=None)
            return cls(model, arch, None, device)
        if os.path.isdir(pretrained):
            inside = sorted(str(f) for f in Path(pretrained).iterdir() if f.name.endswith(_CHECKPOINT_SUFFIXES))[:3]
            raise WeightsNotFoundError(
                f"--clip-pretrained {pretrained!r} is a folder; pass the checkpoint file itself (.pt/.bin/.safetensors)"
                + (f", e.g. {inside[0]!r}" if inside else f": none is in that folder for architecture {arch!r}")
            )
        if os.path.exists(pretrained):
            pretrained = str(Path(pretrained).resolve())
        elif _looks_like_path(pretrained):
            raise WeightsNotFoundError(
                f"CLIP checkpoint file {pretrained!r} does not exist. Pass the path of a downloaded "
                f"open_clip checkpoint (.pt/.bin/.safetensors) for architecture {arch!r}."
            )
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags:
                raise WeightsNotFoundError(
                    f"open_clip has no pretrained tag {pretrained!r} for {arch!r}; known tags: {tags}. "
                    "Or pass a local checkpoint path."
                )
        try:
            model = open_clip.create_model(arch, pretrained=pretrained, load_weights=True)
        except (AssertionError, KeyError, IndexError, TypeError, EOFError, pickle.UnpicklingError, struct.error, RuntimeError,
                UnicodeDecodeError) as exc:
            if not os.path.isfile(pretrained):
                if isinstance(exc, RuntimeError) and ("download" in str(exc).lower() or "hub" in str(exc).lower()):
                    raise _offline_error(arch, pretrained) from exc
                raise
            # open_clip reports a file of another architecture as an assert deep in its loader
            # ("text pos_embed width changed!") or a state_dict key list of hundreds of lines
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"CLIP weights file {pretrained!r} does not fit architecture {arch!r} ({type(exc).__name__}: {reason}). "
                f"Pass the --clip-model the weights were made for (a bootstrap-clip file: the --clip-model it was "
                f"trained with, e.g. clair-tiny), or a checkpoint of {arch}."
            ) from None
        except FileNotFoundError as exc:
            raise WeightsNotFoundError(f"cannot load CLIP checkpoint {pretrained!r}: {exc}") from exc
        return cls(model, arch, pretrained, device)

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().clamp(max=100.0))

    @property
    def supports_prompt_learning(self) -> bool:
        return hasattr(self.model, "token_embedding") and hasattr(self.model, "transformer")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode_images(
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        *,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        seeds: Sequence[int] | None = None,
        batch_size: int = 64,
        progress: bool | str = False,
        precision: str | None = None,
    ) -> torch.Tensor:
        """L2-normalised image features, ``(N, embed_dim)`` float32 on the CPU.

        ``images`` are PIL images (transformed by ``transform``, default CLIP's eval preprocessing,
        in worker threads while the previous batch encodes) or an already preprocessed
        ``(N, 3, H, W)`` tensor. ``seeds`` seeds torch's RNG before each image's transform, making
        random augmentations a function of the image, not of the order or the worker it is
        processed in; seeded transforms run on this thread, since torch's RNG is global.
        ``precision``: ``fp32`` (default), ``bf16``/``fp16`` autocast for the forward, or ``int8``
        (the vision tower's linear layers quantised, on a CPU).
        """
        transform = transform or self.preprocess
        n = len(images)
        out = torch.empty(n, self.embed_dim)
        desc = progress if isinstance(progress, str) else "CLIP image features"
        # a few images (a query) are preprocessed here: a thread pool per call would cost more than it saves
        if isinstance(images, torch.Tensor) or seeds is not None or n <= INLINE_IMAGES:
            batches: Iterator[tuple[int, Any]] = (
                (s, images[s : s + batch_size]) for s in range(0, n, batch_size)
            )
        else:
            batches = prepared_batches(((s, images[s : s + batch_size]) for s in range(0, n, batch_size)), transform)
        with progress_bar(total=n, desc=desc, unit="img", enabled=bool(progress)) as bar:
            for start, chunk in batches:
                if isinstance(chunk, torch.Tensor):
                    pixels = chunk
                elif seeds is not None or n <= INLINE_IMAGES:
                    pixels = torch.stack([self._seeded(transform, im, seeds, start + j) for j, im in enumerate(chunk)])
                else:
                    pixels = torch.stack(chunk)
                out[start : start + len(chunk)] = self.encode_pixels(pixels, precision=precision)
                bar.update(len(chunk))
        return out

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, *, precision: str | None = None) -> torch.Tensor:
        """Features of one preprocessed batch, L2-normalised float32 on the CPU."""
        with autocast(self.device, precision):
            if precision == "int8":
                tower = self.int8_visual()
                feats = torch.cat([tower(part) for part in to_device(pixels, self.device).split(INT8_SLICE)])
            elif precision == "bf16" and torch.device(self.device).type == "cpu":
                feats = self.cpu_bf16_visual()(pixels)
            else:
                feats = self.model.encode_image(to_device(pixels, self.device))
        return F.normalize(feats.float(), dim=-1).cpu()

    def check_precision(self, precision: str) -> None:
        """Refuse, before anything is encoded or written, a precision this model cannot run: an
        unknown name, fp16 or int8 on the wrong device, int8 for a CLIP with nothing to quantise."""
        with autocast(self.device, precision):
            pass
        if precision == "int8":
            self.int8_visual()

    def int8_visual(self) -> torch.nn.Module:
        """The vision tower with every linear layer, attention projections included, quantised
        to int8 (``int8_encoder``); made on first use, kept."""
        with self._towers_lock:
            if self._int8 is None:
                self._int8 = int8_vision_tower(self.model.visual, self.arch, self.image_size)
            return self._int8

    def cpu_bf16_visual(self) -> torch.nn.Module:
        """The vision tower as a CPU runs it in bf16: each attention as two Linears around
        ``scaled_dot_product_attention``, sharing the tower's weights (``linear_attention``).
        MultiheadAttention under CPU autocast made ViT-B-32 2x to 15x slower than fp32 at 2 to 32
        images a batch, the sizes a service's batches of concurrent queries come in; rewritten,
        bf16 is faster than fp32 at every size. A tower without MultiheadAttention is itself."""
        with self._towers_lock:
            if self._bf16 is None:
                self._bf16 = attention_view(self.model.visual)[0]
            return self._bf16

    @staticmethod
    def _seeded(transform: Callable[[Image.Image], torch.Tensor], image: Image.Image, seeds: Sequence[int] | None, i: int) -> torch.Tensor:
        if seeds is not None:
            torch.manual_seed(seeds[i])
        return transform(image)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text features, ``(N, embed_dim)`` float32 on the CPU."""
        out = torch.empty(len(texts), self.embed_dim)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            if self.supports_prompt_learning:
                out[start : start + len(tokens)] = self.encode_token_embeddings(self.token_embeddings(tokens), tokens).cpu()
            else:
                out[start : start + len(tokens)] = F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()
        return out

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.token_embedding(tokens.to(self.device))

    def _text_length(self, tokens: torch.Tensor) -> int:
        """Positions the text tower must run: up to the last end-of-text token of the batch.

        The tower's attention is causal and the feature is read at the end-of-text token, so the
        padding after it never changes the result; labels are a few tokens of a 77-token context,
        and skipping the padding makes a large vocabulary several times cheaper to embed.
        """
        m = self.model
        full = tokens.shape[1]
        if m.attn_mask is None or m.text_pool_type not in ("argmax", "eos") or not len(tokens):
            return full
        if m.text_pool_type == "argmax":
            last = int(tokens.argmax(dim=-1).max())
        else:
            last = int((tokens == m.text_eos_id).int().argmax(dim=-1).max())
        return min(full, last + 1)

    def encode_token_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Run the frozen text tower on given token embeddings (differentiable w.r.t. them).

        Mirrors ``open_clip.CLIP.encode_text`` after its embedding lookup, so learned context
        vectors (CoOp-style prompts) can replace some token embeddings. Returns normalised features.
        """
        if not self.supports_prompt_learning:
            raise NotImplementedError(
                f"{self.arch} has a custom (e.g. Hugging Face) text tower; learnable prompts need an "
                "open_clip CLIP text transformer. Set prompt_side='none'."
            )
        m = self.model
        cast = m.transformer.get_cast_dtype()
        n = self._text_length(tokens)
        embeddings, tokens = embeddings[:, :n], tokens[:, :n]
        x = embeddings.to(cast) + m.positional_embedding[:n].to(cast)
        x = m.transformer(x, attn_mask=None if m.attn_mask is None else m.attn_mask[:n, :n])
        x = m.ln_final(x)
        x = open_clip.transformer.text_global_pool(
            x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None)
        )
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return F.normalize(x.float(), dim=-1)
