"""Bulk indexing on Ray Data, streaming end to end, down the stages of :mod:`~clair_vec.retrieval.ingest`.

    list files (tasks) -> read (tasks) -> look up, decode, encode, write (actor pool)

Inputs are folders and files, or the sources ``clair-vec index`` reads elsewhere (``http(s)://``
URLs, ``s3://`` objects and prefixes, webdataset shards, parquet files of images). A local file is
read twice, by the hashing task and by the actor that encodes it, so that no image's bytes travel
through Ray; a remote image is fetched once, by the hashing task, and its bytes travel with it.

- Nothing the size of the gallery passes through the driver: files are listed and read on
  workers, and the driver only adds up small per-batch tallies.
- Listing and hashing run on plain tasks that import neither torch nor open_clip (this module
  imports neither at module level), so they start in well under a second.
- Writers: with a server URI every encoding actor opens its own connection and writes its own
  batches (parallel writers). An embedded store (Milvus Lite file, Qdrant Edge directory) opens
  in one process only, so one ``StoreActor`` holds it and the encoding actors send it batches.
- Resumable: ids are content hashes and writes are idempotent, so after a crash anywhere (driver
  or worker killed with -9) a re-run skips what is stored and the collection holds each image once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.datasets.images import IMAGE_SUFFIXES, Listing, walk_images
from clair_vec.errors import DatasetError
from clair_vec.extras import require
from clair_vec.method.precision_devices import device_refusal
from clair_vec.ray_runtime import gpus_each, ray_session, sigterm_as_interrupt
from clair_vec.retrieval import ingest, remote
from clair_vec.retrieval.ingest import Writer
from clair_vec.retrieval.sources import (
    CHANGED,
    NO_FILE,
    ImageSource,
    is_elsewhere,
    names_a_file,
    remote_sources,
    stored_source,
)
from clair_vec.store.redaction import uri_secrets

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- tasks: no torch here
def _row(path: str, label: str = "", *, ignored: str = "", problem: str = "", data: bytes = b"", was: str = "") -> dict[str, Any]:
    """One image to index. ``was``: the id the image's record has in the collection it is re-embedded from."""
    return {"path": os.fsencode(path), "label": label, "ignored": ignored, "problem": problem, "data": data, "was": was}


def list_files(row: dict[str, Any], *, label_from_folder: bool) -> list[dict[str, Any]]:
    """Image files under one input (a folder, recursively and sorted; or a file), and the entries
    of a folder that are not image files, with ``ignored`` saying why (reported, not indexed).
    A remote input lists its images (an ``s3://`` prefix, a shard's members, a parquet file's
    rows); one that cannot be read (a missing shard, an unknown bucket) is one skipped row saying
    why. A remote shard's and a parquet file's images are read here, whole, and travel as ``data``:
    read by name later, each worker would read the whole container again."""
    item = str(row["input"])
    if not is_elsewhere(item):
        root = Path(item)
        listing = walk_images(root) if root.is_dir() else Listing(files=[root])
        return ([_row(str(f), f.parent.name if label_from_folder else "") for f in listing.files]
                + [_row(p, ignored=reason) for p, reason in listing.ignored])  # fmt: skip
    ignored: list[tuple[str, str]] = []
    try:
        if remote.is_shard(item) and remote.is_remote(item):
            return [_row(m.name, m.label if label_from_folder else "", problem=got.reason if isinstance(got, Exception) else "",
                         data=got if isinstance(got, bytes) else b"") for m, got in remote.shard_images(item)]  # fmt: skip
        found = remote_sources(item, label_from_folder=label_from_folder, ignored=ignored)
        carried = item.lower().endswith(".parquet")  # its sources hold their bytes already
        return ([_row(src.name, src.label, data=src.fetch() if carried and src.fetch else b"") for src in found]
                + [_row(p, ignored=reason) for p, reason in ignored])  # fmt: skip
    except DatasetError as exc:
        return [_row(remote.shown(item), problem=str(exc))]


