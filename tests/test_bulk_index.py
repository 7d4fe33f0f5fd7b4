"""Bulk indexing on Ray (ray_jobs/index.py, clair_vec.retrieval.bulk_index): streaming, torch-free hashing,
skipped files, and exactly-once after kill -9 of the driver or of a worker, on an embedded store
and on the Milvus server that `make test` starts. Jobs run as their own processes, as users run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
JOB = [sys.executable, str(ROOT / "ray_jobs" / "index.py")]


def count(backend: str, uri: str, collection: str) -> int:
    from clair_vec import get_backend

    with get_backend(backend, uri) as be:
        return be.count(collection) if be.has_collection(collection) else 0


def ids_are_unique(backend: str, uri: str, collection: str) -> tuple[int, int]:
    """(records, distinct paths): equal when every image is stored exactly once."""
    from clair_vec import get_backend

    with get_backend(backend, uri) as be:
        payloads = [p for _, p in be.records(collection)]
    return len(payloads), len({p["path"] for p in payloads})


@pytest.fixture(scope="module")
def big_gallery(tmp_path_factory):
    """600 photos: enough that a job is still writing a second or two after its first batches."""
    from clair_vec.datasets.shapes import SHAPES, make_shapes_dataset

    root = make_shapes_dataset(tmp_path_factory.mktemp("big") / "data", classes=SHAPES[:12], per_class=50, domains=("photo",), seed=1)
    return root / "photo"


def run_job(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*JOB, *args], capture_output=True, text=True, timeout=timeout)


def test_hashing_listing_and_the_driver_import_neither_torch_nor_open_clip():
    code = ("import sys, clair_vec.retrieval.bulk_index, clair_vec.store.ids, clair_vec.datasets.folders, clair_vec.retrieval.indexing, "
            "clair_vec.method.model_card; "
            "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_index_job_reports_skips_and_resumes(model_dir, shapes_root, tmp_path):
    gallery = tmp_path / "gallery"
    (gallery / "heart").mkdir(parents=True)
    for f in sorted((shapes_root / "photo" / "heart").iterdir()):
        (gallery / "heart" / f.name).write_bytes(f.read_bytes())
    (gallery / "heart" / "broken.png").write_bytes(b"not a png")
    (gallery / "heart" / "notes.txt").write_text("not an image")
    (gallery / "copy").mkdir()
    (gallery / "copy" / "same.png").write_bytes((gallery / "heart" / "0003.png").read_bytes())
    bad_name = os.fsencode(str(gallery / "heart")) + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    with open(bad_name, "wb") as fh:
        fh.write((shapes_root / "photo" / "arrow" / "0000.png").read_bytes())
    uri = str(tmp_path / "q")  # Qdrant Edge here; the kill tests below use Milvus Lite and the server
    out = run_job("--model", str(model_dir), "--collection", "g", "--backend", "qdrant", "--uri", uri, "--label-from-folder",
                  "--actors", "2", "--batch-size", "3", str(gallery))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout.splitlines()[-1])
    assert s["indexed"] == 8 and s["already_present"] == 0
    reasons = dict(s["skipped"])
    assert "not an image in a format clair_vec reads" in reasons[str(gallery / "heart" / "broken.png")]
    assert "not valid UTF-8" in reasons[str(gallery / "heart") + "/caf\\xe9.png"]
    assert [tuple(d) for d in s["duplicates"]] == [(str(gallery / "heart" / "0003.png"), str(gallery / "copy" / "same.png"))] or \
        [tuple(d) for d in s["duplicates"]] == [(str(gallery / "copy" / "same.png"), str(gallery / "heart" / "0003.png"))]
    assert [p for p, r in s["ignored"]] == [str(gallery / "heart" / "notes.txt")] and "not an image file" in s["ignored"][0][1]
    assert count("qdrant", uri, "g") == 8
    again = run_job("--model", str(model_dir), "--collection", "g", "--backend", "qdrant", "--uri", uri, str(gallery))
    again = json.loads(again.stdout.splitlines()[-1])
    assert again["indexed"] == 0 and again["already_present"] == 8 and len(again["skipped"]) == 2
    assert len(again["duplicates"]) == 1 and len(again["ignored"]) == 1
    bad = run_job("--model", str(model_dir), "--collection", "g", "--uri", uri, "--domain", "x-ray", str(gallery))
    assert bad.returncode == 2 and "unknown domain 'x-ray'" in bad.stderr and "Started a local Ray" not in bad.stderr


def test_a_ray_index_run_refused_leaves_no_collection_behind(model_dir, shapes_root, tmp_path):
    """fp16 on a CPU, a source collection that does not exist, and a source that is the target
    were refused only after the target was made: an fp16 one then refused every later CPU run."""
    from clair_vec import get_backend

    uri = str(tmp_path / "q")
    photos = str(shapes_root / "photo" / "heart")
    assert run_job("--model", str(model_dir), "--collection", "g", "--backend", "qdrant", "--uri", uri, photos).returncode == 0
    cases = [(["--collection", "c1", "--precision", "fp16", "--gpus", "no", photos], "precision fp16 needs a CUDA device"),
             (["--collection", "c2", "--from-collection", "nothere"], "no collection 'nothere'"),
             (["--collection", "g", "--from-collection", "g"], "are the same collection 'g'")]  # fmt: skip
    for args, words in cases:
        out = run_job("--model", str(model_dir), "--backend", "qdrant", "--uri", uri, *args)
        assert out.returncode == 2 and words in out.stderr, out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]  # after Ray's own line about the local instance it started
        assert "Traceback" not in out.stderr and last.startswith("index.py: error:") and words in last, out.stderr[-3000:]
    with get_backend("qdrant", uri) as be:
        assert be.list_collections() == ["g"]


def test_reembedding_a_collection_on_ray_reports_what_it_cannot_read_again_and_what_changed(model_dir, shapes_root, tmp_path):
    """``--from-collection`` re-reads the files a collection's records name and says what
    ``clair-vec reindex`` says: a record made from an image in memory names no file (``no_file``,
    not dropped unsaid), and a file whose bytes changed since is indexed as it is now and listed
    under ``changed``."""
    import shutil

    from PIL import Image

    import clair_vec

    files = [Path(shutil.copy(f, tmp_path / f.name)) for f in sorted((shapes_root / "photo" / "heart").iterdir())[:3]]
    uri = str(tmp_path / "q")
    with Image.open(shapes_root / "photo" / "arrow" / "0000.png") as im:
        in_memory = im.convert("RGB")
    clair_vec.index("old", [*map(str, files), in_memory], backend="qdrant", uri=uri, model=str(model_dir), progress=False)
    with clair_vec.get_backend("qdrant", uri) as be:
        memory_id = next(rid for rid, p in be.records("old") if p["path"].startswith("<"))
    with Image.open(shapes_root / "photo" / "arrow" / "0001.png") as im:
        im.save(files[1])  # the same name, other bytes
    out = run_job("--model", str(model_dir), "--collection", "new", "--backend", "qdrant", "--uri", uri,
                  "--from-collection", "old")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout.splitlines()[-1])
    assert s["from"] == "old" and s["read"] == 4 and s["indexed"] == 3 and count("qdrant", uri, "new") == 3
    assert [tuple(x) for x in s["no_file"]] == [(memory_id, "indexed from an in-memory image: there is no file to read again")]
    assert s["skipped"] == []
    assert [tuple(x) for x in s["changed"]] == [(str(files[1]), "its bytes changed since the old collection indexed it; indexed as it is now")]


def _kill_driver_mid_run(args: list[str], after_lines: int = 2, sig: int = signal.SIGKILL) -> str:
    """Start the job, wait for its first progress lines, send the driver alone ``sig`` (kill -9 by
    default). Returns stderr."""
    proc = subprocess.Popen([*JOB, "-v", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    seen, lines = 0, []
    deadline = time.monotonic() + 300
    try:
        for line in proc.stderr:
            lines.append(line)
            if "indexed" in line and "already present" in line:
                seen += 1
                if seen >= after_lines:
                    os.kill(proc.pid, sig)
                    break
            if time.monotonic() > deadline:
                break
        rest = proc.stderr.read() if sig != signal.SIGKILL else ""
        proc.wait(timeout=60)
        wanted = -signal.SIGKILL if sig == signal.SIGKILL else 130  # a SIGTERM ends the job as Ctrl-C does
        assert proc.returncode == wanted, "the job did not end as it should:\n" + "".join(lines[-20:]) + rest[-3000:]
        return "".join(lines) + rest
    finally:
        _reap_group(proc.pid)


def _reap_group(pgid: int) -> None:
    """Whatever Ray left of the killed driver's session must go too (it would hold the store)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_ray_job_stop_s_sigterm_ends_the_run_in_one_line_and_a_rerun_resumes(model_dir, big_gallery, tmp_path):
    """`ray job stop` sends SIGTERM: Ray's own handler dumped a native stack and the job died by
    the signal, with no word of what was kept."""
    uri = str(tmp_path / "g.db")
    args = ["--model", str(model_dir), "--collection", "stopped", "--backend", "milvus", "--uri", uri, "--batch-size", "2"]
    err = _kill_driver_mid_run([*args, str(big_gallery)], sig=signal.SIGTERM)
    assert "SIGTERM received" not in err and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == ("index.py: interrupted; what was written is kept: run the same command again "
                                            "to resume")  # fmt: skip
    out = run_job(*args, str(big_gallery))
    assert out.returncode == 0, out.stderr[-3000:]
    assert ids_are_unique("milvus", uri, "stopped") == (600, 600)


