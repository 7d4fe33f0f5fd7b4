"""One ingestion pipeline: the in-process index and the Ray job's tasks and actors run the same
stages (clair_vec.retrieval.ingest), so the same gallery gives the same records and the same report."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest

from clair_vec.retrieval import ingest


def _gallery(shapes_root, root):
    """Eight photos, one a byte-identical copy, a broken PNG, a text file and a name that is not UTF-8."""
    (root / "heart").mkdir(parents=True)
    for f in sorted((shapes_root / "photo" / "heart").iterdir())[:6]:
        (root / "heart" / f.name).write_bytes(f.read_bytes())
    (root / "heart" / "broken.png").write_bytes(b"not a png")
    (root / "heart" / "notes.txt").write_text("not an image")
    (root / "copy").mkdir()
    (root / "copy" / "same.png").write_bytes((root / "heart" / "0003.png").read_bytes())
    with open(os.fsencode(str(root / "heart")) + b"/caf\xe9.png", "wb") as fh:
        fh.write((shapes_root / "photo" / "arrow" / "0000.png").read_bytes())
    return root


def _ray_stages(model_dir, uri, gallery, domain="photo"):
    """The Ray job's listing task, read task and encoding actor, called in this process."""
    from clair_vec.method.model_card import ModelCard
    from clair_vec.retrieval.bulk_index import EncodeActor, _tally, hash_batch, list_files
    from clair_vec.retrieval.indexing import IndexSummary, prepare_collection
    from clair_vec.store.plugins import get_backend

    with get_backend("qdrant", uri) as be:  # as the job's driver does before any actor starts
        prepare_collection(be, "g", ModelCard.read(model_dir), model_dir)
    rows = list_files({"input": str(gallery)}, label_from_folder=True)
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    hashed = hash_batch(batch, domain=domain)
    actor = EncodeActor(str(model_dir), domain, "g", "qdrant", uri, None, None, "cpu", 1)
    try:
        out = actor(hashed)
    finally:
        actor.writer.close()
    summary = IndexSummary("g", "qdrant")
    _tally(summary, out)
    return summary


def _records(uri):
    from clair_vec.store.plugins import get_backend

    with get_backend("qdrant", uri) as be:
        payloads = dict(be.records("g"))
        vectors = be.vectors("g", sorted(payloads))
    return {rid: (vectors[rid], p["path"], p["label"]) for rid, p in payloads.items()}


def test_the_ray_stages_and_the_in_process_index_store_and_report_the_same(model_dir, shapes_root, tmp_path):
    import clair_vec

    gallery = _gallery(shapes_root, tmp_path / "gallery")
    local, ray = str(tmp_path / "local"), str(tmp_path / "ray")
    here = clair_vec.index("g", [gallery], model=model_dir, backend="qdrant", uri=local, domain="photo",
                           label_from_folder=True, progress=False)  # fmt: skip
    there = _ray_stages(model_dir, ray, gallery)
    for s in (here, there):
        assert s.indexed == 6 and s.already_present == 0
        assert [d for d, _ in s.duplicates] == [str(gallery / "heart" / "0003.png")]
        assert sorted(p for p, _ in s.skipped) == [str(gallery / "heart" / "broken.png"), str(gallery / "heart") + "/caf\\xe9.png"]
        assert [p for p, _ in s.ignored] == [str(gallery / "heart" / "notes.txt")]
    assert dict(here.skipped) == dict(there.skipped) and here.ignored == there.ignored
    a, b = _records(local), _records(ray)
    assert sorted(a) == sorted(b)  # the same ids: the same bytes read the same way
    for rid in a:
        assert a[rid][1:] == b[rid][1:]
        assert np.allclose(a[rid][0], b[rid][0], atol=1e-5)
    again = _ray_stages(model_dir, ray, gallery)
    assert again.indexed == 0 and again.already_present == 6 and len(again.duplicates) == 1


def test_a_file_rewritten_between_read_and_decode_is_stored_under_the_bytes_decoded(model_dir, shapes_root, tmp_path):
    """The Ray read task hashes a file and lets its bytes go; the actor reads it again. A file
    rewritten in between must not be stored under the id of bytes nobody encoded."""
    from clair_vec.retrieval.sources import stored_source
    from clair_vec.store.ids import file_record_id

    photos = sorted((shapes_root / "photo" / "heart").iterdir())
    f = tmp_path / "x.png"
    f.write_bytes(photos[0].read_bytes())
    item = ingest.Item(stored_source(str(f)))
    ingest.read([item], "photo", keep_file_bytes=False)
    assert item.data is None and item.rid == file_record_id(f, "photo")[0]
    f.write_bytes(photos[1].read_bytes())
    ingest.decode(item, preprocess=lambda im: im.size, domain="photo")
    assert item.rid == file_record_id(f, "photo")[0]


