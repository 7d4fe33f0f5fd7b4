"""The search page in a real browser: Debian's chromium driven by Playwright, against `clair-vec
serve` running as its own process on an index another process wrote.

Draws a stroke, types a word, refines with "more like this", filters by label, uploads an image
(and sees it on the canvas), hits an error (and sees the old results go), enlarges a hit, and does
it on a phone-sized screen and behind an API key. Screenshots are saved as artifacts in
``$CLAIR_VEC_ARTIFACTS`` (default: the test's temporary directory); the README's pictures are the
same page serving the model `make demo` trains.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from conftest import UNSEEN, run_cli
from servers import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser
HEART = ((110, 60), (60, 110), (100, 190), (160, 250), (220, 190), (260, 110), (210, 60), (160, 100))
KEY = "browser-key-31337"


def _serve(model_dir, store: str, work: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(work / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "serve", "--model", str(model_dir), "--collection", "gallery",
                             "--uri", store, "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT,
                            env={k: v for k, v in os.environ.items() if k != "CLAIR_VEC_API_KEY"})  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("clair-vec serve did not become ready:\n" + (work / f"serve-{port}.log").read_text()[-3000:])
        time.sleep(0.5)


@pytest.fixture(scope="module")
def gallery_store(model_dir, shapes_root, tmp_path_factory):
    """`clair-vec index` in its own process, tagging zero-shot over the unseen class names too."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (`make browser` or `apt-get install chromium`)")
    pytest.importorskip("playwright")
    work = tmp_path_factory.mktemp("served")
    labels = work / "labels.txt"
    labels.write_text("\n".join(UNSEEN) + "\n")
    store = str(work / "gallery.db")
    folders = [str(shapes_root / "photo" / c) for c in UNSEEN]
    out = run_cli("index", "--model", str(model_dir), "--collection", "gallery", "--uri", store, "--label-from-folder",
                  "--labels", str(labels), *folders)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return store, work


@pytest.fixture(scope="module")
def served(model_dir, gallery_store):
    store, work = gallery_store
    proc, url = _serve(model_dir, store, work)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])  # fmt: skip
        yield b
        b.close()


def open_page(browser, url: str, outside: list[str], **context):
    """A page in a new browser context (its own storage), or, given ``context=``, in that one."""
    page = (context.pop("context", None) or browser.new_context(**context)).new_page()

    def only_local(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:  # the page must not load anything from outside (a CDN would not be reachable)
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(url)
    return page


def draw(page, points=HEART) -> None:
    box = page.locator("#pad").bounding_box()
    sx, sy = box["width"] / 320, box["height"] / 320
    page.mouse.move(box["x"] + 160 * sx, box["y"] + 100 * sy)
    page.mouse.down()
    for x, y in points:
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=4)
    page.mouse.up()


