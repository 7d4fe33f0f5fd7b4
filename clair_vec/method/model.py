"""The trained CLAIR model as one deployable object: CLIP -> head -> domain mapping.

A checkpoint is a directory: ``clair.json`` (config, classes, domains, CLIP reference, model id,
and the training record: held-out classes, validation numbers, what was shipped) and ``clair.pt``
(head, prompts, text embeddings, mapping). Random-initialised CLIP weights are saved beside them
as ``foundation.pt``; pretrained ones are referenced by tag or path, never copied. Tensor files
load with ``weights_only=True``: a checkpoint is data, never code. Every file is validated before
use (:mod:`.checkpoint_schema`, :mod:`.checkpoint_tensors`): a wrong or tampered one is one
:class:`CheckpointError` naming the file, the field and what was expected. ``routing`` (in
``clair.json``) holds the shipped per-domain blend of raw CLIP and the head (:mod:`.routing`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clair_vec.errors import ClairVecError, UnknownDomainError, WeightsNotFoundError
from clair_vec.method.centering import DomainCenters
from clair_vec.method.checkpoint_schema import FORMAT_VERSION, fail
from clair_vec.method.checkpoint_tensors import check_prompts, check_state, load_foundation_weights
from clair_vec.method.config import ClairConfig
from clair_vec.method.devices import module_device, resolve_device
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.head import ClairHead
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.model_card import read_meta
from clair_vec.method.prompts import PromptLearner, combine_text_embeddings, hand_crafted_text_embeddings
from clair_vec.method.routing import check_routing, is_default
from clair_vec.method.tensor_files import load_tensor_file, write_tensor_file
from clair_vec.method.vocabulary import TextCache, batched_text_embeddings, check_vocabulary_size

MODEL_ENV = "CLAIR_VEC_MODEL"
ZERO_SHOT_ROWS = 256
_loaded: dict[str, ClairModel] = {}
_load_lock = threading.Lock()


class ClairModel:
    def __init__(
        self,
        foundation: FoundationModel,
        head: ClairHead,
        mapping: DomainMapping,
        classes: Sequence[str],
        text_embeddings: dict[str, torch.Tensor],
        config: ClairConfig,
        prompt_state: dict | None = None,
        record: dict[str, Any] | None = None,
        routing: Mapping[str, float] | None = None,
        centers: DomainCenters | None = None,
    ) -> None:
        self.foundation = foundation
        self.head = head.eval()
        self.mapping = mapping
        self.classes = list(classes)
        self.text_embeddings = {d: t.detach() for d, t in text_embeddings.items()}
        # the saved config rebuilds the head on load, so it names the head's activation, whatever built it
        self.config = config if config.head_activation == head.activation else config.replace(head_activation=head.activation)
        self.prompt_state = prompt_state
        #: how it was trained: held-out classes, split seed, validation numbers, what was shipped
        self.record: dict[str, Any] = dict(record or {})
        #: per-domain blend of raw CLIP and the head (clair_vec.method.routing); head everywhere by default
        self.routing = check_routing(dict(routing or {}), mapping.domains)
        #: per-domain centres subtracted after the blend (clair_vec.method.centering); none: uncentred
        self.centers = centers or DomainCenters()
        self._model_id: str | None = None
        self._vocab_text = TextCache()  # bounded: a long-lived service sees many vocabularies

    @property
    def domains(self) -> list[str]:
        return self.mapping.domains

    @property
    def pivot(self) -> str:
        return self.mapping.pivot

    @property
    def dim(self) -> int:
        return self.head.dim

    @property
    def clip_arch(self) -> str:
        return self.foundation.arch

    @property
    def device(self) -> torch.device:
        """Where the head runs; what is embedded is moved there, and results come back on the CPU."""
        return module_device(self.head)

    def to(self, device: str | torch.device) -> ClairModel:
        """Run the head on ``device`` (CLIP stays where it was loaded: ``load(..., device=)``)."""
        self.head.to(resolve_device(device) if isinstance(device, str) else device)
        return self

    @property
    def model_id(self) -> str:
        """Names the exact vector space: backends refuse vectors of another model id."""
        if self._model_id is None:
            h = hashlib.sha256(f"{self.foundation.arch}|{self.foundation.pretrained}".encode())
            if self.head.activation != "relu":  # same weights, another map; ReLU heads' ids stay as they were
                h.update(f"head_activation={self.head.activation}".encode())
            for t in list(self.head.state_dict().values()) + [w for w, _ in self.mapping.maps.values()]:
                h.update(t.detach().float().cpu().numpy().tobytes())
            if not is_default(self.routing):  # a blend is part of the vector space; head-only ids stay as they were
                h.update(json.dumps(self.routing, sort_keys=True).encode())
            for d, c in sorted(self.centers.centers.items()):  # so are the centres; uncentred ids stay as they were
                h.update(d.encode() + c.numpy().tobytes())
            self._model_id = f"clair-{self.foundation.arch}-{h.hexdigest()[:12]}"
        return self._model_id

    def check_domain(self, domain: str) -> None:
        if domain not in self.domains:
            raise UnknownDomainError(domain, self.domains)

    # ------------------------------------------------------------------ embedding
    @torch.no_grad()
    def embed_features(self, clip_feats: torch.Tensor, domain: str, *, map_domain: bool = True) -> torch.Tensor:
        """CLAIR embeddings of CLIP features of ``domain``, mapped into the pivot domain, on the CPU
        whatever device the features and the head are on.

        The domain's blend (:attr:`routing`) decides how much of the head it uses (0 is raw CLIP),
        then the domain's centre (:attr:`centers`), if it has one, is subtracted."""
        return self.embed_on_device(clip_feats, domain, map_domain=map_domain).cpu()

    @torch.no_grad()
    def embed_on_device(self, clip_feats: torch.Tensor, domain: str, *, map_domain: bool = True) -> torch.Tensor:
        """:meth:`embed_features` left on the head's device (for callers that keep working there)."""
        self.check_domain(domain)
        v = clip_feats.to(self.device).float()
        blend = self.routing[domain]
        if blend == 1.0:
            z = self.head(v)
        elif blend == 0.0:
            z = F.normalize(v, dim=-1)
        else:
            z = F.normalize((1.0 - blend) * F.normalize(v, dim=-1) + blend * self.head(v), dim=-1)
        z = self.centers.apply(z, domain)
        return self.mapping.apply(z, domain) if map_domain else z

    @torch.no_grad()
    def embed_images(
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        domain: str,
        *,
        batch_size: int = 64,
        progress: bool = False,
        precision: str | None = None,
    ) -> np.ndarray:
        """``(N, dim)`` float32 unit vectors, ready for a vector database. ``precision``: the CLIP
        forward's (``fp32``, ``bf16``, ``fp16``); a collection's queries use the precision its
        gallery was indexed with."""
        self.check_domain(domain)
        feats = self.foundation.encode_images(images, batch_size=batch_size, progress=progress, precision=precision)
        return self.embed_features(feats, domain).numpy().astype(np.float32)

    @torch.no_grad()
    def class_text_embeddings(self, names: Sequence[str], domain: str) -> torch.Tensor:
        """``(C, D)`` text embeddings of any class names in ``domain``, built as in training: the
        domain's hand-crafted templates, plus the learned prompt context when the model has one
        (its context is class-agnostic, so it applies to names never seen in training)."""
        self.check_domain(domain)
        check_vocabulary_size(len(names))
        key = (domain, tuple(names))
        cached = self._vocab_text.get(key)
        if cached is not None:
            return cached
        learner = None
        if self.prompt_state is not None and self.foundation.supports_prompt_learning:
            learner = PromptLearner(self.foundation, self.domains, self.config.n_ctx, self.config.templates)
            learner.load_state_dict(self.prompt_state)

        def embed(chunk: Sequence[str]) -> torch.Tensor:
            hand = hand_crafted_text_embeddings(self.foundation, chunk, domain, self.config.templates)
            return combine_text_embeddings(hand, learner(list(chunk), domain) if learner is not None else None)

        text = batched_text_embeddings(names, embed, self.dim, desc=f"label embeddings ({domain})")
        self._vocab_text.put(key, text)
        return text

    @torch.no_grad()
    def zero_shot_labels(
        self, clip_feats: torch.Tensor, domain: str, vocabulary: Sequence[str]
    ) -> tuple[list[str], np.ndarray]:
        """Each image's most likely name in ``vocabulary`` (the user's labels, seen in training
        or not) and its softmax confidence over that vocabulary."""
        if not vocabulary:
            raise ValueError("the label vocabulary is empty")
        text = self.class_text_embeddings(vocabulary, domain)
        labels: list[str] = []
        confidence = np.empty(len(clip_feats), np.float32)
        for start in range(0, len(clip_feats), ZERO_SHOT_ROWS):  # (rows x C) logits at a time, not (N x C)
            probs = torch.softmax(self.foundation.logit_scale * clip_feats[start : start + ZERO_SHOT_ROWS].float() @ text.T, dim=-1)
            conf, idx = probs.max(dim=1)
            labels += [vocabulary[i] for i in idx.tolist()]
            confidence[start : start + len(idx)] = conf.numpy()
        return labels, confidence

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the checkpoint directory atomically: a crash never leaves a half-written model,
        and an earlier model at ``path`` stays whole until the new one replaces it. Only a model
        directory (or an empty folder) is ever replaced: see :func:`check_replaceable`."""
        path = Path(path)
        check_replaceable(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the model from a service run as another user
            meta = {
                "format_version": FORMAT_VERSION,
                "model_id": self.model_id,
                "clip_model": self.foundation.arch,
                "clip_pretrained": self.foundation.pretrained,
                "classes": self.classes,
                "domains": self.domains,
                "pivot": self.pivot,
                "dim": self.dim,
                "routing": self.routing,
                "config": self.config.to_dict(),
                "training": self.record,
            }
            (tmp / "clair.json").write_text(json.dumps(meta, indent=2))
            write_tensor_file(
                _on_cpu({
                    "head": self.head.state_dict(),
                    "head_hidden": self.head.mlp[0].out_features,
                    "mapping": self.mapping.state_dict(),
                    "text_embeddings": self.text_embeddings,
                    "prompts": self.prompt_state,
                    "centers": self.centers.state_dict() or None,
                    "classes": list(self.classes),
                }),
                tmp / "clair.pt",
            )
            if self.foundation.pretrained is None:
                write_tensor_file(_on_cpu(self.foundation.state_dict()), tmp / "foundation.pt")
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)  # interrupted between the two renames: the earlier model goes back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            inside = Path(exc.filename).resolve() if isinstance(exc.filename, str) else None
            if exc.errno is not None and inside is not None and tmp.resolve() in (inside, *inside.parents):
                # the folder a user can look at, not the hidden one that was just removed
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ClairModel:
        """The model in checkpoint directory ``path`` on ``device`` (see :mod:`.devices`), every
        file validated before use: one :class:`CheckpointError` naming the file, the field and
        what was expected when it is wrong. Whatever device it was trained on, it loads here."""
        path = Path(path)
        device = resolve_device(device)
        meta = read_meta(path)
        state = check_state(load_tensor_file(path / "clair.pt", what="CLAIR checkpoint"), meta, path)
        try:
            if meta["clip_pretrained"] is None:
                foundation = FoundationModel.load(meta["clip_model"], None, device)
                weights = load_tensor_file(path / "foundation.pt", what="CLIP weights", map_location=device)
                load_foundation_weights(foundation.model, weights, meta["clip_model"], path)
            else:
                foundation = FoundationModel.load(meta["clip_model"], meta["clip_pretrained"], device)
        except ValueError as exc:
            if isinstance(exc, ClairVecError):
                raise
            raise fail(path, "clair.json", "clip_model", f"is {meta['clip_model']!r}, which open_clip does not know",
                       "an open_clip architecture, e.g. ViT-B-32") from None  # fmt: skip
        if foundation.embed_dim != meta["dim"]:
            raise fail(path, "clair.json", "dim", f"is {meta['dim']} but CLIP {meta['clip_model']} embeds {foundation.embed_dim}",
                       "the embedding width of clip_model")  # fmt: skip
        if foundation.supports_prompt_learning:
            check_prompts(state, meta, int(foundation.model.token_embedding.embedding_dim), path)
        config = ClairConfig.from_dict(meta["config"])
        head = ClairHead(meta["dim"], state["head_hidden"], config.head_alpha_init, center=config.head_center,
                         activation=config.head_activation)  # fmt: skip
        head.load_state_dict(state["head"])
        model = cls(
            foundation,
            head,
            DomainMapping.from_state_dict(state["mapping"]),
            meta["classes"],
            state["text_embeddings"],
            config,
            state["prompts"],
            meta.get("training"),
            meta.get("routing"),
            DomainCenters(state.get("centers")),
        )
        if model.model_id != meta["model_id"]:
            raise WeightsNotFoundError(
                f"checkpoint {path} loads as model {model.model_id} but was saved as {meta['model_id']}: "
                "its files no longer match each other: clair.json or clair.pt was edited or swapped (restore the files "
                f"saved together), or the CLIP weights it references ({meta.get('clip_pretrained')}) changed (point "
                "clip_pretrained at the original weights)."
            )
        return model.to(device)


def check_replaceable(path: str | Path) -> None:
    """Refuse, before any work, a ``path`` that saving a model would destroy: a file, or a folder
    that holds anything but an earlier model (``clair.json``). Saving replaces the whole folder,
    so a user's ``--out`` pointed at a photo folder or the dataset itself would be deleted."""
    path = Path(path)
    if path.name in ("", ".", ".."):  # saving moves the folder aside by its name: "." has none
        raise ClairVecError(f"{str(path)!r} names no folder of its own; give the model a folder name, e.g. runs/clair")
    if path.exists() and not path.is_dir():
        raise ClairVecError(f"{path} exists and is not a folder; a model is a folder: give a new path")
    if path.is_dir() and not (path / "clair.json").is_file() and any(path.iterdir()):
        raise ClairVecError(f"{path} is a folder that holds something other than a clair_vec model (no clair.json), and "
                            "saving a model replaces the whole folder; give a new or empty folder, or an earlier model's")  # fmt: skip


def _umask() -> int:
    """The process's umask, read where Linux shows it: setting it to read it would race other threads."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it copied to the CPU: a saved model loads on any machine."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    return value


def load_model(model: str | Path | ClairModel | None = None, device: str | torch.device | None = None) -> ClairModel:
    """A :class:`ClairModel` from a checkpoint directory (cached per process and device), or
    ``$CLAIR_VEC_MODEL``, on ``device`` (default ``auto``: CUDA when there is one). A model object
    stays where it is unless ``device`` is given."""
    if isinstance(model, ClairModel):
        return model if device is None else model.to(device)
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise WeightsNotFoundError(
            f"no CLAIR model given: pass model=<checkpoint dir> or set {MODEL_ENV}. Train one with "
            "`clair-vec train` or `python ray_jobs/train.py`."
        )
    where = resolve_device(device)
    key = f"{Path(model).resolve()}@{where}"
    with _load_lock:
        if key not in _loaded:
            _loaded[key] = ClairModel.load(Path(model).resolve(), where)
        return _loaded[key]