def test_look_up_stores_the_same_bytes_once_and_follows_a_moved_file(tmp_path):
    from clair_vec.retrieval.sources import ImageSource

    live = tmp_path / "live.png"
    live.write_bytes(b"x")

    def item(path, rid):
        return ingest.Item(ImageSource(path, path=path), rid=rid)

    batch = [item(str(tmp_path / "a.png"), "r1"), item(str(tmp_path / "b.png"), "r1"), item(str(tmp_path / "c.png"), "r2"),
             item(str(tmp_path / "d.png"), "r3"), item(str(tmp_path / "e.png"), "r4")]  # fmt: skip
    stored = {"r2": {"path": str(tmp_path / "gone.png")}, "r3": {"path": str(live)}, "r4": {"path": str(tmp_path / "e.png")}}
    ingest.look_up(batch, stored, seen := {})
    assert [(i.status, i.note, i.moved) for i in batch] == [
        (ingest.TODO, "", False),
        (ingest.DUPLICATE, str(tmp_path / "a.png"), False),  # the same bytes earlier in this run
        (ingest.TODO, "", True),  # stored under a path that is gone: its record follows the file
        (ingest.DUPLICATE, str(live), False),  # a copy of a file that is still where it was stored
        (ingest.PRESENT, "", False),
    ]
    later = [item(str(tmp_path / "f.png"), "r1"), item(str(tmp_path / "a.png"), "r1")]
    ingest.look_up(later, {}, seen)  # ``seen`` carries across batches
    assert [i.status for i in later] == [ingest.DUPLICATE] * 2  # a file named twice in one run is encoded once


def test_a_file_named_twice_is_indexed_and_counted_once(model_dir, shapes_root, tmp_path):
    import clair_vec

    photo = shapes_root / "photo" / "heart" / "0000.png"
    uri = str(tmp_path / "g.db")
    s = clair_vec.index("g", [photo, photo, shapes_root / "photo" / "heart"], model=model_dir, uri=uri, progress=False)
    n = len(list((shapes_root / "photo" / "heart").iterdir()))
    assert (s.indexed, s.already_present, len(s.duplicates)) == (n, 0, 2), s  # it counted 10 indexed for 8 records
    with clair_vec.Retriever(model_dir, uri=uri) as r:
        assert r.count("g") == n


def test_a_shard_gone_before_a_reindex_skips_its_images_and_the_rest_is_reindexed(model_dir, shapes_root, tmp_path):
    from clair_vec.retrieval.reindex import reindex
    from clair_vec.retrieval.retriever import Retriever

    photos = sorted((shapes_root / "photo" / "heart").iterdir())[:4]
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for i, p in enumerate(photos[:2]):
            tar.add(p, arcname=f"k{i}.png")
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in photos[2:]:
        (loose / p.name).write_bytes(p.read_bytes())
    with Retriever(model_dir, backend="qdrant", uri=str(tmp_path / "q")) as r:
        assert r.index("old", [str(shard), loose], domain="photo", progress=False).indexed == 4
        shard.unlink()
        done = reindex(r.backend, "old", r, "new", progress=False)
    assert done.read == 4 and done.indexed == 2
    assert sorted(p for p, _ in done.skipped) == [f"{shard}#k0.png", f"{shard}#k1.png"]
    assert all("s.tar" in why for _, why in done.skipped)


@pytest.mark.parametrize("keep", [True, False])
def test_the_read_stage_keeps_remote_bytes_and_lets_file_bytes_go_only_when_asked(tmp_path, keep):
    from clair_vec.retrieval.sources import ImageSource

    f = tmp_path / "a.png"
    f.write_bytes(b"abc")
    web = ImageSource("http://x/b.png", path="http://x/b.png", fetch=lambda: b"def")
    items = [ingest.Item(ImageSource(str(f), path=str(f))), ingest.Item(web)]
    ingest.read(items, "photo", keep_file_bytes=keep)
    assert items[0].data == (b"abc" if keep else None) and items[1].data == b"def"
    assert items[0].rid and items[1].rid and items[0].rid != items[1].rid


def test_a_remote_shard_that_cannot_be_fetched_stops_a_run_unless_the_ray_read_task_reads_it(monkeypatch, tmp_path):
    """A record's remote shard that cannot be fetched (credentials, a host that is down) stops a
    reindex with its one line; a local shard that is gone skips its images, as a gone file does;
    the Ray read task, where a raised error would fail the whole job, skips either."""
    from clair_vec.errors import CorruptImageError, DatasetError
    from clair_vec.retrieval import remote
    from clair_vec.retrieval.sources import stored_source

    def refused(name):
        raise DatasetError(f"shard {name.split('#')[0]}: HTTP 403 Forbidden")

    monkeypatch.setattr(remote, "stored_bytes", refused)
    far, near = "https://example.com/s.tar#k.png", f"{tmp_path}/s.tar#k.png"
    with pytest.raises(DatasetError, match="403"):
        stored_source(far).fetch()
    with pytest.raises(CorruptImageError, match="403"):
        stored_source(far, skip_unreadable=True).fetch()
    with pytest.raises(CorruptImageError):
        stored_source(near).fetch()
    items = [ingest.Item(stored_source(near)), ingest.Item(stored_source(far, skip_unreadable=True))]
    ingest.read(items, "photo")
    assert [(i.status, "403" in i.note) for i in items] == [(ingest.SKIPPED, True), (ingest.SKIPPED, True)]