def hash_batch(batch: dict[str, np.ndarray], *, domain: str) -> dict[str, np.ndarray]:
    """The read stage (:func:`~clair_vec.retrieval.ingest.read`) over a batch of rows: ``id`` or
    ``error`` per row, and a remote image's bytes in ``data`` (fetched once, here,
    :data:`~clair_vec.retrieval.ingest.FETCHERS` at a time: the encoding actor decodes them). A
    local file's bytes stay behind: the actor reads the file again. Paths travel as bytes, so a
    name that is not valid UTF-8 reaches this point and is reported, not lost."""
    from concurrent.futures import ThreadPoolExecutor

    n = len(batch["path"])
    carried = batch.get("data", [b""] * n)
    problems = batch.get("problem", [""] * n)
    items = []
    for i in range(n):
        name = os.fsdecode(bytes(batch["path"][i]))
        src = stored_source(name, str(batch["label"][i]), data=bytes(carried[i]) if len(carried[i]) else None,
                            problem=str(problems[i]) or None, skip_unreadable=True)  # fmt: skip
        item = ingest.Item(src)
        if batch["ignored"][i]:
            item.drop(ingest.IGNORED, str(batch["ignored"][i]))
        items.append(item)
    with ThreadPoolExecutor(ingest.FETCHERS) as fetchers:  # as many as `clair-vec index` fetches at once
        ingest.read(items, domain, fetchers=fetchers, keep_file_bytes=False)
    return {"path": np.array([i.name for i in items], dtype=object), "label": batch["label"],
            "id": np.array([i.rid for i in items], dtype=object),
            "error": np.array([i.note if i.status != ingest.TODO else "" for i in items], dtype=object),
            "ignored": batch["ignored"], "data": np.array([i.data or b"" for i in items], dtype=object),
            "was": batch.get("was", np.array([""] * n, dtype=object))}  # fmt: skip


# ---------------------------------------------------------------------- writing
class StoreActor(Writer):
    """The one process that opens an embedded store; encoding actors send it their batches."""

    def __init__(self, backend: str | None, uri: str | None, collection: str) -> None:
        from clair_vec.store.plugins import get_backend

        super().__init__(get_backend(backend, uri), collection)


def _remote_store(actor: Any) -> ingest.Store:
    """The embedded engine's one StoreActor, as the store the ingest stages call."""
    import ray

    return lambda method, *args: ray.get(getattr(actor, method).remote(*args))


