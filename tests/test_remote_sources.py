"""Galleries where the images live: URL lists against a real HTTP server on loopback (with 404s,
a flaky and a truncated answer), webdataset shards, parquet files of image bytes, and S3 against
moto's standalone S3 server. Each is indexed with ``clair-vec index`` in one process and searched
in another; the hits must be those of the same images indexed from local disk."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

FAST = {"CLAIR_VEC_FETCH_BACKOFF": "0.01", "CLAIR_VEC_FETCH_TIMEOUT": "5", "CLAIR_VEC_PROGRESS": "0"}
SECRET = "s3cr3t-PASSWORD-9"


@pytest.fixture(scope="module")
def photos(shapes_root) -> list[Path]:
    """The gallery: every photo of four seen classes."""
    return sorted(p for c in ("circle", "square", "triangle", "star") for p in (shapes_root / "photo" / c).iterdir())


class _Handler(http.server.SimpleHTTPRequestHandler):
    flaky_seen: set[str] = set()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        path = self.path.split("?")[0]
        if path.startswith("/missing/"):
            self.send_error(404, "Not Found")
        elif path.startswith("/flaky/") and path not in self.flaky_seen:
            self.flaky_seen.add(path)
            self.send_error(503, "Service Unavailable")  # once: the retry gets it
        elif path.startswith("/trunc/"):
            body = (Path(self.directory) / path.split("/")[-1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif path.startswith("/redirect-"):  # /redirect-same/NAME, /redirect-other/NAME, /redirect-file/NAME
            kind, name = path.split("/")[1].removeprefix("redirect-"), path.split("/")[-1]
            port = self.server.server_address[1]
            where = {"same": f"http://127.0.0.1:{port}/private/{name}", "other": f"http://localhost:{port}/private/{name}",
                     "file": "file:///etc/passwd"}[kind]  # fmt: skip
            self.send_response(302)
            self.send_header("Location", where)
            self.end_headers()
        elif path.startswith("/private/"):
            import base64

            want = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
            if self.headers.get("Authorization") != want:
                self.send_error(401, "Unauthorized")
            else:
                self.path = "/" + path.split("/")[-1]
                super().do_GET()
        else:
            if path.startswith("/flaky/"):
                self.path = "/" + path.split("/")[-1]
            super().do_GET()


@pytest.fixture(scope="module")
def web(photos, tmp_path_factory):
    """An HTTP server on loopback serving the gallery's photos by file name."""
    root = tmp_path_factory.mktemp("www")
    for p in photos:
        shutil.copy(p, root / f"{p.parent.name}-{p.name}")
    (root / "notes.txt").write_text("not an image")
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def _index(model_dir, uri, collection, *inputs, env=None):
    out = run_cli("index", "--model", str(model_dir), "--uri", uri, "--collection", collection, *map(str, inputs),
                  env={**FAST, **(env or {})})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out


def _hits(model_dir, uri, collection, query):
    out = run_cli("search", "--model", str(model_dir), "--uri", uri, "--collection", collection, "--domain", "sketch",
                  "--top-k", "10", str(query))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return [(h["id"], h["score"]) for h in json.loads(out.stdout.strip().splitlines()[-1])["hits"]]


@pytest.fixture(scope="module")
def local(model_dir, photos, shapes_root, tmp_path_factory):
    """The same photos indexed from local disk, and a sketch query's top 10 there."""
    uri = str(tmp_path_factory.mktemp("local") / "g.db")
    summary, _ = _index(model_dir, uri, "local", *photos)
    assert summary["indexed"] == len(photos)
    query = sorted((shapes_root / "sketch" / "star").iterdir())[0]
    return query, _hits(model_dir, uri, "local", query)


