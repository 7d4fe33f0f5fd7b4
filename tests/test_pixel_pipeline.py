"""The embedding pipeline: decoding off the encode thread, in order, one bad image never failing
its batch; and the precision of the CLIP forward, recorded with the collection and used by its
queries."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from clair_vec.errors import CollectionMismatchError, CorruptImageError
from clair_vec.method.pixel_batches import autocast, default_batch_size, prepared_batches


def test_batches_come_back_in_order_with_bad_items_in_place():
    def prepare(i: int) -> int:
        time.sleep(0.001 * (7 - i % 7))  # later items finish first: order must not follow completion
        if i == 5:
            raise CorruptImageError("x5", "not an image")
        return i * 10

    got = list(prepared_batches(((s, list(range(s, min(s + 4, 11)))) for s in range(0, 11, 4)), prepare, workers=4,
                                capture=(CorruptImageError,)))  # fmt: skip
    assert [k for k, _ in got] == [0, 4, 8]
    flat = [x for _, out in got for x in out]
    assert [x for x in flat if not isinstance(x, Exception)] == [i * 10 for i in range(11) if i != 5]
    assert isinstance(flat[5], CorruptImageError) and flat[5].reason == "not an image"


def test_an_unexpected_error_is_raised_and_queued_work_is_dropped():
    started: list[int] = []

    def prepare(i: int) -> int:
        started.append(i)
        if i == 0:
            raise RuntimeError("boom")
        return i

    batches = ((s, [s]) for s in range(1000))
    with pytest.raises(RuntimeError, match="boom"):
        for _ in prepared_batches(batches, prepare, workers=1):
            pass
    assert len(started) <= 3  # the failing batch and the ones prepared ahead of it, not all 1000


def test_the_batch_ahead_is_decoded_while_the_caller_works():
    """While the caller holds batch 0, batch 1 is already being prepared by a worker thread."""
    names: dict[int, str] = {}
    ahead = threading.Event()

    def prepare(i: int) -> int:
        names[i] = threading.current_thread().name
        if i == 1:
            ahead.set()
        return i

    it = prepared_batches(((s, [s]) for s in range(3)), prepare, workers=2)
    next(it)
    assert ahead.wait(5), "batch 1 was not prepared while the caller held batch 0"
    assert list(it) == [(1, [1]), (2, [2])]
    assert all(n.startswith("clair-decode") for n in names.values()) and threading.current_thread().name not in names.values()


def test_threaded_preprocessing_gives_the_same_features_as_the_sequential_path(tiny_clip):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(9)]
    threaded = tiny_clip.encode_images(images, batch_size=4)
    sequential = tiny_clip.encode_images(torch.stack([tiny_clip.preprocess(im) for im in images]), batch_size=4)
    assert torch.equal(threaded, sequential)


def test_index_decodes_off_the_encode_thread(model_dir, shapes_root, tmp_path, monkeypatch):
    import clair_vec
    from clair_vec.retrieval import sources

    threads: set[str] = set()
    decode = sources.decode

    def spy(*a, **k):
        threads.add(threading.current_thread().name)
        return decode(*a, **k)

    monkeypatch.setattr(sources, "decode", spy)
    s = clair_vec.index("g", shapes_root / "photo" / "circle", model=model_dir, uri=str(tmp_path / "g.db"), progress=False)
    assert s.indexed == 8 and threads and all(t.startswith("clair-decode") for t in threads)


def test_precision_is_recorded_and_used_by_queries_from_a_new_handle(model_dir, shapes_root, tmp_path):
    from PIL import Image

    import clair_vec

    uri = str(tmp_path / "p.db")
    photos = sorted((shapes_root / "photo" / "star").iterdir())
    clair_vec.index("bf", photos, model=model_dir, uri=uri, precision="bf16", progress=False, device="cpu")
    clair_vec.index("fp", photos, model=model_dir, uri=uri, progress=False, device="cpu")
    with clair_vec.Retriever(model_dir, uri=uri, device="cpu") as r:
        assert r.collection("bf").extra["precision"] == "bf16" and r.collection("fp").extra["precision"] == "fp32"
        # the same image searched in each collection finds itself at cosine 1: the query was encoded
        # the way its gallery was, bf16 for one and fp32 for the other
        for name in ("bf", "fp"):
            (hits,) = r.search(name, [str(photos[0])], domain="photo", top_k=1)
            assert hits[0].payload["path"] == str(photos[0]) and hits[0].score == pytest.approx(1.0, abs=1e-4)
        # and the two precisions really differ (else this test could not fail); by how much depends on
        # the weights: this random tiny CLIP drifts far in bf16, a trained one (the demo's) by < 1e-4
        image = Image.open(photos[0]).convert("RGB")
        bf = r.model.embed_images([image], "photo", precision="bf16")
        fp = r.model.embed_images([image], "photo")
        assert not np.array_equal(bf, fp)
    with pytest.raises(CollectionMismatchError, match="indexed at precision bf16, not fp32: index at --precision bf16"):
        clair_vec.index("bf", photos, model=model_dir, uri=uri, precision="fp32", progress=False, device="cpu")


def test_precision_refusals_are_one_line_errors(model_dir, tmp_path):
    from conftest import run_cli

    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        with autocast("cpu", "fp16"):
            pass
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, int8"):
        with autocast("cpu", "int4"):
            pass
    with pytest.raises(ValueError, match="int8 runs on a CPU"):
        with autocast("cuda", "int8"):
            pass
    out = run_cli("index", "--model", str(model_dir), "--collection", "g", "--uri", str(tmp_path / "g.db"),
                  "--precision", "int4", str(tmp_path))  # fmt: skip
    assert out.returncode == 2 and "invalid choice: 'int4'" in out.stderr and "Traceback" not in out.stderr
    assert default_batch_size("cpu") == 64 and default_batch_size("meta") == 64


def test_encode_benchmark_measures_every_row(tmp_path):
    """A small run of the benchmark the README's table comes from: every row is measured."""
    from clair_vec.benchmarks.encode import format_table, make_images, run

    images = make_images(tmp_path / "img", 12)
    res = run(images, "clair-tiny", torch.device("cpu"), 4, 1, "bf16", milvus=True)
    rows = res["images_per_s"]
    assert set(rows) == {f"{k} {p}" for k in ("raw forward", "DataLoader-fed forward", "index path, no store",
                                                 "index into Milvus Lite") for p in ("fp32", "bf16")}  # fmt: skip
    assert all(v > 0 for v in rows.values()) and set(res["vs_dataloader"]) == {k for k in rows if k.startswith("index")}
    assert "| index into Milvus Lite bf16 |" in format_table(res)


