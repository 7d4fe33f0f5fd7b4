"""The public API: ``index`` a gallery and ``search`` it across domains.

Flow: images -> CLIP features -> CLAIR head -> mapping into the gallery (pivot) domain ->
backend plugin. Records are keyed by a hash of (domain, image content), so re-running an
interrupted ``index`` skips what is stored and never duplicates.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .backend import Backend, CollectionInfo, Hit, Record
from .data import image_files
from .errors import CollectionMismatchError, CorruptImageError, WeightsNotFoundError
from .model import ClairModel
from .plugin_manager import extra_payload, get_backend, get_plugin_manager
from .progress import progress_bar

ImageInput = str | Path | Image.Image | np.ndarray
MODEL_ENV = "CLAIR_VEC_MODEL"
_loaded: dict[str, ClairModel] = {}


def load_model(model: str | Path | ClairModel | None = None) -> ClairModel:
    """A :class:`ClairModel` from a checkpoint directory (cached per process), or ``$CLAIR_VEC_MODEL``."""
    if isinstance(model, ClairModel):
        return model
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise WeightsNotFoundError(
            f"no CLAIR model given: pass model=<checkpoint dir> or set {MODEL_ENV}. Train one with "
            "`clair-vec train` or `python ray_jobs/train.py`."
        )
    key = str(Path(model).resolve())
    if key not in _loaded:
        _loaded[key] = ClairModel.load(key)
    return _loaded[key]


@dataclass
class _Source:
    name: str  # path, or "<image #i>" for in-memory images
    image: Image.Image | None = None
    data: bytes | None = None
    label: str = ""


@dataclass
class IndexSummary:
    collection: str
    backend: str
    indexed: int = 0
    already_present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)

    @property
    def total(self) -> int:
        return self.indexed + self.already_present + len(self.skipped)


def _expand(images: ImageInput | Iterable[ImageInput], *, label_from_folder: bool) -> list[_Source]:
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    out: list[_Source] = []
    for i, item in enumerate(images):
        if isinstance(item, (str, Path)):
            p = Path(item)
            if p.is_dir():
                out += [_Source(str(f), label=f.parent.name if label_from_folder else "") for f in image_files(p)]
            elif p.exists():
                out.append(_Source(str(p), label=p.parent.name if label_from_folder else ""))
            else:
                out.append(_Source(str(p), data=b""))  # reported as skipped: missing file
        elif isinstance(item, Image.Image):
            out.append(_Source(f"<image #{i}>", image=item.convert("RGB")))
        elif isinstance(item, np.ndarray):
            arr = item if item.dtype == np.uint8 else (np.clip(item, 0, 1) * 255).astype(np.uint8)
            if arr.ndim not in (2, 3):
                raise ValueError(f"image array #{i} has shape {item.shape}; expected (H, W) or (H, W, C)")
            out.append(_Source(f"<array #{i}>", image=Image.fromarray(arr).convert("RGB")))
        else:
            raise TypeError(f"cannot index {type(item).__name__}; pass paths, folders, PIL images or numpy arrays")
    return out


def _decode(src: _Source) -> tuple[Image.Image, str]:
    """The RGB image and the hex digest of its content."""
    if src.image is not None:
        buf = io.BytesIO()
        src.image.save(buf, format="PNG")
        return src.image, hashlib.sha256(buf.getvalue()).hexdigest()
    if src.data == b"" or not os.path.exists(src.name):
        raise CorruptImageError(src.name, "file does not exist")
    data = Path(src.name).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB"), hashlib.sha256(data).hexdigest()
    except Exception as exc:
        raise CorruptImageError(src.name, f"{type(exc).__name__}: {exc}") from exc


def record_id(domain: str, content_digest: str) -> str:
    return hashlib.sha256(f"{domain}\0{content_digest}".encode()).hexdigest()[:32]


def encode_records(model: ClairModel, domain: str, items: Sequence[tuple[str, Image.Image, str, str]]) -> list[Record]:
    """Records of decoded images ``(id, image, path, label)``: mapped vectors plus payload."""
    feats = model.foundation.encode_images([im for _, im, _, _ in items])
    vectors = model.embed_features(feats, domain).numpy()
    pseudo, conf = model.pseudo_labels(feats, domain)
    records = []
    for (rid, _, path, label), vec, pl, c in zip(items, vectors, pseudo, conf, strict=True):
        payload = {"path": path, "domain": domain, "label": label, "pseudo_label": pl,
                   "confidence": round(float(c), 6), "model": model.model_id}  # fmt: skip
        payload.update(extra_payload(payload, domain, model.model_id))
        records.append(Record(rid, vec, payload))
    return records


def prepare_collection(be: Backend, collection: str, model: ClairModel) -> CollectionInfo:
    """Create (announcing it to plugins) or open ``collection`` for ``model``'s vectors."""
    info = CollectionInfo(collection, model.dim, model.model_id, target_domain=model.pivot, extra={"clip": model.foundation.arch})
    created = not be.has_collection(collection)
    info = be.create_collection(info)
    if created:
        get_plugin_manager().hook.clair_vec_collection_created(
            backend_name=be.name, collection=collection, info={k: getattr(info, k) for k in ("dim", "model", "metric", "target_domain")}
        )
    elif info.model != model.model_id:
        raise CollectionMismatchError(
            f"collection {collection!r} holds vectors of model {info.model!r}, not {model.model_id!r}; "
            "index into a new collection or load the model that built it"
        )
    return info


