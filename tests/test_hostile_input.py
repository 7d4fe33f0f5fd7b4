"""Hostile and unlucky input: loading never runs code, filters and file names never crash, the
store never lies. Flows run as separate `clair-vec` processes where users run them that way.
(Backend-level promises, such as quoting and locks, are in the conformance suite for every backend.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

import clair_vec
from clair_vec.errors import (
    CollectionNotFoundError,
    CorruptImageError,
    InvalidCollectionNameError,
    UnsafeCheckpointError,
)


class Payload:
    """Unpickling this runs ``touch <marker>``: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pwned_by_pickle"


@pytest.fixture
def planted(model_dir, tmp_path, marker):
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    state = torch.load(bad / "clair.pt", weights_only=True)
    state["prompts"] = Payload(marker)
    torch.save(state, bad / "clair.pt")
    return bad


def test_a_planted_checkpoint_is_refused_and_never_runs(planted, tmp_path, marker):
    from clair_vec.method.model import ClairModel

    with pytest.raises(UnsafeCheckpointError, match="refusing to load CLAIR checkpoint.*could run code"):
        ClairModel.load(planted)
    out = run_cli("search", "--model", str(planted), "--collection", "g", "--uri", str(tmp_path / "s.db"), "--domain",
                  "sketch", str(planted / "clair.json"))  # fmt: skip
    assert out.returncode == 2 and "refusing to load" in out.stderr and "Traceback" not in out.stderr
    # what the safe loader found, and never torch's advice to load the file unsafely instead
    assert "unsupported GLOBAL" in out.stderr and "weights_only" not in out.stderr, out.stderr
    assert not marker.exists()
    torch.load(planted / "clair.pt", weights_only=False)  # the payload is real: unsafe loading runs it
    assert marker.exists()


def test_planted_feature_cache_and_trainer_checkpoint_are_refused(tiny_clip, shapes_root, tmp_path, marker):
    from clair_vec.datasets.folders import scan_folder
    from clair_vec.method.tensor_files import load_tensor_file
    from clair_vec.training.features import _cache_key, extract_features

    ds = scan_folder(shapes_root).subset(classes=["circle"], domains=["photo"])
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save({"photo": Payload(marker)}, cache / f"features-{_cache_key(tiny_clip, ds, 1, 0)}.pt")
    with pytest.raises(UnsafeCheckpointError, match="feature cache"):
        extract_features(tiny_clip, ds, n_views=1, cache_dir=cache, progress=False)
    torch.save({"epoch": 1, "history": Payload(marker)}, tmp_path / "trainer.pt")
    with pytest.raises(UnsafeCheckpointError, match="Ray trainer checkpoint"):
        load_tensor_file(tmp_path / "trainer.pt", what="Ray trainer checkpoint")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not a torch file")
    with pytest.raises(UnsafeCheckpointError, match="truncated or not a torch file"):
        load_tensor_file(tmp_path / "truncated.pt")
    assert not marker.exists()