def wait_results(page, count: int | None = None) -> list[str]:
    cond = f"document.querySelectorAll('#grid .hit img').length === {count}" if count else "document.querySelectorAll('#grid .hit img').length > 0"
    page.wait_for_function(f"() => {cond} && [...document.querySelectorAll('#grid .hit img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=60_000)  # fmt: skip
    return page.locator("#grid .hit .cap b").all_inner_texts()


def ids_on(page) -> list[str]:
    return page.eval_on_selector_all("#grid .hit", "els => els.map(e => e.dataset.id)")


def artifacts(tmp_path) -> Path:
    d = Path(os.environ.get("CLAIR_VEC_ARTIFACTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_draw_type_refine_filter_and_enlarge(served, browser, tmp_path):
    outside: list[str] = []
    page = open_page(browser, served, outside, viewport={"width": 1180, "height": 760})
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert page.locator("#domain").input_value() == "sketch"
    assert page.locator("#domain option").all_inner_texts() == ["clipart", "sketch", "photo"]
    # a drawing alone; releasing the stroke searches; every hit shows its score
    draw(page)
    labels = wait_results(page, 12)
    assert set(labels) <= set(UNSEEN) and "results in" in page.locator("#summary").inner_text()
    scores = [float(s) for s in page.locator("#grid .hit .score").all_inner_texts()]
    assert len(scores) == 12 and scores == sorted(scores, reverse=True)
    # the one-image query the page sends finds exactly what the plain API finds for the same drawing
    drawn = base64.b64decode(page.evaluate("() => document.getElementById('pad').toDataURL('image/png')").split(",")[1])
    api = httpx.post(served + "search", files={"image": ("q.png", drawn, "image/png")}, data={"domain": "sketch", "top_k": "12"})
    assert [h["id"] for h in api.json()["hits"]] == ids_on(page)
    before = ids_on(page)
    # relevance feedback: "more like this" on the third hit refines the current query
    page.locator("#grid .hit").nth(2).locator("button.like").click()
    page.wait_for_selector("#refine .chip", timeout=30_000)
    page.wait_for_function("(b) => JSON.stringify([...document.querySelectorAll('#grid .hit')].map(e => e.dataset.id)) !== b",
                           arg=str(before).replace("'", '"'), timeout=60_000)  # fmt: skip
    wait_results(page)
    assert page.locator("#grid .hit.liked").count() >= 1
    # a word alone
    page.click("#clear")
    assert page.locator("#grid .hit").count() == 0
    page.fill("#text", UNSEEN[0])
    page.press("#text", "Enter")
    assert len(wait_results(page, 12)) == 12
    # the label filter on the page: every hit has that label
    page.select_option("#label", f"label:{UNSEEN[1]}")
    page.wait_for_function(f"() => [...document.querySelectorAll('#grid .hit .cap b')].every(b => b.textContent === '{UNSEEN[1]}')",
                           timeout=60_000)  # fmt: skip
    assert set(wait_results(page, 8)) == {UNSEEN[1]}
    # a hit enlarged
    page.locator("#grid .hit img").first.click()
    page.wait_for_function("() => document.getElementById('zoom').classList.contains('open') && "
                           "document.getElementById('zoomimg').naturalWidth > 0", timeout=30_000)  # fmt: skip
    page.screenshot(path=str(artifacts(tmp_path) / "serve-zoom.png"))
    page.keyboard.press("Escape")
    page.select_option("#label", "")
    page.click("#clear")
    draw(page)
    wait_results(page, 12)
    shot = artifacts(tmp_path) / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert outside == []


def test_an_upload_shows_on_the_canvas_and_an_error_clears_old_results(served, browser, shapes_root, tmp_path):
    outside: list[str] = []
    page = open_page(browser, served, outside, viewport={"width": 1180, "height": 760})
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    clipart = tmp_path / "heart_clipart.png"  # the file name says its domain: the page picks it
    shutil.copy(shapes_root / "clipart" / UNSEEN[3] / "0001.png", clipart)
    page.set_input_files("#file", str(clipart))
    wait_results(page, 12)
    assert page.locator("#domain").input_value() == "clipart"
    shown = page.evaluate("() => { const d = document.getElementById('pad').getContext('2d').getImageData(0, 0, 320, 320).data;"
                          " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 200 || d[i+1] < 200 || d[i+2] < 200) n++; return n; }")  # fmt: skip
    assert shown > 500  # the uploaded image is on the canvas, not the old drawing or a blank
    bad = tmp_path / "notes_sketch.png"
    bad.write_bytes(b"this is not a png")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error", timeout=30_000)
    assert page.locator("#grid .hit").count() == 0  # the previous results are gone, not left beside the error
    # a remembered choice: the domain picked last is the one a fresh page starts with
    page.select_option("#domain", "photo")
    again = open_page(browser, served, outside, context=page.context)  # the same browser profile
    again.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert again.locator("#domain").input_value() == "photo"
    again.select_option("#domain", "sketch")
    assert outside == []


def test_on_a_phone_the_results_show_without_scrolling(served, browser, tmp_path):
    outside: list[str] = []
    page = open_page(browser, served, outside, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                     is_mobile=True, has_touch=True)  # fmt: skip
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    draw(page)
    wait_results(page, 12)
    first = page.locator("#grid .hit").first.bounding_box()
    assert first["y"] + first["height"] / 2 < 844  # a result is on the first screen
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing spills sideways
    page.screenshot(path=str(artifacts(tmp_path) / "serve-phone.png"))
    assert outside == []


def test_behind_an_api_key_the_page_asks_once_and_keeps_it_for_the_tab(model_dir, gallery_store, browser, tmp_path):
    store, work = gallery_store
    copy = str(tmp_path / "keyed.db")  # the module's server holds the store: this server gets a copy
    shutil.copytree(store, copy)
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    proc, url = _serve(model_dir, copy, work, "--api-key-file", str(key_file))
    try:
        outside: list[str] = []
        page = open_page(browser, url, outside)
        page.wait_for_selector("#keybox.open", timeout=30_000)
        page.fill("#keyinput", "wrong")
        page.click("#keyform button")
        page.wait_for_function("() => document.getElementById('keyerr').textContent.includes('refused')", timeout=30_000)
        page.fill("#keyinput", KEY)
        page.click("#keyform button")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        draw(page)
        wait_results(page, 12)  # thumbnails too: they are fetched with the key
        page.reload()
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)  # the same tab: not asked again
        assert not page.locator("#keybox").evaluate("e => e.classList.contains('open')")
        assert outside == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
