"""A gallery that outlives its model: aliases, re-embedding with a new model (resumable after
kill -9), the gate before the switch, and a service that follows the alias without one failed
request. Every step runs as its own `clair-vec` process, as a deployment pipeline runs it; the
service flow runs against the `milvus-lite server` and the Milvus 2.3.5 server `make test` starts
(an embedded store takes one process at a time, so a service and a re-embedding job cannot share it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import UNSEEN, run_cli
from servers import free_port

from clair_vec import get_backend
from clair_vec.method.model import ClairModel


@pytest.fixture(scope="module")
def model_b(shapes_root, tmp_path_factory) -> Path:
    """A second model: another seed, so other weights and another model id."""
    from clair_vec.method.config import ClairConfig
    from clair_vec.training.job import train_local

    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=2, batch_size=48, lr=3e-3, seed=1)
    return train_local(shapes_root, cfg, progress=False).save(tmp_path_factory.mktemp("ckpt_b") / "model")


@pytest.fixture(scope="module")
def queries(shapes_root, tmp_path_factory) -> Path:
    """Sketch queries in class folders: compare can score them."""
    root = tmp_path_factory.mktemp("queries")
    for c in UNSEEN:
        (root / c).mkdir()
        for f in sorted((shapes_root / "sketch" / c).iterdir())[:3]:
            shutil.copy(f, root / c / f.name)
    return root


def gallery_copy(shapes_root: Path, dest: Path) -> Path:
    for c in UNSEEN:
        shutil.copytree(shapes_root / "photo" / c, dest / c)
    return dest


def cli_json(*args: str) -> dict:
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_aliases_from_the_command_line(model_dir, shapes_root, tmp_path):
    uri = str(tmp_path / "g.db")
    common = ["--model", str(model_dir), "--uri", uri, "--label-from-folder", str(shapes_root / "photo" / "heart")]
    for name in ("v1", "v2"):
        assert run_cli("index", "--collection", name, *common).returncode == 0
    set1 = run_cli("alias", "set", "live", "v1", "--uri", uri)
    assert set1.returncode == 0 and "alias 'live' -> 'v1' (new)" in set1.stdout
    assert json.loads(run_cli("alias", "list", "--json", "--uri", uri).stdout) == {"live": "v1"}
    query = str(shapes_root / "sketch" / "heart" / "0000.png")
    through = cli_json("search", "--model", str(model_dir), "--collection", "live", "--uri", uri, "--domain", "sketch", query)
    direct = cli_json("search", "--model", str(model_dir), "--collection", "v1", "--uri", uri, "--domain", "sketch", query)
    assert through["hits"] == direct["hits"]
    moved = run_cli("alias", "set", "live", "v2", "--uri", uri)
    assert "alias 'live' -> 'v2' (was 'v1')" in moved.stdout
    for args, message in ((["set", "v1", "v2"], "is a collection; an alias never hides a collection"),
                          (["set", "other", "nope"], "no such collection"),
                          (["set", "live"], "give the collection the alias should point to"),
                          (["set", "bad-name", "v1"], "invalid collection name 'bad-name'")):  # fmt: skip
        out = run_cli("alias", *args, "--uri", uri)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "alias 'live' dropped" in run_cli("alias", "drop", "live", "--uri", uri).stdout
    assert json.loads(run_cli("alias", "list", "--json", "--uri", uri).stdout) == {}


def test_reindex_re_embeds_with_the_new_model_and_reports_gone_and_changed_files(model_dir, model_b, shapes_root, tmp_path):
    import clair_vec

    gallery = gallery_copy(shapes_root, tmp_path / "gallery")
    uri = str(tmp_path / "g.db")
    cli_json("index", "--model", str(model_dir), "--collection", "v1", "--uri", uri, "--label-from-folder", str(gallery))
    clair_vec.index("v1", [__import__("numpy").zeros((16, 16, 3), "uint8")], model=model_dir, uri=uri, progress=False)
    (gallery / "heart" / "0001.png").unlink()  # gone since v1 was indexed
    changed = gallery / "arrow" / "0002.png"
    changed.write_bytes((gallery / "arrow" / "0003.png").read_bytes()[:-1] + b"\x01")  # other bytes, same path
    s = cli_json("reindex", "--from", "v1", "--to", "v2", "--model", str(model_b), "--uri", uri)
    assert s["read"] == 33 and s["from"] == "v1" and s["collection"] == "v2"
    assert [p for p, _ in s["skipped"]] == [str(gallery / "heart" / "0001.png")] and "gone" in s["skipped"][0][1]
    assert [p for p, _ in s["changed"]] == [str(changed)] and len(s["no_file"]) == 1
    b_id = ClairModel.load(model_b).model_id
    with get_backend("milvus", uri) as be:
        records = dict(be.records("v2"))
        assert be.open_collection("v2").model == b_id
        assert be.open_collection("v2").extra["model_dir"] == str(model_b)  # where a service finds the model
    assert {p["model"] for p in records.values()} == {b_id}
    assert {p["label"] for p in records.values()} == set(UNSEEN)  # labels kept
    assert s["indexed"] == len(records) == 32 - 1  # 32 photos, one gone (the changed one is indexed as it is now)
    again = cli_json("reindex", "--from", "v1", "--to", "v2", "--model", str(model_b), "--uri", uri)
    assert again["indexed"] == 0 and again["already_present"] == 31


def test_the_index_is_chosen_per_collection_and_reindex_can_change_it(model_dir, model_b, shapes_root, tmp_path):
    gallery = gallery_copy(shapes_root, tmp_path / "gallery")
    uri = str(tmp_path / "g.db")
    cli_json("index", "--model", str(model_dir), "--collection", "v1", "--uri", uri, "--label-from-folder", str(gallery))
    cli_json("reindex", "--from", "v1", "--to", "v2", "--model", str(model_b), "--uri", uri,
             "--backend-option", "index_type=HNSW", "--backend-option", 'index_params={"M": 8, "efConstruction": 64}')  # fmt: skip
    with get_backend("milvus", uri) as be:  # a handle with no index option searches each by its own index
        for name, kind in (("v1", "FLAT"), ("v2", "HNSW")):
            assert be.client.describe_index(name, "vector")["index_type"] == kind
        assert be._search_params("v1", 100) == {"metric_type": "COSINE"}
        assert be._search_params("v2", 10)["params"] == {"ef": 256}
        assert be._search_params("v2", 300)["params"] == {"ef": 300}  # never a beam narrower than top_k
    query = str(gallery / "heart" / "0000.png")
    hits = cli_json("search", "--model", str(model_b), "--collection", "v2", "--uri", uri, "--domain", "photo", "--top-k", "32", query)
    assert len(hits["hits"]) == 32 and hits["hits"][0]["path"] == query  # every record, from a new process
    bad = run_cli("index", "--model", str(model_dir), "--collection", "v3", "--uri", uri, "--backend-option", "index_params={M: 8}", query)
    assert bad.returncode == 2 and "--backend-option index_params=...: the value is not a JSON object" in bad.stderr
    assert "Traceback" not in bad.stderr
    misspelt = run_cli("search", "--model", str(model_b), "--collection", "v2", "--uri", uri, "--domain", "photo", "--backend-option", "ef=32", query)
    last = misspelt.stderr.strip().splitlines()[-1]
    assert misspelt.returncode == 2 and "Traceback" not in misspelt.stderr
    assert last.startswith("clair-vec: error: the milvus backend (MilvusBackend at ") and "has no option 'ef'; its options: db_name," in last


def test_reindex_killed_mid_run_then_resumed_stores_each_file_once(model_dir, model_b, tmp_path):
    from clair_vec.datasets.shapes import SHAPES, make_shapes_dataset

    gallery = make_shapes_dataset(tmp_path / "data", classes=SHAPES[:12], per_class=20, domains=("photo",), seed=4) / "photo"
    uri = str(tmp_path / "g.db")
    cli_json("index", "--model", str(model_dir), "--collection", "v1", "--uri", uri, str(gallery))
    cmd = [sys.executable, "-m", "clair_vec.cli", "-v", "reindex", "--from", "v1", "--to", "v2", "--model", str(model_b),
           "--uri", uri, "--batch-size", "4"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "read; indexed" in line and int(line.split("indexed ")[1].split(",")[0]) >= 40:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    s = cli_json("reindex", "--from", "v1", "--to", "v2", "--model", str(model_b), "--uri", uri)
    assert s["already_present"] >= 40 and s["indexed"] + s["already_present"] == 240
    with get_backend("milvus", uri) as be:
        paths = [p["path"] for _, p in be.records("v2")]
    assert len(paths) == len(set(paths)) == 240


def test_compare_measures_both_and_fails_a_worse_collection(model_dir, model_b, shapes_root, queries, tmp_path):
    gallery = gallery_copy(shapes_root, tmp_path / "gallery")
    wrong = tmp_path / "mislabelled"  # the same photos under a name no query has: nothing it returns is relevant
    for c in UNSEEN:
        shutil.copytree(gallery / c, wrong / "unsorted" / c)
    wrong = wrong / "unsorted"
    uri = str(tmp_path / "g.db")
    cli_json("index", "--model", str(model_dir), "--collection", "v1", "--uri", uri, "--label-from-folder", str(gallery))
    cli_json("reindex", "--from", "v1", "--to", "v2", "--model", str(model_b), "--uri", uri)
    bad = [str(f) for f in sorted(wrong.rglob("*.png"))]
    cli_json("index", "--model", str(model_dir), "--collection", "bad", "--uri", uri, *bad)  # no labels at all
    common = ["--queries", str(queries), "--domain", "sketch", "--uri", uri, "--k", "8"]
    out = run_cli("compare", "v1", "v2", *common, "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["queries"] == 12 and r["new"]["model"] == ClairModel.load(model_b).model_id
    assert 0.0 <= r["overlap@8"] <= 1.0 and set(r["old"]["metrics"]) == {"mAP@8", "P@8"}
    ok = run_cli("compare", "v1", "v1", *common, "--fail-if-worse", "0")
    assert ok.returncode == 0 and "not worse" in ok.stderr and "overlap@8 1.000" in ok.stdout
    worse = run_cli("compare", "v1", "bad", *common, "--fail-if-worse", "0.01")
    assert worse.returncode == 1 and "is worse" in worse.stderr and "do not move the alias" in worse.stderr
    blind = run_cli("compare", "bad", "v1", *common, "--fail-if-worse", "0.01")  # a baseline nothing can be measured on
    assert blind.returncode == 2 and "baseline's mAP cannot be measured" in blind.stderr and "Traceback" not in blind.stderr
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    shutil.copy(next((queries / UNSEEN[0]).iterdir()), unlabelled / "q.png")
    out = run_cli("compare", "v1", "v2", "--queries", str(unlabelled), "--domain", "sketch", "--uri", uri, "--fail-if-worse", "0")
    assert out.returncode == 2 and "needs query folders named by class" in out.stderr


# ---------------------------------------------------------------------- a service that follows the alias
def _servers() -> list[str]:
    return [u for u in (os.environ.get("MILVUS_LITE_URI"), os.environ.get("MILVUS_URI")) if u]


def _traffic(url: str, query: bytes, stop: threading.Event, log: list[tuple[float, int, list[str], str]]) -> None:
    with httpx.Client(timeout=60) as c:
        while not stop.is_set():
            try:
                r = c.post(f"{url}/search", files={"image": ("q.png", query)}, data={"domain": "sketch", "top_k": "5"})
                body = r.json()
                log.append((time.monotonic(), r.status_code, [h.get("model", "") for h in body.get("hits", [])],
                            body.get("detail", "")))  # fmt: skip
            except httpx.HTTPError as exc:
                log.append((time.monotonic(), 0, [], str(exc)))


@pytest.mark.parametrize("uri", _servers() or [pytest.param(None, marks=pytest.mark.skip(
    reason="needs MILVUS_LITE_URI / MILVUS_URI: run through `make test`, which starts the servers"))])  # fmt: skip
@pytest.mark.parametrize("interrupted", [False, True], ids=["straight", "reindex-killed-and-resumed"])
def test_a_model_upgrade_under_traffic_loses_no_request(uri, interrupted, model_dir, model_b, shapes_root, queries, tmp_path):
    tag = uuid.uuid4().hex[:6]
    v1, v2, live = f"v1_{tag}", f"v2_{tag}", f"live_{tag}"
    gallery = gallery_copy(shapes_root, tmp_path / "gallery")
    common = ["--uri", uri]
    cli_json("index", "--model", str(model_dir), "--collection", v1, *common, "--label-from-folder", str(gallery))
    assert run_cli("alias", "set", live, v1, *common).returncode == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "serve", "--model", str(model_dir), "--collection", live,
                              *common, "--port", str(port), "--follow-interval", "0.5", "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    stop, log = threading.Event(), []
    clients: list[threading.Thread] = []
    a_id, b_id = ClairModel.load(model_dir).model_id, ClairModel.load(model_b).model_id
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert serve.poll() is None and time.monotonic() < deadline, serve.stdout.read()[-3000:] if serve.poll() is not None else "slow"
            time.sleep(0.5)
        info = httpx.get(f"{url}/info").json()
        assert (info["alias"], info["collection"], info["model"]) == (live, v1, a_id)
        assert info["cpu_threads"] == 1  # --threads reaches the process that serves
        clients += [threading.Thread(target=_traffic, args=(url, (shapes_root / "sketch" / c / "0000.png").read_bytes(), stop, log))
                    for c in UNSEEN[:2]]  # fmt: skip
        for t in clients:
            t.start()
        reindex = ["reindex", "--from", live, "--to", v2, "--model", str(model_b), *common, "--batch-size", "4"]
        if interrupted:
            proc = subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "-v", *reindex], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
            for line in proc.stderr:
                if "read; indexed" in line and int(line.split("indexed ")[1].split(",")[0]) >= 8:
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait(timeout=60)
            assert proc.returncode == -signal.SIGKILL
        s = cli_json(*reindex)
        assert s["indexed"] + s["already_present"] == 32
        gate = run_cli("compare", live, v2, "--queries", str(queries), "--domain", "sketch", *common, "--fail-if-worse", "1")
        assert gate.returncode == 0, gate.stderr  # a pipeline would stop here on a worse model
        assert run_cli("alias", "set", live, v2, *common).returncode == 0
        switched = None
        deadline = time.monotonic() + 60
        while switched is None and time.monotonic() < deadline:
            info = httpx.get(f"{url}/info").json()
            if info["collection"] == v2:
                switched = time.monotonic()
            time.sleep(0.2)
        assert switched is not None, "the service did not follow the alias"
        assert info["model"] == b_id and info["alias"] == live
        time.sleep(2)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=60)
        serve.terminate()
        out, _ = serve.communicate(timeout=60)
        with get_backend("milvus", uri) as be:
            be.drop_alias(live)
            for name in (v1, v2):
                be.drop_collection(name)
    assert log and all(status == 200 for _, status, _, _ in log), [entry for entry in log if entry[1] != 200][:5]
    before = [models for t, _, models, _ in log if t < switched - 2]  # well before: model A's vectors
    after = [models for t, _, models, _ in log if t > switched + 1.5]  # after the switch settled: model B's
    assert before and all(set(m) == {a_id} for m in before)
    assert after and all(set(m) == {b_id} for m in after)
    assert "now points to collection" in out and "Traceback" not in out


def test_a_followed_alias_moved_to_vectors_this_service_cannot_encode_queries_for_is_refused(model_dir, tmp_path, caplog):
    """An alias moved to a collection indexed at fp16 (on a GPU) was followed by a CPU service:
    it answered /readyz "ready" and every search 422. And an alias dropped for good logged a
    warning every poll for as long as the service ran."""
    import asyncio

    from clair_vec.method.model_card import ModelCard
    from clair_vec.retrieval.indexing import prepare_collection
    from clair_vec.retrieval.retriever import Retriever
    from clair_vec.service.context import ServiceContext
    from clair_vec.service.follow import Follower
    from clair_vec.service.settings import ServiceSettings

    r = Retriever(model_dir, uri=str(tmp_path / "g.db"), device="cpu")
    card = ModelCard.read(model_dir)
    prepare_collection(r.backend, "s1", card, model_dir)
    prepare_collection(r.backend, "s_fp16", card, model_dir, "fp16")
    r.backend.set_alias("live", "s1")
    ctx = ServiceContext(r, "live", ServiceSettings())
    try:
        r.backend.set_alias("live", "s_fp16")
        follower = Follower(ctx, 0)
        with caplog.at_level("WARNING", logger="clair_vec.service"):
            assert asyncio.run(follower.check()) is False
            assert asyncio.run(follower.check()) is False
        assert ctx.serving.collection == "s1"
        refusals = [m for m in caplog.messages if "keeps serving 's1'" in m]
        assert len(refusals) == 1 and "precision fp16, which this service cannot run" in refusals[0], caplog.messages

        r.backend.drop_alias("live")
        caplog.clear()

        async def poll_a_while() -> None:
            polling = Follower(ctx, 0.02)
            polling.start()
            await asyncio.sleep(0.4)
            polling._task.cancel()

        with caplog.at_level("WARNING", logger="clair_vec.service"):
            asyncio.run(poll_a_while())
        failures = [m for m in caplog.messages if m.startswith("following 'live'")]
        assert len(failures) == 1 and "CollectionNotFoundError" in failures[0], caplog.messages
    finally:
        ctx.worker.shutdown()
        r.close()
