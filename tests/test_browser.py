"""The search page in a real browser: Debian's chromium driven by Playwright, against `clair-vec
serve` running as its own process on an index another process wrote.

Draws a stroke on the canvas, waits for result thumbnails and checks each one loaded. A
screenshot of the page with results is saved as an artifact: ``$CLAIR_VEC_ARTIFACTS/serve.png``
(default: the test's temporary directory). The README's picture, docs/serve.png, is the same page
serving the model `make demo` trains, whose bootstrapped CLIP gives results worth looking at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import UNSEEN, run_cli
from servers import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(model_dir, shapes_root, tmp_path_factory):
    """`clair-vec index` in one process, then `clair-vec serve` in another."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (`make browser` or `apt-get install chromium`)")
    pytest.importorskip("playwright")
    work = tmp_path_factory.mktemp("served")
    store = str(work / "gallery.db")
    folders = [str(shapes_root / "photo" / c) for c in UNSEEN]
    out = run_cli("index", "--model", str(model_dir), "--collection", "gallery", "--uri", store, "--label-from-folder", *folders)
    assert out.returncode == 0, out.stderr
    port = free_port()
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "serve", "--model", str(model_dir), "--collection", "gallery",
                             "--uri", store, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("clair-vec serve did not become ready:\n" + (work / "serve.log").read_text()[-3000:])
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_draw_a_sketch_and_see_photos(served, tmp_path):
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 760})

            def only_local(route):
                if route.request.url.startswith(served):
                    route.continue_()
                else:  # the page must not load anything from outside (a CDN would not be reachable)
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(served)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            assert page.locator("#domain").input_value() == "sketch"
            assert page.locator("#domain option").all_inner_texts() == ["clipart", "sketch", "photo"]
            box = page.locator("#pad").bounding_box()
            # a heart-ish stroke; releasing the mouse searches
            page.mouse.move(box["x"] + 160, box["y"] + 100)
            page.mouse.down()
            for x, y in ((110, 60), (60, 110), (100, 190), (160, 250), (220, 190), (260, 110), (210, 60), (160, 100)):
                page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
            page.mouse.up()
            page.wait_for_selector("#grid .hit img", timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#grid .hit img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=60_000,
            )
            cards = page.locator("#grid .hit")
            assert cards.count() == 12  # the page's default top-k
            labels = page.locator("#grid .hit .cap b").all_inner_texts()
            assert set(labels) <= set(UNSEEN)
            assert "results in" in page.locator("#summary").inner_text()
            # undo removes the stroke; clear empties the results
            page.click("#clear")
            assert page.locator("#grid .hit").count() == 0
            artifacts = Path(os.environ.get("CLAIR_VEC_ARTIFACTS", tmp_path))
            artifacts.mkdir(parents=True, exist_ok=True)
            # redraw for the screenshot, then keep it as the artifact
            page.mouse.move(box["x"] + 160, box["y"] + 100)
            page.mouse.down()
            for x, y in ((110, 60), (60, 110), (100, 190), (160, 250), (220, 190), (260, 110), (210, 60), (160, 100)):
                page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
            page.mouse.up()
            page.wait_for_function(
                "() => document.querySelectorAll('#grid .hit img').length === 12 && "
                "[...document.querySelectorAll('#grid .hit img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=60_000,
            )
            shot = artifacts / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert outside == []