def test_a_url_list_gives_the_hits_of_local_disk_and_reports_what_failed(model_dir, web, local, photos, tmp_path):
    base, root = web
    names = sorted(p.name for p in root.iterdir() if p.suffix == ".png")
    good = [f"{base}/{n}" for n in names[1:]] + [f"{base}/flaky/{names[0]}"]
    bad = [f"{base}/missing/x.png", f"{base}/trunc/{names[1]}", f"{base}/notes.txt"]
    listing = tmp_path / "urls.txt"
    listing.write_text("# the gallery\n" + "\n".join(good + bad) + "\n")
    uri = str(tmp_path / "g.db")
    summary, out = _index(model_dir, uri, "web", "--from-list", listing)
    assert summary["indexed"] == len(photos) and summary["duplicates"] == [] and summary["already_present"] == 0
    reasons = dict(summary["skipped"])
    assert reasons[f"{base}/missing/x.png"] == "HTTP 404 Not Found"
    assert "short of its length" in reasons[f"{base}/trunc/{names[1]}"] and "gave up after 4 tries" in reasons[f"{base}/trunc/{names[1]}"]
    assert f"{base}/notes.txt" in reasons and len(reasons) == 3
    query, local_hits = local
    assert _hits(model_dir, uri, "web", query) == local_hits  # same ids (bytes), same scores, same order
    again, _ = _index(model_dir, uri, "web", "--from-list", listing)  # a re-run skips what is done
    assert again["indexed"] == 0 and again["already_present"] == len(photos)
    _shards(photos, root)  # shards on the web server: streamed to a temporary file, read by offset
    remote_shards, _ = _index(model_dir, uri, "webshards", f"{base}/shard-{{0000..0001}}.tar")
    assert remote_shards["indexed"] == len(photos)
    assert _hits(model_dir, uri, "webshards", query) == local_hits


def test_credentials_in_urls_are_used_and_never_shown_or_stored(model_dir, web, tmp_path):
    base, root = web
    name = sorted(p.name for p in root.iterdir() if p.suffix == ".png")[0]
    host = base.removeprefix("http://")
    listing = tmp_path / "urls.csv"
    listing.write_text(f"id,image_url\n1,http://user:{SECRET}@{host}/private/{name}\n2,{base}/missing/y.png?token={SECRET}\n")
    uri = str(tmp_path / "g.db")
    summary, out = _index(model_dir, uri, "private", "--from-list", listing, "--column", "image_url")
    assert summary["indexed"] == 1
    dump = run_cli("search", "--model", str(model_dir), "--uri", uri, "--collection", "private", "--text", "a photo")
    for text in (out.stdout, out.stderr, dump.stdout, dump.stderr, json.dumps(summary)):
        assert SECRET not in text
    assert f"http://{host}/private/{name}" in dump.stdout  # stored without the user info


def test_reindex_finds_a_protected_gallery_s_credentials_in_netrc_never_in_the_store(model_dir, web, tmp_path):
    base, root = web
    name = sorted(p.name for p in root.iterdir() if p.suffix == ".png")[1]
    host = base.removeprefix("http://")
    uri, nowhere = str(tmp_path / "g.db"), {"NETRC": str(tmp_path / "absent")}
    summary, _ = _index(model_dir, uri, "locked", f"http://user:{SECRET}@{host}/private/{name}", env=nowhere)
    assert summary["indexed"] == 1
    # the stored URI keeps no credentials, so without a netrc entry reindex is refused, and says where they go
    re = run_cli("reindex", "--model", str(model_dir), "--uri", uri, "--from", "locked", "--to", "again", env={**FAST, **nowhere})
    (_, why), = json.loads(re.stdout.strip().splitlines()[-1])["skipped"]
    assert why.startswith("HTTP 401 Unauthorized: the server wants credentials") and "~/.netrc" in why
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {host.split(':')[0]}\n  login user\n  password {SECRET}\n")
    netrc.chmod(0o600)
    re = run_cli("reindex", "--model", str(model_dir), "--uri", uri, "--from", "locked", "--to", "again",
                 env={**FAST, "NETRC": str(netrc)})  # fmt: skip
    assert re.returncode == 0, re.stderr[-2000:]
    assert json.loads(re.stdout.strip().splitlines()[-1])["indexed"] == 1
    # a default entry is never sent: a URL list names hosts the user never chose to give a password to
    netrc.write_text(f"default\n  login user\n  password {SECRET}\n")
    other = run_cli("reindex", "--model", str(model_dir), "--uri", uri, "--from", "locked", "--to", "third",
                    env={**FAST, "NETRC": str(netrc)})  # fmt: skip
    (_, why), = json.loads(other.stdout.strip().splitlines()[-1])["skipped"]
    assert why.startswith("HTTP 401 Unauthorized")
    # a broken file stops no public URL: it is left out, with one warning, and no line of it repeated
    netrc.write_text(f"machine\n  password {SECRET}\n  nonsense\n")
    public = [p for p in sorted(root.iterdir()) if p.suffix == ".png"][:2]
    broken = run_cli("index", "--model", str(model_dir), "--uri", uri, "--collection", "x", *(f"{base}/{p.name}" for p in public),
                     env={**FAST, "NETRC": str(netrc)})  # fmt: skip
    assert json.loads(broken.stdout.strip().splitlines()[-1])["indexed"] == 2, broken.stderr[-2000:]
    assert broken.stderr.count(f"cannot read the netrc file {netrc}") == 1 and "fetching without its credentials" in broken.stderr
    re = other
    assert SECRET not in re.stdout + re.stderr + broken.stdout + broken.stderr