@pytest.mark.parametrize("args, why", [
    (["encode", "--arch", "clair-tiny", "--precision", "int8", "--n", "4", "--no-milvus"], "ModifiedResNet) has none: use fp32"),
    (["encode", "--images", "{tmp}/empty", "--no-milvus"], "no image files in it"),
    (["encode", "--images", "{tmp}/absent", "--no-milvus"], "no such folder"),
    (["precision", "--workdir", "{tmp}/absent"], "is not a clair_vec checkpoint"),
])  # fmt: skip
def test_a_benchmark_given_what_it_cannot_run_says_so_in_one_line(args, why, tmp_path):
    import subprocess
    import sys

    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    device = ["--device", "cpu"] if argv[0] == "encode" else []
    out = subprocess.run([sys.executable, "-m", f"clair_vec.benchmarks.{argv[0]}", *argv[1:], *device],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1 and why in out.stderr
    assert out.stderr.startswith(f"benchmark {argv[0]}: error: ")


def test_service_benchmark_serves_a_gallery_at_the_precision_it_was_indexed_at():
    """A small run of the service benchmark at bf16, against a second service without the wait for
    returning clients: the gallery is indexed at bf16, the searches of both services all answer
    200 at each concurrency level, and every figure its tables need is there."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "clair_vec.benchmarks.service", "--clip-model", "clair-tiny", "--images", "24",
                          "--queries", "4", "--per-level", "8", "--requests", "16", "--rounds", "1", "--clients", "1", "2",
                          "--precision", "bf16", "--versus", "--batch-wait-share 0"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CLAIR_VEC_PROGRESS": "0", "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    indexed, floor, one, two, ratio, memory = rows
    assert indexed["indexed"] == 24 and indexed["precision"] == "bf16" and indexed["index_img_per_s"] > 0
    assert floor["floor_p50_ms"] > 0 and floor["ratio_to_floor"] > 0 and floor["raw_encode_img_per_s_batch_16"] > 0
    assert (one["clients"], two["clients"]) == (1, 2) and one["errors"] == two["errors"] == 0 and one["requests"] == 8
    assert one["mean_batch"] == 1 and 1 <= two["mean_batch"] <= 2 and 0 < two["clients_cpu_share"] < 1
    assert 0 < one["worker_busy"] <= 1.05 and 0 < two["worker_busy"] <= 1.05  # a share of the wall time
    for row in (one, two):
        assert set(row["versus"]) == {"qps", "p50_ms", "p99_ms", "mean_batch", "errors"} and row["versus"]["errors"] == 0
        assert row["qps_over_versus"] > 0 and row["qps_over_raw_encode"] > 0
    assert set(ratio) == {"qps_2_over_1"} and memory["memory_run"]["errors"] == 0 and memory["server_rss_mb_after"] > 0


def test_int8_quantises_a_vit_once_and_stays_close_to_fp32(shapes_root):
    """int8: a ViT's linear layers quantised (a CPU speed option), its features within a small
    angle of fp32's."""
    from PIL import Image

    from clair_vec.method.foundation import FoundationModel

    torch.manual_seed(0)
    fm = FoundationModel.load("ViT-B-32", None)
    q = fm.int8_visual()
    assert q is fm.int8_visual()  # made once
    # the attention's two projections as well as the MLP's two layers, in each of 12 blocks
    quantised = [m for m in q.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__]
    assert len(quantised) == 48
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in q.modules())
    assert any(isinstance(m, torch.nn.MultiheadAttention) for m in fm.model.visual.modules())  # the fp32 tower kept as it was
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in quantised)  # q, k and v each keep their own range
    images = [Image.open(p).convert("RGB") for p in sorted((shapes_root / "photo" / "star").iterdir())[:4]]
    q8, fp = fm.encode_images(images, precision="int8"), fm.encode_images(images)
    cos = (q8 * fp).sum(-1)
    assert not torch.equal(q8, fp) and cos.min() > 0.99, cos
    from clair_vec.method.foundation import INT8_SLICE

    pixels = torch.randn(INT8_SLICE + 5, 3, fm.image_size, fm.image_size)  # run in two slices, back in order
    q8, fp = fm.encode_pixels(pixels, precision="int8"), fm.encode_pixels(pixels)
    assert q8.shape == fp.shape and torch.equal((q8 @ fp.T).argmax(1), torch.arange(len(pixels)))