def test_filter_values_of_the_wrong_type_are_one_clear_error(model_dir, shapes_root, tmp_path):
    uri = str(tmp_path / "g.db")
    clair_vec.index("g", [shapes_root / "photo" / "heart"], model=model_dir, uri=uri, label_from_folder=True, progress=False)
    query = shapes_root / "sketch" / "heart" / "0000.png"
    for bad in (3, None, {"x": 1}, [1.5], b"bytes"):
        with pytest.raises(ValueError, match="filter value .* must be strings"):
            clair_vec.search("g", [query], domain="sketch", filter={"label": bad}, model=model_dir, uri=uri)
    hits = clair_vec.search("g", [query], domain="sketch", filter={"label": "heart"}, model=model_dir, uri=uri, top_k=3)
    assert len(hits[0]) == 3


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_indexed(backend, model_dir, shapes_root, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(shapes_root / "photo" / "heart", gallery)
    bad = os.fsencode(str(gallery)) + b"/gr\xfcn.png"
    shutil.copyfile(shapes_root / "photo" / "arrow" / "0000.png", bad)
    uri = str(tmp_path / ("g.db" if backend == "milvus" else "q"))
    for attempt in range(2):  # the re-run must not abort either
        out = run_cli("index", "--model", str(model_dir), "--collection", "g", "--backend", backend, "--uri", uri, str(gallery))
        assert out.returncode == 0, out.stderr
        s = json.loads(out.stdout.splitlines()[-1])
        assert (s["indexed"], s["already_present"]) == ((8, 0) if attempt == 0 else (0, 8))
        assert s["skipped"] == [[str(gallery) + "/gr\\xfcn.png", s["skipped"][0][1]]]
        assert "not valid UTF-8" in s["skipped"][0][1] and "rename" in s["skipped"][0][1]


def test_a_query_file_whose_name_is_not_utf8_is_searched_as_its_twin_with_a_plain_name(model_dir, shapes_root, tmp_path):
    """A query is read, never stored: only indexing has a reason to refuse such a name."""
    uri = str(tmp_path / "g.db")
    common = ["--model", str(model_dir), "--collection", "g", "--uri", uri]
    assert run_cli("index", *common, str(shapes_root / "photo")).returncode == 0
    plain = tmp_path / "plain.png"
    shutil.copyfile(shapes_root / "sketch" / "heart" / "0000.png", plain)
    folder = tmp_path / "queries"
    folder.mkdir()
    bad = os.fsencode(str(folder)) + b"/gr\xfcn.png"
    shutil.copyfile(plain, bad)
    lines = {}
    for name, arg in (("plain", str(plain)), ("file", os.fsdecode(bad)), ("folder", str(folder))):
        out = run_cli("search", *common, "--domain", "sketch", "--top-k", "3", arg)
        assert out.returncode == 0, out.stderr
        lines[name] = [json.loads(line) for line in out.stdout.splitlines()]
    assert [h["id"] for h in lines["file"][0]["hits"]] == [h["id"] for h in lines["plain"][0]["hits"]]
    assert lines["file"][0]["query"] == os.fsdecode(bad).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    assert [(r["query"], r["hits"]) for r in lines["folder"]] == [(str(folder) + "/gr\\xfcn.png", lines["plain"][0]["hits"])]


def test_a_file_whose_bytes_changed_is_stored_once_and_prune_removes_deleted_files(model_dir, shapes_root, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(shapes_root / "photo" / "heart", gallery / "heart")
    shutil.copytree(shapes_root / "photo" / "arrow", gallery / "arrow")
    uri = str(tmp_path / "g.db")
    common = ["--model", str(model_dir), "--collection", "g", "--uri", uri, "--label-from-folder"]
    assert run_cli("index", *common, str(gallery)).returncode == 0
    changed = gallery / "heart" / "0003.png"
    im = Image.open(changed).convert("RGB")
    im.putpixel((0, 0), (1, 2, 3))
    im.save(changed)  # new bytes, same path
    (gallery / "arrow" / "0001.png").unlink()
    out = run_cli("index", *common, str(gallery))
    s = json.loads(out.stdout.splitlines()[-1])
    assert (s["indexed"], s["already_present"], s["replaced"], s["pruned"]) == (1, 14, 1, 0)
    out = run_cli("index", *common, "--prune", str(gallery))
    s = json.loads(out.stdout.splitlines()[-1])
    assert (s["indexed"], s["already_present"], s["replaced"], s["pruned"]) == (0, 15, 0, 1)
    # a renamed file keeps its record (its path follows it), and prune does not take it for deleted
    (gallery / "arrow" / "0002.png").rename(gallery / "arrow" / "renamed.png")
    out = run_cli("index", *common, "--prune", str(gallery))
    s = json.loads(out.stdout.splitlines()[-1])
    assert (s["indexed"], s["already_present"], s["moved"], s["pruned"]) == (1, 14, 1, 0)
    # a folder that is not there (an unmounted disk) is refused, not read as "every file was deleted"
    out = run_cli("index", *common, "--prune", str(tmp_path / "unmounted"))
    assert out.returncode == 2 and "--prune needs existing folders" in out.stderr
    from clair_vec import get_backend

    with get_backend("milvus", uri) as be:
        paths = sorted(p["path"] for _, p in be.records("g"))
    assert paths == sorted(str(p) for p in gallery.rglob("*.png"))  # each file exactly once, nothing stale


def test_bad_arrays_are_refused_and_empty_queries_give_empty_results(model_dir, shapes_root, tmp_path):
    uri = str(tmp_path / "g.db")
    nan = np.full((16, 16, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match="array #0 contains NaN"):
        clair_vec.index("g", [nan], model=model_dir, uri=uri, progress=False)
    with pytest.raises(ValueError, match=r"array #1 is float with values in \[255, 255\].*must lie in \[0, 1\]"):
        clair_vec.index("g", [np.zeros((8, 8, 3), np.float32), np.full((8, 8, 3), 255.0)], model=model_dir, uri=uri,
                        progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="shape"):
        clair_vec.index("g", [np.zeros((8, 8, 2), np.uint8)], model=model_dir, uri=uri, progress=False)
    assert not Path(uri).exists()  # refused before anything was written, or even created
    clair_vec.index("g", [shapes_root / "photo" / "heart"], model=model_dir, uri=uri, progress=False)
    for backend_uri, backend in ((uri, "milvus"), (str(tmp_path / "q"), "qdrant")):
        if backend == "qdrant":
            clair_vec.index("g", [shapes_root / "photo" / "heart"], model=model_dir, backend=backend, uri=backend_uri, progress=False)
        assert clair_vec.search("g", [], domain="sketch", model=model_dir, backend=backend, uri=backend_uri) == []
    with pytest.raises(CorruptImageError, match="does not exist"):
        clair_vec.search("g", [tmp_path / "missing.png"], domain="sketch", model=model_dir, uri=uri)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "I;16"])
def test_every_image_mode_indexes(mode, model_dir, tmp_path):
    im = Image.new("RGB", (40, 40), (200, 30, 90)).convert(mode) if mode not in ("I;16",) else Image.new(mode, (40, 40), 300)
    s = clair_vec.index("modes", [im], model=model_dir, uri=str(tmp_path / "m.db"), progress=False)
    assert s.indexed == 1 and not s.skipped


def test_corrupt_truncated_and_oversized_images_are_skipped_by_name(model_dir, shapes_root, tmp_path):
    gallery = tmp_path / "g"
    gallery.mkdir()
    shutil.copy(shapes_root / "photo" / "heart" / "0000.png", gallery / "ok.png")
    (gallery / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnonsense")
    (gallery / "truncated.png").write_bytes((shapes_root / "photo" / "heart" / "0001.png").read_bytes()[:200])
    Image.new("1", (16000, 16000)).save(gallery / "bomb.png")  # 256 Mpx: beyond PIL's decompression-bomb limit
    s = clair_vec.index("g", [gallery], model=model_dir, uri=str(tmp_path / "s.db"), progress=False)
    assert s.indexed == 1
    reasons = {Path(p).name: r for p, r in s.skipped}
    assert set(reasons) == {"corrupt.png", "truncated.png", "bomb.png"}
    assert "DecompressionBomb" in reasons["bomb.png"]


def test_search_never_creates_a_store_and_names_are_checked_first(model_dir, tmp_path):
    for backend, uri in (("milvus", tmp_path / "never.db"), ("qdrant", tmp_path / "never_q")):
        with pytest.raises(CollectionNotFoundError):
            clair_vec.search("g", [np.zeros((8, 8, 3), np.uint8)], domain="sketch", model=model_dir, backend=backend, uri=str(uri))
        assert not uri.exists()
        with pytest.raises(InvalidCollectionNameError, match="'my-gallery'.*letters, digits and underscores"):
            clair_vec.index("my-gallery", [np.zeros((8, 8, 3), np.uint8)], model=model_dir, backend=backend, uri=str(uri),
                            progress=False)  # fmt: skip
        assert not uri.exists()
    out = run_cli("index", "--model", str(model_dir), "--collection", "bad name", "--uri", str(tmp_path / "x.db"), str(tmp_path))
    assert out.returncode == 2 and "invalid collection name 'bad name'" in out.stderr


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_a_store_in_use_says_so_and_the_writer_keeps_working(backend, model_dir, shapes_root, tmp_path):
    """A long-lived process holds the embedded store; `clair-vec search` in another process is told
    the store is locked and how to share it, and the holder's next writes still land."""
    uri = str(tmp_path / ("g.db" if backend == "milvus" else "q"))
    holder = clair_vec.Retriever(model_dir, backend=backend, uri=uri)
    try:
        holder.index("g", [shapes_root / "photo" / "heart"], progress=False)
        out = run_cli("search", "--model", str(model_dir), "--collection", "g", "--backend", backend, "--uri", uri,
                      "--domain", "sketch", str(shapes_root / "sketch" / "heart" / "0000.png"))  # fmt: skip
        assert out.returncode == 2, out.stdout
        assert "in use by another process" in out.stderr or "locked by another process" in out.stderr
        assert "server" in out.stderr and "Traceback" not in out.stderr
        s = holder.index("g", [shapes_root / "photo" / "arrow"], progress=False)
        assert s.indexed == 8 and holder.backend.count("g") == 16
    finally:
        holder.close()
    again = run_cli("search", "--model", str(model_dir), "--collection", "g", "--backend", backend, "--uri", uri,
                    "--domain", "sketch", "--top-k", "16", str(shapes_root / "sketch" / "heart" / "0000.png"))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(json.loads(again.stdout.splitlines()[-1])["hits"]) == 16


def test_kill_9_mid_index_then_rerun_stores_each_image_once(model_dir, tmp_path):
    """`clair-vec index` killed with -9 mid-run (single process), then run again."""
    from clair_vec.datasets.shapes import SHAPES, make_shapes_dataset

    gallery = make_shapes_dataset(tmp_path / "data", classes=SHAPES[:12], per_class=25, domains=("photo",), seed=2) / "photo"
    uri = str(tmp_path / "g.db")
    cmd = [sys.executable, "-m", "clair_vec.cli", "-v", "index", "--model", str(model_dir), "--collection", "g", "--uri", uri,
           "--batch-size", "4", str(gallery)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "read; indexed" in line and int(line.split("indexed ")[1].split(",")[0]) >= 20:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    out = run_cli("index", "--model", str(model_dir), "--collection", "g", "--uri", uri, str(gallery))
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout.splitlines()[-1])
    assert s["already_present"] >= 20 and s["indexed"] + s["already_present"] == 300
    from clair_vec import get_backend

    with get_backend("milvus", uri) as be:
        assert be.count("g") == 300
        assert len({p["path"] for _, p in be.records("g")}) == 300
