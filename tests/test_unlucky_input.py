"""Unlucky input that used to go wrong silently: wide and rotated images, folders with things in
them that are not images, copies of the same file, label files as people write them, numbers out
of range, typos. Flows run as separate `clair-vec` processes where users run them that way."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from clair_vec.datasets.images import decode_image, walk_images
from clair_vec.errors import DatasetError
from clair_vec.retrieval.vocabulary import MAX_LABELS, read_labels, vocabulary


def png(im: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **params)
    return buf.getvalue()


def shape_image(size: int = 64) -> np.ndarray:
    """An asymmetric grey shape (a rotated copy must differ from it)."""
    a = np.full((size, size), 230, np.uint8)
    a[8:20, 8 : size - 8] = 20  # a bar near the top
    a[20 : size - 8, 8:16] = 90  # a leg on the left
    return a


def test_a_16_bit_png_decodes_like_its_8_bit_twin():
    eight = shape_image()
    wide = Image.fromarray(eight.astype(np.uint16) * 257)
    assert wide.mode == "I;16"
    got = np.asarray(decode_image(png(wide), "wide.png"))
    want = np.asarray(decode_image(png(Image.fromarray(eight)), "eight.png"))
    np.testing.assert_array_equal(got, want)  # PIL's own convert("RGB") made every pixel 255
    buf = io.BytesIO()
    Image.fromarray(eight.astype(np.int32) * 257, "I").save(buf, "TIFF")  # 32-bit integer pixels holding 16-bit values
    np.testing.assert_array_equal(np.asarray(decode_image(buf.getvalue(), "int.tif")), want)


def test_exif_orientation_is_applied_and_transparency_lies_on_white():
    upright = Image.fromarray(shape_image()).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes: pixels sideways + a tag
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    got = decode_image(png(stored, exif=exif), "phone.png")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(upright))
    assert not np.array_equal(np.asarray(decode_image(png(stored), "untagged.png")), np.asarray(upright))
    sketch = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # a black stroke on a transparent background
    sketch.putpixel((5, 5), (0, 0, 0, 255))
    rgb = np.asarray(decode_image(png(sketch), "sketch.png"))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[5, 5].tolist() == [0, 0, 0]


def test_a_rotated_upload_finds_what_the_upright_image_finds(model_dir, shapes_root, tmp_path):
    """Through the service: the upload path uses the same decode."""
    from fastapi.testclient import TestClient

    import clair_vec
    from clair_vec.retrieval.retriever import Retriever
    from clair_vec.service.app import create_app

    uri = str(tmp_path / "g.db")
    clair_vec.index("g", [shapes_root / "photo" / "heart", shapes_root / "photo" / "arrow"], model=model_dir, uri=uri,
                    progress=False)  # fmt: skip
    upright = Image.open(shapes_root / "sketch" / "arrow" / "0000.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 270 degrees clockwise to display
    rotated = png(upright.transpose(Image.Transpose.ROTATE_270), exif=exif)
    with Retriever(model_dir, uri=uri) as r:
        client = TestClient(create_app(r, "g"))
        a = client.post("/search", files={"image": ("a.png", png(upright))}, data={"domain": "sketch"}).json()["hits"]
        b = client.post("/search", files={"image": ("b.png", rotated)}, data={"domain": "sketch"}).json()["hits"]
    assert [h["id"] for h in a] == [h["id"] for h in b]


def _unreadable_folder_listing(parent: Path, monkeypatch) -> dict[str, str]:
    """walk_images over ``parent`` when ``parent/locked`` cannot be read. Root reads every folder
    whatever its mode, so as root the listing of that one folder fails the way it fails for a user."""
    locked = str(parent / "locked")
    if os.geteuid() == 0:
        real = os.scandir

        def scandir(path="."):
            if os.fspath(path) == locked:
                raise PermissionError(13, "Permission denied", locked)
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    return dict(walk_images(parent).ignored)


def test_every_entry_that_is_not_indexed_is_reported_with_its_reason(tmp_path, monkeypatch):
    root = tmp_path / "walk"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "sub" / "ok.png")
    (root / "notes.txt").write_text("hello")
    os.mkfifo(root / "pipe.png")
    os.symlink(root / "gone.png", root / "dangling.png")
    os.symlink(root / "sub", root / "loop")
    (root / "locked").mkdir()
    listing = walk_images(root)
    assert [p.name for p in listing.files] == ["ok.png"]
    reasons = {Path(p).name: r for p, r in listing.ignored}
    assert reasons["notes.txt"].startswith("not an image file name (suffix '.txt'")
    assert reasons["pipe.png"] == "not a regular file: a FIFO (named pipe)"
    assert reasons["dangling.png"] == "a symbolic link whose target does not exist"
    assert "symbolic link to a folder, not followed" in reasons["loop"]
    # a folder this process cannot read
    (root / "locked").chmod(0)
    try:
        unreadable = _unreadable_folder_listing(root, monkeypatch)
    finally:
        (root / "locked").chmod(0o755)
    assert unreadable[str(root / "locked")].startswith("cannot read this folder (Permission denied")


def test_index_reports_ignored_entries_and_counts_duplicates(model_dir, shapes_root, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(shapes_root / "photo" / "heart", gallery)
    shutil.copyfile(gallery / "0000.png", gallery / "copy_of_0000.png")
    (gallery / "sidecar.json").write_text("{}")
    os.mkfifo(gallery / "stream.png")  # reading it would block forever
    common = ["--model", str(model_dir), "--collection", "g", "--uri", str(tmp_path / "g.db")]
    out = run_cli("index", *common, str(gallery))
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout.splitlines()[-1])
    assert (s["indexed"], s["already_present"]) == (8, 0)
    assert s["duplicates"] == [[str(gallery / "copy_of_0000.png"), str(gallery / "0000.png")]]
    assert {Path(p).name: r.split(":")[0] for p, r in s["ignored"]} == {"sidecar.json": "not an image file name (suffix '.json'; indexed",
                                                                      "stream.png": "not a regular file"}  # fmt: skip
    again = json.loads(run_cli("index", *common, str(gallery)).stdout.splitlines()[-1])
    assert (again["indexed"], again["already_present"], len(again["duplicates"])) == (0, 8, 1)  # 9 files, 8 images


def test_typos_and_empty_inputs_are_errors_not_empty_successes(model_dir, tmp_path):
    common = ["--model", str(model_dir), "--collection", "g", "--uri", str(tmp_path / "g.db")]
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("no images here")
    cases = {
        str(tmp_path / "photos_typo"): f"no such file or folder: {tmp_path / 'photos_typo'}",
        str(tmp_path / "empty"): "no images to index in " + str(tmp_path / "empty") + ": the folders are empty",
        str(tmp_path / "text"): "1 entries are not image files (" + str(tmp_path / "text" / "readme.txt") + ": not an image file",
    }
    for path, message in cases.items():
        out = run_cli("index", *common, path)
        assert out.returncode == 2, out.stdout
        assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "g.db").exists()  # refused before the store was touched
    # an empty folder with --prune is how a user clears records of files that were all deleted
    assert run_cli("index", *common, "--prune", str(tmp_path / "empty")).returncode == 0


def test_a_query_folder_is_one_query_per_image_and_never_cut_to_its_first_image(model_dir, shapes_root, tmp_path):
    import json

    import clair_vec
    from clair_vec.retrieval.queries import Part, Query, QueryError
    from clair_vec.retrieval.retriever import Retriever

    uri = str(tmp_path / "g.db")
    clair_vec.index("g", shapes_root / "photo" / "circle", model=model_dir, uri=uri, progress=False)
    (tmp_path / "empty").mkdir()
    folder = shapes_root / "sketch" / "heart"
    files = sorted(str(p) for p in folder.iterdir())
    common = ["search", "--model", str(model_dir), "--collection", "g", "--uri", uri, "--domain", "sketch", "--top-k", "3"]
    out = run_cli(*common, files[0], str(folder))
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and [r["query"] for r in rows] == [files[0], *files], out.stderr  # as the library's search
    assert rows[1]["hits"] == rows[0]["hits"] and rows[2]["hits"] != rows[0]["hits"]  # each file its own query
    shard = tmp_path / "queries.tar"
    with tarfile.open(shard, "w") as tar:  # a local webdataset shard is a listing too
        for f in files[:2]:
            tar.add(f, arcname=Path(f).name)
    out = run_cli(*common, str(shard))
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2, out.stderr
    out = run_cli(*common, str(tmp_path / "empty"))  # was an IndexError traceback
    assert out.returncode == 2 and "no query images in" in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = run_cli(*common, str(folder), "--text", "heart")  # one combined query has room for one image per part
    assert out.returncode == 2 and f"image {str(folder)!r} (sketch) is a folder: a query image is one image file" in out.stderr
    with Retriever(model_dir, uri=uri) as r, pytest.raises(QueryError, match="is a folder"):
        r.query("g", Query.of(Part.image(str(folder), "sketch")))


def test_label_files_are_read_as_written_and_errors_name_the_file(model_dir, shapes_root, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\ufeffC#\n  heart  \n\n# a comment\n\\# not a comment\narrow\nheart\n", encoding="utf-8")
    assert read_labels(labels) == ["C#", "heart", "# not a comment", "arrow"]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("heart\ncaf\xe9\n".encode("latin-1"))
    common = ["--model", str(model_dir), "--collection", "g", "--uri", str(tmp_path / "g.db"), str(shapes_root / "photo" / "heart")]
    for path, message in ((bad, f"labels file '{bad}' is not valid UTF-8 (byte 0xe9 on line 2)"),
                          (tmp_path / "nope.txt", f"labels file '{tmp_path / 'nope.txt'}' does not exist")):  # fmt: skip
        out = run_cli("index", *common, "--labels", str(path))
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    with pytest.raises(DatasetError, match=f"has {MAX_LABELS + 1:,} labels; the limit is {MAX_LABELS:,}"):
        vocabulary([f"label {i}" for i in range(MAX_LABELS + 1)])
    with pytest.raises(DatasetError, match="is empty"):
        vocabulary(["", "  "])
    out = run_cli("index", *common, "--labels", str(labels))
    assert out.returncode == 0, out.stderr
    from clair_vec import get_backend

    with get_backend("milvus", str(tmp_path / "g.db")) as be:
        tags = {p["pseudo_label"] for _, p in be.records("g")}
    assert tags <= {"C#", "heart", "# not a comment", "arrow"} and tags  # the tags are the labels as written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index", "--batch-size", "-1"], "argument --batch-size: must be an integer from 1 to 4096, got -1"),
        (["index", "--batch-size", "0"], "argument --batch-size: must be an integer from 1 to 4096, got 0"),
        (["search", "--domain", "sketch", "--top-k", "20000"], "argument --top-k: must be an integer from 1 to 16384, got 20000"),
        (["search", "--domain", "sketch", "--top-k", "ten"], "argument --top-k: must be an integer from 1 to 16384, got 'ten'"),
        (["serve", "--port", "70000"], "argument --port: must be an integer from 1 to 65535, got 70000"),
        (["serve", "--replicas", "0"], "argument --replicas: must be an integer from 1 to 256, got 0"),
        (["serve", "--max-upload-mb", "-5"], "argument --max-upload-mb: must be a number above 0 and at most 1024, got -5"),
        # --k 0 printed "P@0": NaN, which no JSON parser takes, and --k -5 a negative precision
        (["evaluate", "--data", "d", "--k", "0"], "argument --k: must be an integer from 1 to 1000000, got 0"),
        (["evaluate", "--data", "d", "--samples", "-1"], "argument --samples: must be an integer from 0 to 1000, got -1"),
    ],
)
def test_numbers_out_of_range_are_refused_with_the_range(args, message, tmp_path):
    where = ["--collection", "g"] if args[0] != "evaluate" else []
    out = run_cli(args[0], "--model", str(tmp_path), *where, *args[1:], *(["x.png"] if args[0] in ("index", "search") else []))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_ray_index_job_refuses_bad_numbers_before_starting_ray(tmp_path):
    job = Path(__file__).resolve().parents[1] / "ray_jobs" / "index.py"
    out = subprocess.run([sys.executable, str(job), "--model", str(tmp_path), "--collection", "g", "--actors", "0", "x"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "argument --actors: must be an integer from 1 to 1024, got 0" in out.stderr


def test_stat_helpers_agree_with_the_walk(tmp_path):
    """A device node where the platform lets us make one: refused like a FIFO, never opened."""
    dev = tmp_path / "disk.png"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here ({exc})")
    reasons = dict(walk_images(tmp_path).ignored)
    assert reasons[str(dev)] == "not a regular file: a character device"
    code = textwrap.dedent(f"""
        import clair_vec.retrieval.sources as s
        (src,) = s.expand([{str(dev)!r}])
        print(src.problem)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "not a regular file: a character device"