def test_int8_attention_is_multihead_attention_rewritten_around_two_linears():
    """Before quantising, each attention becomes two Linears around scaled_dot_product_attention:
    in fp32 the same function as PyTorch's MultiheadAttention, for self- and cross-attention, with
    and without a mask, batch first or not, so int8 changes only the arithmetic, not the model."""
    from clair_vec.method.linear_attention import LinearAttention

    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        torch.nn.init.normal_(mha.in_proj_bias)
        torch.nn.init.normal_(mha.out_proj.bias)
        mine = LinearAttention(mha)
        x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
        kv = torch.randn(3, 5, 32) if batch_first else torch.randn(5, 3, 32)
        causal = torch.triu(torch.full((7, 7), float("-inf")), diagonal=1)
        blocked = torch.rand(7, 5) < 0.3
        blocked[:, 0] = False  # every query keeps one key
        with torch.no_grad():
            for q, k, mask in ((x, x, None), (x, x, causal), (x, kv, None), (x, kv, blocked)):
                want = mha(q, k, k, need_weights=False, attn_mask=mask)[0]
                got, weights = mine(q, k, k, need_weights=False, attn_mask=mask)
                assert weights is None and torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        heads_first = torch.zeros(3 * 4, 7, 7)  # a mask per batch item and head, as MultiheadAttention takes it
        heads_first[1::2, :, 3] = float("-inf")
        with torch.no_grad():
            want = mha(x, x, x, need_weights=False, attn_mask=heads_first)[0]
            assert torch.allclose(mine(x, x, x, attn_mask=heads_first)[0], want, atol=1e-5)


def test_int8_rewrites_a_whole_vit_exactly_and_leaves_what_it_cannot_reproduce():
    """The rewrite alone (before any quantisation) leaves a ViT's output as it was; an attention
    with learned key/value bias rows is left alone, and a tower whose code cannot run quantised
    layers is refused before any image is indexed."""
    import copy

    from clair_vec.method.foundation import FoundationModel
    from clair_vec.method.int8_encoder import int8_vision_tower
    from clair_vec.method.linear_attention import LinearAttention, attention_as_linears

    fm = FoundationModel.load("ViT-B-32", None, seed=0)
    rewritten = copy.deepcopy(fm.model.visual).eval()
    assert attention_as_linears(rewritten) == 12
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(rewritten(x), fm.model.visual(x), atol=1e-4)

    odd = torch.nn.Sequential(torch.nn.MultiheadAttention(16, 2, add_bias_kv=True), torch.nn.MultiheadAttention(16, 2, add_zero_attn=True))
    assert attention_as_linears(odd) == 0 and not any(isinstance(m, LinearAttention) for m in odd.modules())

    class ReadsItsWeight(torch.nn.Module):  # as timm's EVA does: x @ proj.weight, a method once quantised
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) @ self.proj.weight.T

    with pytest.raises(ValueError, match="does not run with its linear layers quantised"):
        int8_vision_tower(ReadsItsWeight(), "eva-like", 8)


