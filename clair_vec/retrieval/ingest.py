"""The ingestion pipeline: the stages every way of indexing passes an image down, once.

    read (bytes and their id) -> look up (skip what is stored) -> decode (worker threads)
    -> encode (CLIP + CLAIR, batched on the model's device) -> write (the backend)

``clair_vec.index``, ``clair-vec index``, ``reindex`` and the demo run every stage in one
process (:func:`run`, which decodes the next batch while this one encodes; driven by
:func:`~clair_vec.retrieval.indexing.index_sources`, which counts and shows progress). The Ray job runs *read* on plain tasks and the other
stages on its encoding actors (:mod:`~clair_vec.retrieval.bulk_index`). The readers, one per kind
of source (files and folders, in-memory images, URLs, ``s3://``, webdataset shards, parquet), are
in :mod:`~clair_vec.retrieval.sources`; what reaches this module is an
:class:`~clair_vec.retrieval.sources.ImageSource` per image.

An :class:`Item` carries one image down the stages and records what became of it, so that every
entry point reports the same outcomes (:func:`tally`). No torch at module level: Ray's read
tasks import this module and must start in well under a second.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from clair_vec.errors import CorruptImageError
from clair_vec.retrieval import remote
from clair_vec.retrieval import sources as src_mod
from clair_vec.retrieval.sources import ImageSource
from clair_vec.store.backend import Backend, Record
from clair_vec.store.ids import file_record_id
from clair_vec.store.plugins import extra_payload

if TYPE_CHECKING:  # the model (and torch) is needed to encode, not to read or write
    import torch
    from PIL import Image

    from clair_vec.method.model import ClairModel

K = TypeVar("K")

#: an image still on its way; the others are what became of it
TODO, INDEXED, PRESENT, DUPLICATE, SKIPPED, IGNORED = "todo", "indexed", "present", "duplicate", "skipped", "ignored"


@dataclass(eq=False)  # an image on its way is itself, not any item with equal fields
class Item:
    """One image on its way down the stages. ``note``: why it was skipped or ignored, or for a
    duplicate the path whose bytes it repeats."""

    source: ImageSource
    rid: str = ""  # the id of its bytes, once read
    data: bytes | None = None  # its bytes, when read and kept for decoding
    status: str = TODO
    note: str = ""
    moved: bool = False  # its bytes are stored under a path that is gone: the record follows this one
    pixels: Any = None  # the model's input, once decoded

    @property
    def name(self) -> str:
        return self.source.name

    def drop(self, status: str, note: str) -> None:
        self.status, self.note = status, note


# ---------------------------------------------------------------------- 1. read
def read(items: Sequence[Item], domain: str, *, fetchers: Executor | None = None, keep_file_bytes: bool = True) -> None:
    """Each item's record id, from its bytes, without decoding. Remote images are fetched side by
    side on ``fetchers`` (a URL's latency, not the link, is what limits one at a time). With
    ``keep_file_bytes=False`` a local file's bytes are let go once hashed: the Ray job decodes on
    another process, which reads the file again rather than have its bytes travel."""

    def one(item: Item) -> None:
        try:
            item.rid, item.data = src_mod.read(item.source, domain)
        except CorruptImageError as exc:
            item.drop(SKIPPED, exc.reason)
            return
        if not keep_file_bytes and item.source.fetch is None:
            item.data = None

    todo = [i for i in items if i.status == TODO]
    # only what crosses a network: a local shard's members and a parquet file's rows read fast
    # one after another, and side by side would each parse the same container
    fetched = [i for i in todo if i.source.fetch is not None and remote.is_remote(i.source.path or i.name)]
    if fetchers is not None and len(fetched) > 1:
        list(fetchers.map(one, fetched))
        done = set(fetched)
        todo = [i for i in todo if i not in done]
    for item in todo:
        one(item)


# ---------------------------------------------------------------------- 2. look up
def moved(stored: dict[str, dict], rid: str, path: str | None) -> bool:
    """Whether the stored record ``rid`` names a file that is gone while ``path`` holds the same
    bytes: its payload must follow the file, or a prune would delete a live image."""
    old = stored.get(rid, {}).get("path")
    # a URI cannot be checked from here: the same bytes at two URIs are a duplicate, not a move
    return (path is not None and isinstance(old, str) and old != path and not old.startswith("<")
            and not remote.is_remote(old) and not os.path.exists(remote.stored_file(old)))  # fmt: skip


def look_up(items: Sequence[Item], stored: dict[str, dict], seen: dict[str, str]) -> None:
    """Decide what of a batch is left to encode. ``stored``: the store's records of the batch's ids;
    ``seen``: id -> the first name with those bytes in this run, carried from batch to batch. The
    same bytes twice are stored once, under the first path, and counted once (a file named twice
    too); bytes stored under a path that still exists are present; bytes stored under a path that
    is gone have moved here."""
    for item in items:
        if item.status != TODO:
            continue
        path = item.source.path
        first = seen.get(item.rid)
        if first is not None:  # these bytes came earlier in this run: a copy, or the same file named twice
            item.drop(DUPLICATE, first)
            continue
        seen[item.rid] = item.name
        if item.rid in stored and not moved(stored, item.rid, path):
            held = stored[item.rid].get("path")
            if path is not None and isinstance(held, str) and held != path:
                item.drop(DUPLICATE, held)  # a copy of a file stored under its own path
            else:
                item.status = PRESENT
        else:
            item.moved = item.rid in stored


# ---------------------------------------------------------------------- 3. decode
def decode(item: Item, *, preprocess: Callable[[Image.Image], Any], domain: str) -> Any:
    """The model's input of one item (run on a worker thread). A local file whose bytes were not
    kept is read, and hashed, again: a file rewritten since it was read is stored under the id of
    the bytes that were decoded, not of those that were hashed."""
    data = item.data
    src = item.source
    if data is None and src.image is None and src.fetch is None and src.path is not None:
        try:
            item.rid, data = file_record_id(src.path, domain)
        except OSError as exc:
            raise CorruptImageError(item.name, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    return preprocess(src_mod.decode(src, data))


def decoded(
    batches: Iterable[tuple[K, Sequence[Item]]], decode_one: Callable[[Item], Any], *, workers: int | None = None
) -> Iterator[tuple[K, Sequence[Item]]]:
    """Each batch with its items left to encode decoded by worker threads, while the caller
    encodes the batch before (:func:`~clair_vec.method.pixel_batches.prepared_batches`). An image
    that does not decode is skipped with the reason; its batch goes on."""
    from clair_vec.method.pixel_batches import prepared_batches

    def jobs() -> Iterator[tuple[tuple[K, Sequence[Item], list[Item]], list[Item]]]:
        for key, items in batches:
            todo = [i for i in items if i.status == TODO]
            yield (key, items, todo), todo

    for (key, items, todo), done in prepared_batches(jobs(), decode_one, workers=workers, capture=(CorruptImageError,)):
        for item, px in zip(todo, done, strict=True):
            if isinstance(px, CorruptImageError):
                item.drop(SKIPPED, px.reason)
            else:
                item.pixels = px
        yield key, items


# ---------------------------------------------------------------------- 4. encode
def encode_records(
    model: ClairModel,
    domain: str,
    items: Sequence[tuple[str, Image.Image | torch.Tensor, str, str]],
    vocabulary: Sequence[str] | None = None,
    precision: str | None = None,
) -> list[Record]:
    """Records of decoded images ``(id, image, path, label)``: mapped vectors plus payload. An
    image may be a PIL image or its preprocessed pixels (as the decode stage makes them).

    With a ``vocabulary`` each record is tagged zero-shot over it (``pseudo_label`` and its
    ``confidence``); without one no tag is stored: a tag chosen among the training classes
    would label every unseen-class photo wrongly, with high confidence.
    """
    from PIL import Image

    images = [im for _, im, _, _ in items]
    if images and not isinstance(images[0], Image.Image):
        import torch

        images = torch.stack(images)  # type: ignore[arg-type]
    feats = model.foundation.encode_images(images, batch_size=max(1, len(images)), precision=precision)  # type: ignore[arg-type]
    vectors = model.embed_features(feats, domain).numpy()
    tags = model.zero_shot_labels(feats, domain, vocabulary) if vocabulary else None
    records = []
    for n, ((rid, _, path, label), vec) in enumerate(zip(items, vectors, strict=True)):
        payload = {"path": path, "domain": domain, "label": label, "model": model.model_id}
        if tags is not None:
            payload.update(pseudo_label=tags[0][n], confidence=round(float(tags[1][n]), 6))
        payload.update(extra_payload(payload, domain, model.model_id))
        records.append(Record(rid, vec, payload))
    return records


# ---------------------------------------------------------------------- 5. write
def stale_ids(be: Backend, collection: str, domain: str, current: dict[str, str]) -> list[str]:
    """Ids stored for these paths (path -> current id) that are not the current ones."""
    if not current:
        return []
    flt = {"domain": domain, "path": sorted(current)}
    return [rid for rid, payload in be.records(collection, filter=flt) if current.get(payload.get("path")) != rid]


class Writer:
    """Everything the stages ask of the store, on an open backend (torch-free). The Ray job's
    store actor is one, so its encoding actors write through the same calls."""

    def __init__(self, be: Backend, collection: str) -> None:
        self.be, self.collection = be, collection

    def stored(self, ids: list[str]) -> dict[str, dict]:
        return self.be.get(self.collection, ids)

    def write(self, records: list[tuple[str, Any, dict]], model_id: str) -> int:
        """Upsert ``(id, vector, payload)`` rows (plain tuples: they cross process boundaries)."""
        return self.be.upsert(self.collection, [Record(i, v, p) for i, v, p in records], model=model_id)

    def replace_stale(self, domain: str, current: dict[str, str]) -> int:
        stale = stale_ids(self.be, self.collection, domain, current)
        return self.be.delete(self.collection, stale) if stale else 0

    def flush(self) -> None:
        self.be.flush(self.collection)

    def close(self) -> None:
        self.be.close()


Store = Callable[..., Any]  # call a Writer method by name: locally, or on the Ray store actor


def encode_and_write(
    model: ClairModel,
    store: Store,
    domain: str,
    items: Sequence[Item],
    *,
    vocabulary: Sequence[str] | None = None,
    precision: str | None = None,
) -> int:
    """Stages 4 and 5 for one decoded batch: encode what is left, write it whole, then remove the
    records of these paths that hold other bytes. The removal comes after the write: a crash in
    between leaves the old record, which a re-run removes. Returns how many were removed."""
    ready = [i for i in items if i.status == TODO and i.pixels is not None]
    if ready:
        rows = [(i.rid, i.pixels, i.name, i.source.label) for i in ready]
        records = encode_records(model, domain, rows, vocabulary, precision)
        store("write", [(r.id, r.vector, r.payload) for r in records], model.model_id)
        for item in ready:
            item.status, item.pixels = INDEXED, None
    current = {i.source.path: i.rid for i in items if i.rid and i.source.path is not None}
    return store("replace_stale", domain, current) if current else 0


def local_store(writer: Writer) -> Store:
    return lambda method, *args: getattr(writer, method)(*args)


# ---------------------------------------------------------------------- all five, in one process
#: remote images fetched at once (img2dataset's default thread count per process)
FETCHERS = 16


def run(
    model: ClairModel,
    store: Store,
    domain: str,
    sources: Sequence[ImageSource],
    *,
    batch_size: int,
    seen: dict[str, str],
    on_read: Callable[[ImageSource, str], None] | None = None,
    vocabulary: Sequence[str] | None = None,
    precision: str | None = None,
) -> Iterator[tuple[int, Sequence[Item], int]]:
    """Every stage, batch after batch: ``(start, items, replaced)`` once a batch is written, its
    items saying what became of each. A batch is read and looked up here, then decoded by worker
    threads while the batch before it encodes; batches are encoded and written in order.
    ``on_read`` sees each source with the id of its bytes before anything is decoded."""
    from concurrent.futures import ThreadPoolExecutor

    decode_one = functools.partial(decode, preprocess=model.foundation.preprocess, domain=domain)

    def planned(fetchers: Executor) -> Iterator[tuple[int, list[Item]]]:
        for start in range(0, len(sources), batch_size):
            items = [Item(s) for s in sources[start : start + batch_size]]
            read(items, domain, fetchers=fetchers)
            if on_read is not None:
                for item in items:
                    if item.rid:
                        on_read(item.source, item.rid)
            look_up(items, store("stored", [i.rid for i in items if i.rid]), seen)
            yield start, items

    with ThreadPoolExecutor(FETCHERS, thread_name_prefix="clair-fetch") as fetchers:
        for start, items in decoded(planned(fetchers), decode_one):
            yield start, items, encode_and_write(model, store, domain, items, vocabulary=vocabulary, precision=precision)


def tally(summary: Any, outcomes: Iterable[tuple[str, str, str]]) -> None:
    """Add ``(name, status, note)`` outcomes to an :class:`~clair_vec.retrieval.indexing.IndexSummary`."""
    for name, status, note in outcomes:
        if status == INDEXED:
            summary.indexed += 1
        elif status == PRESENT:
            summary.already_present += 1
        elif status == DUPLICATE:
            summary.duplicates.append((name, note))
        elif status == IGNORED:
            summary.ignored.append((name, note))
        else:
            summary.skipped.append((name, note))