class EncodeActor:
    """Holds one CLAIR model (and, with a server, its own connection): skips stored ids, decodes,
    embeds and writes a batch, and returns one small status row per image."""

    def __init__(self, model_dir: str, domain: str, collection: str, backend: str | None, uri: str | None,
                 store: Any, vocabulary: list[str] | None, device: str, threads: int, precision: str = "fp32") -> None:  # fmt: skip
        import torch

        from clair_vec.method.model import ClairModel

        torch.set_num_threads(threads)  # one actor per core: intra-op threads would oversubscribe it
        self.model = ClairModel.load(model_dir, device=device)
        self.domain, self.vocabulary, self.precision = domain, vocabulary, precision
        # a CPU actor holds its cores for torch; a GPU actor's CPU time is decoding that feeds the GPU
        self.decoders = threads if device == "cpu" else None
        # a server: a writer (connection) of its own; an embedded engine: the one StoreActor holding its file
        self.writer = StoreActor(backend, uri, collection) if store is None else None
        self.sink = ingest.local_store(self.writer) if self.writer is not None else _remote_store(store)
        self.decode_one = functools.partial(ingest.decode, preprocess=self.model.foundation.preprocess, domain=domain)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The look-up, decode, encode and write stages over one batch the read stage hashed."""
        n = len(batch["path"])
        fetched = batch.get("data", [b""] * n)
        items = []
        for i in range(n):
            name = str(batch["path"][i])
            # a remote image's bytes came with the row; a local file is read (and hashed) again
            item = ingest.Item(ImageSource(name, path=name, label=str(batch["label"][i])), rid=str(batch["id"][i]),
                               data=bytes(fetched[i]) if len(fetched[i]) or is_elsewhere(name) else None)  # fmt: skip
            if batch["ignored"][i]:
                item.drop(ingest.IGNORED, str(batch["error"][i]))
            elif batch["error"][i]:
                item.drop(ingest.SKIPPED, str(batch["error"][i]))
            items.append(item)
        # ``seen`` is the batch's own: actors run side by side, and the same bytes in two of their
        # batches are written twice under one id (the store keeps one record)
        ingest.look_up(items, self.sink("stored", [i.rid for i in items if i.status == ingest.TODO]), {})
        for _ in ingest.decoded([(0, items)], self.decode_one, workers=self.decoders):
            pass
        replaced = ingest.encode_and_write(self.model, self.sink, self.domain, items, vocabulary=self.vocabulary,
                                           precision=self.precision)  # fmt: skip
        # re-embedding a collection: an image whose bytes are not those its old record was made of
        was = batch.get("was", [""] * n)
        changed = np.array([bool(was[k]) and i.status in (ingest.INDEXED, ingest.PRESENT, ingest.DUPLICATE)
                            and i.rid != str(was[k]) for k, i in enumerate(items)], dtype=bool)  # fmt: skip
        counts = np.zeros((n, 2), np.int64)  # (replaced, moved) of the batch, carried on its first row
        if n:
            counts[0] = (replaced, sum(i.moved for i in items))
        return {"path": batch["path"], "status": np.array([i.status for i in items], dtype=object),
                "error": np.array([i.note for i in items], dtype=object), "replaced": counts[:, 0],
                "moved": counts[:, 1], "changed": changed}  # fmt: skip


# ---------------------------------------------------------------------- the job
def _tally(summary: Any, batch: dict[str, np.ndarray]) -> None:
    """Add one output batch's status rows to the summary (the driver keeps counts, not rows)."""
    ingest.tally(summary, ((str(p), str(s), str(e)) for p, s, e in zip(batch["path"], batch["status"], batch["error"], strict=True)))
    summary.replaced += int(batch["replaced"].sum())
    summary.moved += int(batch["moved"].sum())
    if hasattr(summary, "changed"):
        summary.changed += [(str(path), CHANGED) for path, c in zip(batch["path"], batch["changed"], strict=True) if c]