@pytest.mark.parametrize(("typed", "meant"), [("qdrnt", "qdrant"), ("Milvus", "milvus"), ("QDRANT", "qdrant")])
def test_a_mistyped_backend_name_gets_did_you_mean(typed, meant, tmp_path):
    out = run_cli("alias", "--backend", typed, "--uri", str(tmp_path / "store"), "list")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"unknown backend {typed!r}; did you mean {meant!r}?" in out.stderr and "pip install" not in out.stderr


def test_a_backend_name_like_nothing_installed_suggests_installing_a_plugin(tmp_path):
    out = run_cli("alias", "--backend", "lancedb", "--uri", str(tmp_path / "store"), "list")
    assert out.returncode == 2 and "did you mean" not in out.stderr and "pip install clair-vec-lancedb" in out.stderr


def test_a_folder_given_as_clip_weights_is_one_line_naming_the_file_to_pass(shapes_root, tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "open_clip_model.safetensors").write_bytes(b"")
    out = run_cli("train", "--data", str(shapes_root), "--clip-model", "clair-tiny", "--clip-pretrained", str(tmp_path / "weights"),
                  "--out", str(tmp_path / "m"))  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "is a folder; pass the checkpoint file itself" in out.stderr and "open_clip_model.safetensors" in out.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(model_dir, shapes_root, tmp_path):
    """`clair-vec search ... | head -1`: the rest of the output has nowhere to go; no traceback."""
    import clair_vec

    uri = str(tmp_path / "g.db")
    clair_vec.index("g", [shapes_root / "photo" / "heart"], model=model_dir, uri=uri, progress=False)
    sketches = [str(p) for p in sorted((shapes_root / "sketch").rglob("*.png"))[:40]]
    cmd = [sys.executable, "-m", "clair_vec.cli", "search", "--model", str(model_dir), "--collection", "g", "--uri", uri,
           "--domain", "sketch", *sketches]  # fmt: skip
    search = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = search.stdout.readline()
    search.stdout.close()  # as head does after its line
    err = search.stderr.read().decode()
    search.wait(timeout=300)
    assert json.loads(first)["hits"] and "Traceback" not in err and "BrokenPipeError" not in err, err[-2000:]
    assert search.returncode in (0, 141)