def _open(backend: str | Backend | None, uri: str | None, options: Mapping[str, Any] | None) -> tuple[Backend, bool]:
    if isinstance(backend, Backend):
        return backend, False
    return get_backend(backend, uri, **(options or {})), True


def index(
    collection: str,
    images: ImageInput | Iterable[ImageInput],
    *,
    domain: str | None = None,
    backend: str | Backend | None = None,
    uri: str | None = None,
    model: str | Path | ClairModel | None = None,
    label_from_folder: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    backend_options: Mapping[str, Any] | None = None,
) -> IndexSummary:
    """Embed ``images`` of ``domain`` (default: the model's gallery domain) into ``collection``.

    Unreadable images are skipped and reported in the summary; images already stored are
    skipped, so re-running after a failure completes the collection without duplicates.
    """
    m = load_model(model)
    domain = domain or m.pivot
    m.check_domain(domain)
    be, owned = _open(backend, uri, backend_options)
    try:
        prepare_collection(be, collection, m)
        sources = _expand(images, label_from_folder=label_from_folder)
        summary = IndexSummary(collection, be.name)
        with progress_bar(total=len(sources), desc=f"index {collection}", unit="img", enabled=progress) as bar:
            for start in range(0, len(sources), batch_size):
                chunk = sources[start : start + batch_size]
                decoded = []
                for src in chunk:
                    try:
                        image, digest = _decode(src)
                        decoded.append((src, image, record_id(domain, digest)))
                    except CorruptImageError as exc:
                        summary.skipped.append((src.name, exc.reason))
                present = be.existing_ids(collection, [rid for _, _, rid in decoded])
                todo = [(s, im, rid) for s, im, rid in decoded if rid not in present]
                summary.already_present += len(decoded) - len(todo)
                if todo:
                    records = encode_records(m, domain, [(rid, im, src.name, src.label) for src, im, rid in todo])
                    summary.indexed += be.upsert(collection, records, model=m.model_id)
                bar.update(len(chunk))
        if summary.indexed:
            be.flush(collection)
        return summary
    finally:
        if owned:
            be.close()


def search(
    collection: str,
    queries: ImageInput | Sequence[ImageInput],
    *,
    domain: str,
    top_k: int = 10,
    filter: Mapping[str, Any] | None = None,
    backend: str | Backend | None = None,
    uri: str | None = None,
    model: str | Path | ClairModel | None = None,
    backend_options: Mapping[str, Any] | None = None,
) -> list[list[Hit]]:
    """Ranked hits for each query image of ``domain``, mapped into the gallery's domain first.

    A query that cannot be read raises :class:`CorruptImageError` naming it (a silently dropped
    query would misalign results with inputs).
    """
    m = load_model(model)
    m.check_domain(domain)
    be, owned = _open(backend, uri, backend_options)
    try:
        info = be.open_collection(collection)
        if info.model != m.model_id:
            raise CollectionMismatchError(
                f"collection {collection!r} was indexed with model {info.model!r}, but the queries would be "
                f"encoded with {m.model_id!r}: load the checkpoint that built the collection"
            )
        images = [_decode(s)[0] for s in _expand(queries, label_from_folder=False)]
        vectors = m.embed_images(images, domain)
        return be.search(collection, vectors, top_k=top_k, filter=filter)
    finally:
        if owned:
            be.close()