def test_cpu_bf16_runs_a_vit_with_its_attention_as_linears_that_share_its_weights():
    """bf16 on a CPU runs the tower with each MultiheadAttention as two Linears: under autocast,
    MultiheadAttention projects through a batched matmul that copies on every call (ViT-B-32 ran
    2x to 15x slower than fp32 at 2 to 32 images a batch). The view shares every weight with the
    tower, computes what it computes, and the batched matmul is gone from the forward."""
    from torch.profiler import ProfilerActivity, profile

    from clair_vec.method.foundation import FoundationModel
    from clair_vec.method.linear_attention import LinearAttention

    fm = FoundationModel.load("clair-tiny-vit", None, seed=0)
    view = fm.cpu_bf16_visual()
    assert view is not fm.model.visual and fm.cpu_bf16_visual() is view  # made once
    assert sum(isinstance(m, LinearAttention) for m in view.modules()) == 4
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in view.modules())
    own = {p.data_ptr() for p in fm.model.visual.parameters()}
    assert {p.data_ptr() for p in view.parameters()} == own  # shared, not copied
    x = torch.randn(2, 3, fm.image_size, fm.image_size)

    def ops(fn) -> tuple[torch.Tensor, dict[str, int]]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fn()
        return out, {e.key: e.count for e in prof.key_averages()}

    got, ran = ops(lambda: fm.encode_pixels(x, precision="bf16"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, before = ops(lambda: torch.nn.functional.normalize(fm.model.encode_image(x).float(), dim=-1))
    assert before.get("aten::bmm", 0) == 4 and ran.get("aten::bmm", 0) == 0  # one per layer before, none now
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.999
    assert torch.nn.functional.cosine_similarity(got, fm.encode_pixels(x)).min() > 0.99  # and near fp32
    resnet = FoundationModel.load("clair-tiny", None, seed=0)
    assert resnet.cpu_bf16_visual() is resnet.model.visual  # no MultiheadAttention: nothing to rewrite


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_a_vit_gallery_indexed_in_one_process_is_searched_at_its_precision_in_another(precision, shapes_root, tmp_path):
    """The shipped small ViT (clair-tiny-vit), indexed at int8 (quantised) or bf16 (on a CPU, its
    attention rewritten) by `clair-vec index`, then searched by `clair-vec search` in a new
    process: each photo finds itself first (queries are encoded the gallery's way too), an fp32
    run into the collection is refused, and PyTorch's quantisation warnings do not reach the
    user's terminal."""
    import json

    from conftest import run_cli

    from clair_vec.benchmarks.models import random_model

    model = random_model("clair-tiny-vit", tmp_path / "model")
    photos = [str(p) for p in sorted((shapes_root / "photo" / "star").iterdir())[:6]]
    where = ("--model", model, "--collection", "g", "--uri", str(tmp_path / "g.db"))
    made = run_cli("index", *where, "--domain", "photo", "--precision", precision, *photos)
    assert made.returncode == 0, made.stderr
    assert "Warning" not in made.stderr and "deprecated" not in made.stderr, made.stderr
    found = run_cli("search", *where, "--domain", "photo", "--top-k", "1", *photos)
    assert found.returncode == 0 and "Warning" not in found.stderr, found.stderr
    hits = [json.loads(line)["hits"][0] for line in found.stdout.splitlines()]
    assert [h["path"] for h in hits] == photos and all(h["score"] > 0.999 for h in hits), hits
    mixed = run_cli("index", *where, "--domain", "photo", "--precision", "fp32", str(shapes_root / "photo" / "heart" / "0000.png"))
    assert mixed.returncode == 2 and precision in mixed.stderr and "Traceback" not in mixed.stderr, mixed.stderr


def test_int8_is_recorded_like_any_precision_and_refused_where_it_would_change_nothing(model_dir, shapes_root, tmp_path):
    """The demo's stand-in CLIP is a small ResNet: nothing in it is int8-quantisable, so int8 would
    be fp32 under another name. It is refused; a ViT's collection records it (see above)."""
    import clair_vec

    photos = sorted((shapes_root / "photo" / "star").iterdir())
    with pytest.raises(ValueError, match="has none: use fp32"):
        clair_vec.index("q8", photos, model=model_dir, uri=str(tmp_path / "q.db"), precision="int8", progress=False, device="cpu")
    with clair_vec.get_backend("milvus", str(tmp_path / "q.db")) as be:
        assert not be.has_collection("q8")  # refused before anything was written