def test_a_model_whose_clair_json_links_nowhere_names_the_link_target_unmasked(model_dir, tmp_path):
    """A dangling link was reported as "no clair.json", and a folder called like an assignment
    ("token=v2") was masked as a credential, hiding the very path the user has to fix."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (model / "clair.json").unlink()
    target = tmp_path / "token=v2" / "clair.json"
    (model / "clair.json").symlink_to(target)
    out = run_cli("search", "--model", str(model), "--uri", str(tmp_path / "g.db"), "--collection", "g", "--text", "circle")
    assert out.returncode == 2, out.stderr
    assert f"clair.json is a link to {str(target)!r}, which is not a file" in out.stderr, out.stderr
    assert "***" not in out.stderr and "Traceback" not in out.stderr


def test_a_path_component_shaped_like_an_assignment_is_not_a_credential():
    from clair_vec.store.redaction import scrub

    for path in ("/srv/models/token=v2/clair.json", r"C:\models\api_key=old\clair.json", "/models/v2-token=v2/clair.json"):
        assert scrub(path) == path
    # credentials in free text, options, URL paths and URIs are still masked
    assert scrub("password=hunter2 and token: abc") == "password=*** and token: ***"
    assert scrub("http://host:19530/password=hunter2xyz") == "http://host:19530/password=***"
    assert scrub("user=root/password=hunter2 /run/secrets/password: pw") == "user=root/password=*** /run/secrets/password: ***"
    assert scrub("http://root:Milvus@host:19530/?token=abc") == "http://***@host:19530/?token=***"
    # a URL that pathlib printed with one slash keeps its password masked; paths with an @ are not credentials
    assert scrub("folder 'http:/root:S3cret@127.0.0.1:1/data'") == "folder 'http:/***@127.0.0.1:1/data'"
    for path in ("C:/x@y", "D:/photos@2x/img.png", "file:/home@x", "local:/tmp@x", "note:/alice@example.com"):
        assert scrub(path) == path


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), a device that is always full")
def test_output_to_a_full_disk_is_one_line_not_a_traceback():
    """`clair-vec ... > file` on a full disk ended in an OSError traceback."""
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "clair_vec.cli", "backends"], stdout=full, stderr=subprocess.PIPE,
                             text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines() == [
        "clair-vec: error: no space left on the device (the output); free some space and run the same command again "
        "(what was written whole is kept)"], out.stderr  # fmt: skip


def test_an_os_error_that_is_not_the_operating_systems_keeps_its_own_words():
    """A certificate failure (errno 1) once read "not permitted"; a network error, its class name alone."""
    import errno
    import ssl
    import urllib.error

    from clair_vec.cli import os_problem

    assert os_problem(ssl.SSLCertVerificationError(1, "certificate verify failed")) == "certificate verify failed"
    assert os_problem(urllib.error.URLError("no route to host")) == "<urlopen error no route to host>"
    assert os_problem(OSError(errno.EACCES, "Permission denied", "/m/clair.pt")) == "permission denied (/m/clair.pt)"


def test_a_checkpoint_the_disk_refuses_is_said_as_a_full_disk_and_leaves_nothing(tmp_path, monkeypatch):
    """torch reports a failed write as a RuntimeError ("unexpected pos"): `train` and
    `bootstrap-clip` on a full disk ended in that traceback instead of the CLI's one line."""
    import errno
    import shutil

    import torch

    from clair_vec.cli import os_problem
    from clair_vec.method import tensor_files

    def failing_save(obj, path):
        Path(path).write_bytes(b"PK")  # the part torch wrote before the disk said no
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1536 vs 1428")

    monkeypatch.setattr(torch, "save", failing_save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(OSError) as full:
        tensor_files.save_tensor_file({"w": 1}, tmp_path / "out" / "clair.pt")
    assert full.value.errno == errno.ENOSPC and list((tmp_path / "out").iterdir()) == []  # no half-written file
    assert os_problem(full.value).startswith("no space left on the device (/")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=2**34))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # a failure the disk does not explain keeps its own words
        tensor_files.save_tensor_file({"w": 1}, tmp_path / "out" / "clair.pt")