def test_redirects_keep_credentials_on_their_host_and_never_leave_http(model_dir, web, tmp_path):
    base, root = web
    names = sorted(p.name for p in root.iterdir() if p.suffix == ".png")
    host = base.removeprefix("http://")
    urls = [f"http://user:{SECRET}@{host}/redirect-{kind}/{names[i]}" for i, kind in enumerate(("same", "other", "file"))]
    (tmp_path / "urls.txt").write_text("\n".join(urls))
    summary, out = _index(model_dir, str(tmp_path / "g.db"), "redirects", "--from-list", tmp_path / "urls.txt")
    reasons = dict(summary["skipped"])
    assert summary["indexed"] == 1  # the same host keeps the credentials
    assert reasons[f"http://{host}/redirect-other/{names[1]}"] == "HTTP 401 Unauthorized"  # another host never gets them
    assert "is not allowed" in reasons[f"http://{host}/redirect-file/{names[2]}"]  # urllib refuses it before any handler
    assert SECRET not in out.stdout + out.stderr


def test_odd_but_valid_inputs_and_unreasonable_patterns(photos, tmp_path):
    import io

    from clair_vec.errors import DatasetError
    from clair_vec.retrieval import remote

    with tarfile.open(tmp_path / "dots.tar", "w") as tar:  # what `tar -C dir -cf x.tar .` writes
        tar.add(photos[0], arcname="./a.png")
        tar.add(photos[1], arcname="sub/v1.2/b.png")
        info = tarfile.TarInfo("./a.cls")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"circle"))
    members = remote.shard_members(str(tmp_path / "dots.tar"))
    assert [(m.name.split("#")[1], m.label) for m in members] == [("./a.png", "circle"), ("sub/v1.2/b.png", "")]
    for bad in ("s-{5..1}.tar", "s-{0..99999999}.tar"):
        with pytest.raises(DatasetError, match="must run upwards over at most"):
            remote.expand_braces(bad)
    (tmp_path / "bom.csv").write_bytes("\ufeffurl,n\nhttp://x/a.png,1\n".encode())
    assert remote.read_list(str(tmp_path / "bom.csv")) == ["http://x/a.png"]
    from clair_vec.retrieval.sources import remote_sources

    labelled = remote_sources("http://cdn.example.com/render?src=/photos/cat/1.jpg", label_from_folder=True)
    assert labelled[0].label == ""  # the host and the query are not folders
    assert remote_sources("HTTPS://example.com/photos/cat/1.jpg", label_from_folder=True)[0].label == "cat"