def ray_index(
    collection: str,
    inputs: Sequence[str | Path],
    *,
    model_dir: str | Path,
    domain: str | None = None,
    backend: str | None = None,
    uri: str | None = None,
    actors: int = 1,
    batch_size: int = 64,
    label_from_folder: bool = False,
    labels: Sequence[str] | None = None,
    gpus: str = "auto",
    threads_per_actor: int = 1,
    progress: bool = True,
    on_batch: Callable[[Any], None] | None = None,
    from_collection: str | None = None,
    precision: str | None = None,
) -> Any:
    """Index every image under ``inputs`` (folders, files, or the remote sources of
    :func:`~clair_vec.retrieval.sources.expand`) into ``collection`` on Ray; or, with
    ``from_collection``, re-embed the files that collection's records (of ``domain``) name, keeping
    their labels (the Ray form of ``clair-vec reindex``). ``precision``: of the CLIP forward, as in
    :meth:`~clair_vec.retrieval.retriever.Retriever.index`.

    Returns an :class:`~clair_vec.retrieval.indexing.IndexSummary`; with ``from_collection`` a
    :class:`~clair_vec.retrieval.indexing.ReindexSummary`, as ``clair-vec reindex`` returns (records
    read, files whose bytes ``changed`` since, records with ``no_file``). A Ray instance is started if none is
    connected, and shut down again at the end.
    """
    require("ray", "ray.data", needed_for="Ray bulk indexing (ray_jobs/index.py)")
    import ray

    from clair_vec.method.model_card import ModelCard
    from clair_vec.retrieval.indexing import IndexSummary, ReindexSummary, collection_precision, prepare_collection
    from clair_vec.store.plugins import get_backend

    if actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    card = ModelCard.read(model_dir)  # the driver reads the checkpoint's metadata only: no torch, no CLIP
    domain = domain or card.pivot
    card.check_domain(domain)
    inputs = [str(i) for i in inputs]
    secret = next((i for i in inputs if uri_secrets(i)), None)
    if secret is not None:
        raise DatasetError(f"{remote.shown(secret)}: the Ray job hands image names to its workers, and a name never "
                           "holds credentials; give them in ~/.netrc ($NETRC) on every node for http(s), or through "
                           "the AWS credential chain for s3://, or index it with `clair-vec index`")  # fmt: skip
    # workers may run elsewhere, from another directory; a shard pattern becomes one row per shard,
    # each listed on a worker
    inputs = [i if remote.is_remote(i) else os.path.abspath(i) for i in inputs]
    inputs = [s for i in inputs for s in (remote.expand_braces(i) if remote.is_shard(i) else [i])]
    missing = [i for i in inputs if not remote.is_remote(i) and not Path(i).exists()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"no such file or folder: {missing[:5]}{more}")
    if (from_collection is None) == (not inputs):
        raise ValueError("give image folders or --from-collection OLD, one of the two")
    vocabulary = list(labels) if labels else None
    # SIGTERM (`ray job stop`) ends the run as Ctrl-C does: after ray.init, which installs its own handler
    with ray_session(), sigterm_as_interrupt(), _small_blocks(batch_size):
        gpu = gpus_each(gpus, actors, "actors")
        be = get_backend(backend, uri)
        try:
            # every refusal before the collection is made: a failed run must not leave one behind
            # (one recorded at a precision this machine cannot run would refuse every later run)
            if from_collection is not None:
                if be.resolve(from_collection) == be.resolve(collection):
                    raise ValueError(f"--from-collection and --collection are the same collection {be.resolve(collection)!r}: "
                                     "re-embed into a new collection, then move the alias")  # fmt: skip
                be.open_collection(from_collection)
            held = collection_precision(be.open_collection(collection)) if be.has_collection(collection) else None
            _check_device(precision or held or "fp32", gpu)
            precision = collection_precision(prepare_collection(be, collection, card, model_dir, precision))
            embedded = not be.shared
            # read before the store actor opens an embedded store: it takes one process at a time
            if from_collection is not None:
                summary: IndexSummary = ReindexSummary(collection, be.name, source=be.resolve(from_collection))
                rows = _collection_rows(be, from_collection, domain, summary)
            else:
                summary = IndexSummary(collection, be.name)
                rows = _input_rows(inputs, label_from_folder=label_from_folder, tasks=max(2, actors))
        finally:
            be.close()
        # one process may open an embedded store: everyone writes through this actor
        store_actor = ray.remote(num_cpus=0)(StoreActor).remote(backend, uri, collection) if embedded else None
        try:
            actor_kwargs = {"model_dir": str(Path(model_dir).resolve()), "domain": domain, "collection": collection,
                            "backend": backend, "uri": uri, "store": store_actor, "vocabulary": vocabulary,
                            "device": "cuda" if gpu else "cpu", "threads": threads_per_actor, "precision": precision}  # fmt: skip
            _stream(summary, rows, actor_kwargs, actors=actors, gpu=gpu, batch_size=batch_size, progress=progress,
                    on_batch=on_batch)  # fmt: skip
            if summary.indexed or summary.replaced:
                if store_actor is not None:
                    ray.get(store_actor.flush.remote())
                else:
                    with get_backend(backend, uri) as be:
                        be.flush(collection)
            return summary
        finally:
            if store_actor is not None:
                try:
                    ray.get(store_actor.close.remote(), timeout=60)
                finally:
                    ray.kill(store_actor)


def _check_device(precision: str, gpu: float) -> None:
    """The encoders' rule, said on the driver before any encoder starts."""
    refusal = device_refusal(precision, gpu=bool(gpu))
    if refusal is not None:
        problem, fix = refusal
        raise ValueError(f"{problem}: add --gpus no, or {fix}" if gpu else f"{problem}; on a CPU {fix} (or --gpus yes on a GPU cluster)")