def test_a_file_size_limit_is_one_line_for_a_checkpoint_and_for_an_embedded_store(model_dir, shapes_root, tmp_path):
    import resource

    def limit(size: int) -> Callable[[], None]:  # `ulimit -f`: a write past it fails with EFBIG (Python ignores SIGXFSZ)
        return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    code = ("import errno, sys, torch; from clair_vec.method.tensor_files import save_tensor_file\n"
            "try: save_tensor_file({'w': torch.zeros(2**20)}, sys.argv[1])\n"
            "except OSError as e: print(e.errno == errno.EFBIG)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.pt")], capture_output=True, text=True, timeout=120,
                         preexec_fn=limit(2**20))  # fmt: skip
    assert out.stdout.strip() == "True" and list(tmp_path.iterdir()) == [], out.stderr
    out = subprocess.run([sys.executable, "-m", "clair_vec.cli", "index", "--model", str(model_dir), "--collection", "g",
                          "--uri", str(tmp_path / "g.db"), str(shapes_root / "photo")],
                         capture_output=True, text=True, timeout=300, preexec_fn=limit(40 * 1024))  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "reached the largest size this process may write" in out.stderr.strip().splitlines()[-1]


def test_a_feature_cache_the_disk_refuses_does_not_stop_training(shapes_root, tiny_clip, tmp_path, monkeypatch, caplog):
    import errno

    from clair_vec.datasets.folders import scan_folder
    from clair_vec.training import features

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(features, "save_tensor_file", full)
    data = scan_folder(shapes_root, ["photo", "sketch"]).subset(classes=["circle", "heart"])
    got = features.extract_features(tiny_clip, data, n_views=1, seed=0, cache_dir=tmp_path / "cache", progress=False)
    assert set(got) == {"photo", "sketch"} and "was not written (No space left on device)" in caplog.text


def test_a_file_given_as_a_milvus_lite_store_is_one_line_that_says_what_it_is(model_dir, tmp_path):
    (tmp_path / "junk.db").write_text("not a store")
    out = run_cli("search", "--model", str(model_dir), "--collection", "g", "--uri", str(tmp_path / "junk.db"), "--text", "circle")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr  # the engine's own traceback too, before
    assert "it is a file that Milvus Lite did not make" in out.stderr.strip().splitlines()[-1]
    assert (tmp_path / "junk.db").read_text() == "not a store"


def test_serve_on_a_port_in_use_is_a_one_line_error_before_the_model_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # no model, no store: the address is checked first (uvicorn logged its own error and exited 3)
        out = run_cli("serve", "--model", str(tmp_path / "nowhere"), "--collection", "g", "--uri", str(tmp_path / "g.db"),
                      "--port", str(port), timeout=120)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == f"clair-vec: error: cannot listen on 127.0.0.1:{port}: another program is listening on it: stop it or pass another --port"
    assert not (tmp_path / "g.db").exists()