@pytest.mark.parametrize("store", ["milvus_lite", "milvus_server"])
def test_kill_the_driver_mid_run_then_rerun_stores_each_image_once(store, model_dir, big_gallery, tmp_path):
    import uuid

    backend, uri = {"milvus_lite": ("milvus", str(tmp_path / "g.db")), "milvus_server": ("milvus", os.environ.get("MILVUS_URI"))}[store]
    if uri is None:
        pytest.skip("MILVUS_URI is not set: run through `make test`, which starts a Milvus server")
    name = f"killed_{uuid.uuid4().hex[:8]}"
    args = ["--model", str(model_dir), "--collection", name, "--backend", backend, "--uri", uri, "--batch-size", "2"]
    _kill_driver_mid_run([*args, str(big_gallery)])
    partial = count(backend, uri, name)  # the store opens again: nothing of the killed job holds it
    assert partial < 600
    out = run_job(*args, str(big_gallery))
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout.splitlines()[-1])
    assert s["already_present"] == partial and s["indexed"] == 600 - partial and s["skipped"] == []
    assert ids_are_unique(backend, uri, name) == (600, 600)
    if store == "milvus_server":
        from clair_vec import get_backend

        with get_backend(backend, uri) as be:
            be.drop_collection(name)


def test_kill_a_worker_mid_run_and_the_collection_still_holds_each_image_once(model_dir, big_gallery):
    import uuid

    uri = os.environ.get("MILVUS_URI")
    if uri is None:
        pytest.skip("MILVUS_URI is not set: run through `make test`, which starts a Milvus server")
    name = f"workerkill_{uuid.uuid4().hex[:8]}"
    args = ["--model", str(model_dir), "--collection", name, "--uri", uri, "--batch-size", "2", "--actors", "2",
            str(big_gallery)]  # fmt: skip
    proc = subprocess.Popen([*JOB, "-v", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    killed = None
    try:
        for line in proc.stderr:
            if "indexed" in line and "already present" in line:
                killed = _kill_one_encode_actor(proc.pid)
                if killed:
                    break
        out, err = proc.communicate(timeout=600)
    finally:
        _reap_group(proc.pid)
    assert killed, "no encoding actor was found to kill"
    records, paths = ids_are_unique("milvus", uri, name)
    assert records == paths and records > 0  # whatever the killed actor was doing, nothing is stored twice
    # Ray Data restarts the actor and retries its batch, or the job fails: either way a re-run completes it
    rerun = run_job(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    s = json.loads(rerun.stdout.splitlines()[-1])
    assert s["indexed"] + s["already_present"] == 600
    assert ids_are_unique("milvus", uri, name) == (600, 600)
    from clair_vec import get_backend

    with get_backend("milvus", uri) as be:
        be.drop_collection(name)


def _kill_one_encode_actor(job_pid: int) -> int | None:
    """SIGKILL one process of the job's actor pool (``ray::MapWorker(...EncodeActor)``)."""
    out = subprocess.run(["ps", "-eo", "pid,sess,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    for line in out:
        pid, sess, cmd = line.split(None, 2)
        if "EncodeActor" in cmd and cmd.startswith("ray::") and int(sess) == job_pid:
            os.kill(int(pid), signal.SIGKILL)
            return int(pid)
    return None