def _input_rows(inputs: list[str], *, label_from_folder: bool, tasks: int) -> Any:
    """The rows :func:`list_files` makes of ``inputs``. An image URL or an ``s3://`` image needs no
    listing: its row is made here, so a thousand URLs are not a thousand listing tasks."""
    import ray

    direct = [i for i in inputs if remote.is_remote(i) and not remote.is_shard(i) and not i.lower().endswith(".parquet")
              and (not i.startswith("s3://") or Path(i).suffix.lower() in IMAGE_SUFFIXES)]  # fmt: skip
    chosen = set(direct)
    listed = [i for i in inputs if i not in chosen]
    parts = []
    if direct:
        parts.append(ray.data.from_items([r for i in direct for r in list_files({"input": i}, label_from_folder=label_from_folder)]))
    if listed:
        # listing tasks ask for no CPU (see _stream), so a bounded pool keeps them from starting a
        # worker process per input
        parts.append(ray.data.from_items([{"input": i} for i in listed])
                     .flat_map(list_files, fn_kwargs={"label_from_folder": label_from_folder}, num_cpus=0,
                               compute=ray.data.TaskPoolStrategy(size=tasks)))  # fmt: skip
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _collection_rows(be: Any, collection: str, domain: str, summary: Any) -> Any:
    """The files a collection's records of ``domain`` name, as rows like :func:`list_files` makes,
    a page at a time into Ray's object store (the driver never holds the whole listing). Each row
    carries its record's id as ``was``, so an image whose bytes changed since is reported under
    ``changed``. A record indexed from an image in memory names no file: it goes to the summary's
    ``no_file``, as ``clair-vec reindex`` reports it, instead of vanishing from the new collection
    unsaid. ``summary.read`` counts the records looked at."""
    import ray

    parts = []
    page: list[dict[str, Any]] = []
    for rid, payload in be.records(be.resolve(collection), filter={"domain": domain}):
        summary.read += 1
        path = payload.get("path")
        if names_a_file(path):
            page.append(_row(path, str(payload.get("label") or ""), was=rid))
        else:
            summary.no_file.append((rid, NO_FILE))
        if len(page) >= 4096:
            parts.append(ray.data.from_items(page))
            page = []
    if page or not parts:
        parts.append(ray.data.from_items(page))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _stream(summary: Any, rows: Any, actor_kwargs: dict[str, Any], *, actors: int, gpu: float, batch_size: int,
            progress: bool, on_batch: Callable[[Any], None] | None) -> None:  # fmt: skip
    """Run the hashing -> encoding pipeline over ``rows`` (files to index), adding each output
    batch to ``summary``."""
    import ray

    from clair_vec.progress import progress_bar

    domain, collection = actor_kwargs["domain"], actor_kwargs["collection"]
    # the block size comes from _small_blocks, set when ``rows`` was made
    # listing and hashing ask for no CPU: they are I/O-light, must never wait for CPUs the
    # encoding actors hold (on 2 cores, 2 actors hold both), and a resource spec unlike the
    # actors' keeps Ray Data from fusing them into the actor processes, which import torch
    ds = (
        rows.map_batches(hash_batch, fn_kwargs={"domain": domain}, batch_size=batch_size, batch_format="numpy",
                     num_cpus=0, compute=ray.data.TaskPoolStrategy(size=max(2, actors)))  # fmt: skip
        .map_batches(EncodeActor, fn_constructor_kwargs=actor_kwargs, compute=ray.data.ActorPoolStrategy(size=actors),
                     batch_size=batch_size, num_gpus=gpu, num_cpus=0 if gpu else 1, batch_format="numpy")  # fmt: skip
    )
    t0 = time.monotonic()
    with progress_bar(total=0, desc=f"index {collection} on Ray", unit="img", enabled=progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            _tally(summary, batch)
            bar.update(len(batch["path"]))
            if on_batch is not None:
                on_batch(summary)
            log.info("indexed %d, already present %d, skipped %d (%.1f s)", summary.indexed,
                     summary.already_present, len(summary.skipped), time.monotonic() - t0)  # fmt: skip


@contextlib.contextmanager
def _small_blocks(batch_size: int) -> Iterator[None]:
    """Rows are ~200 bytes: at Ray Data's default 128 MiB target a whole folder would be one block,
    fed to one actor; blocks of about a batch spread the work over the actor pool as it streams.
    Set while the dataset is built: a Ray dataset keeps the context it was created under."""
    import ray

    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, max(16 * 1024, batch_size * 256)
    try:
        yield
    finally:
        context.target_max_block_size = block_size
