"""No secret is ever shown: a password planted in a database URI and a token planted in the
environment are searched for in every output of a failure run of every entry point (messages,
exit output with logging on, exceptions and their tracebacks, service answers)."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from conftest import run_cli

import clair_vec
from clair_vec.errors import ClairVecError

PASSWORD = "Planted-Pw-5d9e1"
TOKEN = "planted-token-7f3a2c"
DEAD = f"http://root:{PASSWORD}@127.0.0.1:9"  # nothing listens on port 9
ENV = {"CLAIR_VEC_MILVUS_TOKEN": TOKEN, "MILVUS_TOKEN": TOKEN, "CLAIR_VEC_QDRANT_API_KEY": TOKEN, "QDRANT_API_KEY": TOKEN}
ROOT = Path(__file__).resolve().parents[1]


def leaks(text: str) -> list[str]:
    return [s for s in (PASSWORD, TOKEN) if s in text]


@pytest.mark.parametrize(
    "args",
    [
        ["index", "--collection", "g", "IMAGES"],
        ["search", "--collection", "g", "--domain", "sketch", "QUERY"],
        ["search", "--collection", "g", "--text", "heart"],
        ["serve", "--collection", "g", "--port", "9"],
        ["reindex", "--from", "g", "--to", "g2"],
        ["compare", "g", "g2", "--queries", "IMAGES", "--domain", "sketch"],
        ["alias", "set", "live", "g"],
        ["alias", "list"],
    ],
    ids=lambda a: "-".join(a[:2]),
)
@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_every_command_failing_on_a_database_shows_no_secret(args, backend, model_dir, shapes_root):
    args = [str(shapes_root / "photo" / "heart") if a == "IMAGES" else str(shapes_root / "sketch" / "heart" / "0000.png")
            if a == "QUERY" else a for a in args]  # fmt: skip
    model = {"alias": [], "compare": ["--old-model", str(model_dir), "--new-model", str(model_dir)]}.get(
        args[0], ["--model", str(model_dir)])
    out = run_cli("-v", *args, *model, "--backend", backend, "--uri", DEAD, env=ENV, timeout=240)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert leaks(out.stdout + out.stderr) == [], (out.stdout + out.stderr)[-3000:]
    assert "127.0.0.1:9" in out.stderr  # the address is still there to debug with, without its credentials


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_a_server_address_typed_without_a_scheme_is_refused_without_its_password(backend, model_dir, tmp_path):
    out = run_cli("-v", "search", "--collection", "g", "--text", "heart", "--model", str(model_dir), "--backend", backend,
                  "--uri", f"root:{PASSWORD}@127.0.0.1:9", cwd=tmp_path, timeout=240)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "holds credentials but no scheme" in out.stderr and "127.0.0.1:9" in out.stderr
    assert leaks(out.stdout + out.stderr) == [] and list(tmp_path.iterdir()) == []  # no store folder named after it


def test_the_library_exceptions_and_their_tracebacks_show_no_secret(model_dir, shapes_root, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    for backend in ("milvus", "qdrant"):
        with pytest.raises(ClairVecError) as err:
            clair_vec.search("g", [shapes_root / "sketch" / "heart" / "0000.png"], domain="sketch", model=model_dir,
                             backend=backend, uri=DEAD)  # fmt: skip
        text = "".join(traceback.format_exception(err.value)) + repr(err.value)
        assert leaks(text) == [], text[-3000:]


def test_the_ray_index_job_shows_no_secret(model_dir, shapes_root):
    out = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "index.py"), "-v", "--model", str(model_dir), "--collection", "g",
                          "--uri", DEAD, str(shapes_root / "photo" / "heart")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    assert leaks(out.stdout + out.stderr) == [], (out.stdout + out.stderr)[-3000:]


def test_a_running_service_shows_its_database_password_nowhere(model_dir, shapes_root, tmp_path):
    """`clair-vec serve` on a live server reached with a password in its URI: the password is in no
    answer of any route (errors, metrics, the page included) and in none of the service's log, and
    guessing it earns the same answer as any other guess."""
    live = os.environ.get("MILVUS_URI")
    if not live:
        pytest.skip("MILVUS_URI is not set: run through `make test` (tests/servers.py starts a Milvus 2.3.5 server)")
    import httpx
    from servers import free_port

    uri = live.replace("http://", f"http://root:{PASSWORD}@")  # a server without authentication takes any
    collection = f"secrets_{os.getpid()}"
    clair_vec.index(collection, [shapes_root / "photo" / "heart"], model=model_dir, uri=uri, progress=False)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "-v", "serve", "--model", str(model_dir), "--collection",
                             collection, "--uri", uri, "--port", str(port), "--docs"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV})  # fmt: skip
    bodies: list[str] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            for _ in range(240):
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                __import__("time").sleep(0.5)
            sketch = (shapes_root / "sketch" / "heart" / "0000.png").read_bytes()
            answers = [c.get(p) for p in ("/", "/info", "/labels", "/collections", "/healthz", "/readyz", "/metrics",
                                          "/openapi.json", f"/similar/{PASSWORD}", f"/images/{PASSWORD}", "/nope")]  # fmt: skip
            answers += [c.post("/search", files={"image": ("q.png", sketch, "image/png")}, data={"domain": "sketch"}),
                        c.post("/search", json={"text": PASSWORD}), c.post("/search", json={"like": [PASSWORD]}),
                        c.post("/search", content=b"{", headers={"content-type": "application/json"})]  # fmt: skip
            bodies = [f"{a.status_code} {a.headers} {a.text}" for a in answers]
    finally:
        proc.terminate()
        log = proc.communicate(timeout=60)[0]
        with clair_vec.get_backend("milvus", live) as be:
            be.drop_collection(collection)
    assert any(b.startswith("200") for b in bodies)
    not_sent = [bodies[i] for i in (*range(8), 10, 11, 14)]  # requests that did not hold the password
    assert [b for b in not_sent if PASSWORD in b] == []
    assert not any("***" in b for b in bodies), "a masked echo would tell a guesser which guess was right"
    assert leaks(log) == [], log[-3000:]