def _shards(photos, folder: Path, n: int = 2) -> Path:
    """webdataset shards: each sample a key.png and its key.cls label."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        with tarfile.open(folder / f"shard-{s:04d}.tar", "w") as tar:
            for i, p in enumerate(photos[s::n]):
                key = f"sample{s:02d}{i:04d}"
                tar.add(p, arcname=f"{key}.png")
                label = p.parent.name.encode()
                info = tarfile.TarInfo(f"{key}.cls")
                info.size = len(label)
                import io

                tar.addfile(info, io.BytesIO(label))
    return folder


def test_webdataset_shards_and_parquet_files_give_the_hits_of_local_disk(model_dir, local, photos, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = _shards(photos, tmp_path / "shards")
    uri = str(tmp_path / "g.db")
    summary, _ = _index(model_dir, uri, "wds", shards / "shard-{0000..0001}.tar", "--label-from-folder")
    assert summary["indexed"] == len(photos)
    query, local_hits = local
    assert _hits(model_dir, uri, "wds", query) == local_hits
    dump = run_cli("search", "--model", str(model_dir), "--uri", uri, "--collection", "wds", "--domain", "sketch", str(query))
    hit = json.loads(dump.stdout.splitlines()[-1])["hits"][0]
    assert "shard-000" in hit["path"] and ".tar#sample" in hit["path"] and hit["label"] in ("circle", "square", "triangle", "star")

    re = run_cli("reindex", "--model", str(model_dir), "--uri", uri, "--from", "wds", "--to", "wds2", env=FAST)
    assert re.returncode == 0, re.stderr[-2000:]
    done = json.loads(re.stdout.strip().splitlines()[-1])  # the members are read again from their shards
    assert done["indexed"] == len(photos) and done["no_file"] == [] and done["skipped"] == []

    table = pa.table({"key": [f"k{i}" for i in range(len(photos))], "jpg": [p.read_bytes() for p in photos]})
    pq.write_table(table, tmp_path / "images.parquet")
    summary, _ = _index(model_dir, uri, "pq", tmp_path / "images.parquet")
    assert summary["indexed"] == len(photos)
    assert _hits(model_dir, uri, "pq", query) == local_hits

    missing = run_cli("index", "--model", str(model_dir), "--uri", uri, "--collection", "wds",
                      str(shards / "shard-{0000..0002}.tar"), env=FAST)  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "shard-0002.tar" in missing.stderr


def _ray_job(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    pytest.importorskip("ray")
    job = Path(__file__).resolve().parents[1] / "ray_jobs" / "index.py"
    # its own Ray, whose workers inherit this environment (the S3 endpoint and keys): the suite's
    # Ray head, which a plain ray.init() would join, has workers that never saw them
    env = {**os.environ, **FAST, **(env or {}), "RAY_ADDRESS": "local"}
    return subprocess.run([sys.executable, str(job), *args], capture_output=True, text=True, timeout=600, env=env)


def test_the_ray_job_reads_urls_shards_and_parquet_and_gives_the_hits_of_local_disk(model_dir, web, local, photos, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    base, root = web
    names = sorted(p.name for p in root.iterdir() if p.suffix == ".png")
    uri, query, local_hits = str(tmp_path / "g.db"), *local
    urls = [f"{base}/{n}" for n in names] + [f"{base}/missing/x.png"]
    out = _ray_job("--model", str(model_dir), "--uri", uri, "--collection", "urls", "--actors", "2", "--batch-size", "4", *urls)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("{"), out.stdout[-3000:]
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert s["indexed"] == len(photos) and s["skipped"] == [[f"{base}/missing/x.png", "HTTP 404 Not Found"]]
    assert _hits(model_dir, uri, "urls", query) == local_hits

    shards = _shards(photos, tmp_path / "shards")
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(len(photos))], "jpg": [p.read_bytes() for p in photos]}),
                   tmp_path / "images.parquet")  # fmt: skip
    out = _ray_job("--model", str(model_dir), "--uri", uri, "--collection", "mixed", "--label-from-folder",
                   str(shards / "shard-{0000..0001}.tar"), str(tmp_path / "images.parquet"), f"{base}/shard-9999.tar")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert s["indexed"] == len(photos) and len(s["duplicates"]) == len(photos)  # the parquet rows are the shards' images
    (gone, why), = s["skipped"]
    assert gone == f"{base}/shard-9999.tar" and "HTTP 404" in why
    assert _hits(model_dir, uri, "mixed", query) == local_hits

    refused = _ray_job("--model", str(model_dir), "--uri", uri, "--collection", "x", f"http://user:{SECRET}@{base[7:]}/{names[0]}",
                       str(shards / "shard-{0000..0003}.tar"))  # fmt: skip
    assert refused.returncode == 2 and "~/.netrc" in refused.stderr and SECRET not in refused.stdout + refused.stderr
    missing = _ray_job("--model", str(model_dir), "--uri", uri, "--collection", "x", str(shards / "shard-{0000..0003}.tar"))
    assert missing.returncode == 2 and "shard-0002.tar" in missing.stderr and "Started a local Ray" not in missing.stderr


def test_stored_bytes_come_back_for_thumbnails(photos, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clair_vec.retrieval import remote

    shards = _shards(photos, tmp_path / "shards", n=1)
    members = remote.shard_members(str(shards / "shard-0000.tar"))
    assert [m.read() for m in members] == [p.read_bytes() for p in photos]
    assert remote.stored_bytes(members[3].name) == photos[3].read_bytes()
    from clair_vec.retrieval.sources import expand

    assert [s.name for s in expand([shards / "shard-0000.tar"])] == [m.name for m in members]  # a Path works as a str does
    pq.write_table(pa.table({"url": ["a", "b"], "image": [photos[0].read_bytes(), photos[1].read_bytes()]}), tmp_path / "x.parquet")
    assert remote.stored_bytes(f"{tmp_path / 'x.parquet'}#b") == photos[1].read_bytes()
    assert remote.read_list(str(tmp_path / "x.parquet")) == ["a", "b"]
    with pytest.raises(Exception, match="no column 'nope'"):
        remote.read_list(str(tmp_path / "x.parquet"), column="nope")


def test_a_worker_that_leaves_by_os_exit_leaves_no_shard_spool_behind(web, photos, tmp_path):
    """Ray's and multiprocessing's workers end by ``os._exit``, which runs no atexit hook: a shard
    read whole (as the Ray listing task reads it) and a shard that cannot be fetched must each
    leave the temporary folder as they found it."""
    base, root = web
    shutil.copy(_shards(photos, tmp_path / "shards", n=1) / "shard-0000.tar", root / "spool-0000.tar")
    with tarfile.open(root / "spool-empty.tar", "w") as tar:  # a shard of no images is downloaded too
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    spool = tmp_path / "tmp"
    spool.mkdir()
    script = (
        "import atexit, os, sys\n"
        "from clair_vec.retrieval import remote\n"
        "hooks = atexit._ncallbacks()\n"
        "for _ in range(3):\n"
        f"    got = remote.shard_images({base + '/spool-0000.tar'!r})\n"
        f"assert remote.shard_images({base + '/spool-empty.tar'!r}) == []\n"
        "assert atexit._ncallbacks() == hooks, 'an exit hook a download'\n"
        "assert len(got) == %d and all(isinstance(b, bytes) for _, b in got), got\n"
        "try:\n"
        f"    remote.shard_members({base + '/missing-0000.tar'!r})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "sys.stdout.flush()\n"
        "os._exit(0)\n"
    ) % len(photos)
    env = {**os.environ, "TMPDIR": str(spool)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DatasetError"
    assert sorted(p.name for p in spool.iterdir()) == []


def test_a_shard_written_again_or_a_download_cleaned_away_still_gives_the_right_bytes(web, photos, tmp_path):
    """Thumbnails read shard members by cached offsets: a local shard written again must not give
    another image's bytes at the old offsets, and a downloaded copy that a /tmp cleaner removed is
    downloaded again rather than a 500."""
    from clair_vec.retrieval import remote

    shards = _shards(photos, tmp_path / "shards", n=1)
    local = str(shards / "shard-0000.tar")
    names = [m.name for m in remote.shard_members(local)]
    assert remote.stored_bytes(names[3]) == photos[3].read_bytes()
    with tarfile.open(local, "w") as tar:  # the same keys, other images
        for i, p in enumerate(reversed(photos)):
            tar.add(p, arcname=f"sample00{i:04d}.png")
    assert remote.stored_bytes(names[3]) == list(reversed(photos))[3].read_bytes()
    base, root = web
    shutil.copy(local, root / "clean-0000.tar")
    name = f"{base}/clean-0000.tar#sample000002.png"
    assert remote.stored_bytes(name) == list(reversed(photos))[2].read_bytes()
    spool = remote._SPOOL[os.getpid()]
    for f in os.listdir(spool):  # what a /tmp cleaner does to a long-running service
        os.remove(os.path.join(spool, f))
    assert remote.stored_bytes(name) == list(reversed(photos))[2].read_bytes()


# ---------------------------------------------------------------------- S3 on loopback
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server() -> str | None:
    found = shutil.which("moto_server")
    if found:
        return found
    for candidate in Path("/root/.pyenv/versions").glob("*/bin/moto_server"):
        return str(candidate)
    return None


@pytest.fixture(scope="module")
def s3(photos):
    binary = _moto_server()
    if binary is None:
        pytest.skip("no S3 server here: pip install 'moto[server]' provides moto_server")
    port = _free_port()
    proc = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_REGION": "us-east-1"}  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        # the server's own Python (moto brings boto3) uploads: Arrow's streams use multipart uploads,
        # which moto's server does not complete
        upload = ("import boto3, sys, pathlib\n"
                  "s3 = boto3.client('s3', endpoint_url=sys.argv[1])\n"
                  "s3.create_bucket(Bucket='gallery')\n"
                  "for p in sys.argv[2:]:\n"
                  "    q = pathlib.Path(p)\n"
                  "    s3.put_object(Bucket='gallery', Key=f'photos/{q.parent.name}/{q.name}', Body=q.read_bytes())\n"
                  "s3.put_object(Bucket='gallery', Key='photos/README.txt', Body=b'not an image')\n")  # fmt: skip
        done = subprocess.run([str(Path(binary).with_name("python")), "-c", upload, env["AWS_ENDPOINT_URL"], *map(str, photos)],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        yield env
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_s3_prefix_gives_the_hits_of_local_disk(model_dir, s3, local, photos, tmp_path):
    uri = str(tmp_path / "g.db")
    summary, out = _index(model_dir, uri, "s3", "s3://gallery/photos/", "--label-from-folder", env=s3)
    assert summary["indexed"] == len(photos) and summary["skipped"] == []
    assert summary["ignored"] == [["s3://gallery/photos/README.txt", "not an image file (by its name)"]]
    query, local_hits = local
    assert _hits(model_dir, uri, "s3", query) == local_hits
    assert SECRET not in out.stdout + out.stderr
    ray = _ray_job("--model", str(model_dir), "--uri", uri, "--collection", "s3ray", "--actors", "2", "s3://gallery/photos/",
                   "s3://nobucket/x/", env={**s3, "CLAIR_VEC_FETCH_TIMEOUT": "30"})  # fmt: skip  # 32 fetches at once on a busy box
    assert ray.returncode == 0, ray.stderr[-3000:]
    s = json.loads(ray.stdout.strip().splitlines()[-1])
    assert s["indexed"] == len(photos), s
    assert s["ignored"] == [["s3://gallery/photos/README.txt", "not an image file (by its name)"]]
    assert s["skipped"] == [["s3://nobucket/x/", "s3://nobucket/x/: no such bucket or prefix"]]
    assert _hits(model_dir, uri, "s3ray", query) == local_hits and SECRET not in ray.stdout + ray.stderr
    no_bucket = run_cli("index", "--model", str(model_dir), "--uri", uri, "--collection", "s3", "s3://nobucket/x/",
                        env={**FAST, **s3})  # fmt: skip
    assert no_bucket.returncode == 2 and no_bucket.stderr.count("\n") == 1 and "s3://nobucket/x/" in no_bucket.stderr
    closed = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "AWS_EC2_METADATA_DISABLED": "true"}
    down = run_cli("index", "--model", str(model_dir), "--uri", uri, "--collection", "s3", "s3://gallery/photos/",
                   env={**FAST, **closed})  # fmt: skip
    assert down.returncode == 2 and down.stderr.count("\n") == 1 and "cannot list it" in down.stderr, down.stderr
