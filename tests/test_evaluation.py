"""Evaluation that cannot leak, the selection's record in the CLI and the HTML report, zero-shot
tags from the user's own labels, and the CLI's help (the selection itself: test_selection.py)."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import UNSEEN, run_cli

import clair_vec
from clair_vec.errors import UnknownDomainError, ZeroShotLeakError
from clair_vec.evaluation.zero_shot import evaluate, hubness, mean_pairwise_cosine
from clair_vec.method.config import ClairConfig
from clair_vec.method.model import ClairModel


@pytest.fixture(scope="module")
def unsplit(shapes_root, tmp_path_factory):
    """The shapes data without split files: training holds classes out by its seed."""
    root = tmp_path_factory.mktemp("unsplit") / "data"
    shutil.copytree(shapes_root, root, ignore=shutil.ignore_patterns("*.txt"))
    return root


@pytest.fixture(scope="module")
def seed1_model(unsplit, tmp_path_factory):
    from clair_vec.training.job import train_local

    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=1, batch_size=48, seed=1)
    return train_local(unsplit, cfg, progress=False).save(tmp_path_factory.mktemp("m1") / "model")


def test_evaluate_scores_the_classes_the_checkpoint_held_out(seed1_model, unsplit):
    from clair_vec.datasets.folders import split_dataset

    model = ClairModel.load(seed1_model)
    held_out = model.record["unseen_classes"]
    assert held_out == split_dataset(unsplit, 1)[1].classes and held_out != split_dataset(unsplit, 0)[1].classes
    assert not set(held_out) & set(model.classes)
    assert set(model.record["validation_classes"]).isdisjoint(held_out)
    result = evaluate(seed1_model, unsplit, k=20)
    assert all(row["classes"] == held_out for row in result["rows"])
    assert result["classes_from"] == "the checkpoint's held-out classes"


def test_evaluate_refuses_a_split_that_would_score_trained_classes(seed1_model, unsplit, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(seed1_model, old)
    meta = json.loads((old / "clair.json").read_text())
    meta.pop("training")  # a checkpoint from before training recorded its split: evaluate falls back to seed 0
    (old / "clair.json").write_text(json.dumps(meta))
    with pytest.raises(ZeroShotLeakError, match=r"classes \[.*\] .* were seen in training"):
        evaluate(old, unsplit)
    out = run_cli("evaluate", "--model", str(old), "--data", str(unsplit))
    assert out.returncode == 2 and "refusing to evaluate" in out.stderr


def test_an_unknown_query_domain_fails_before_any_feature_is_computed(seed1_model, unsplit, monkeypatch):
    import clair_vec.evaluation.zero_shot as ev

    monkeypatch.setattr(ev, "extract_features", lambda *a, **k: pytest.fail("features were computed"))
    with pytest.raises(UnknownDomainError, match="'x-ray'"):
        evaluate(seed1_model, unsplit, query_domains=["x-ray"])
    with pytest.raises(ValueError, match="gallery domain"):
        evaluate(seed1_model, unsplit, query_domains=["photo"])


def test_diagnostics_measure_collapse_and_hubness():
    import numpy as np

    rng = np.random.default_rng(0)
    spread = rng.normal(size=(200, 64))
    assert abs(mean_pairwise_cosine(spread)) < 0.05
    collapsed = np.ones((50, 64)) + 0.01 * rng.normal(size=(50, 64))
    assert mean_pairwise_cosine(collapsed) > 0.99
    x = spread / np.linalg.norm(spread, axis=1, keepdims=True)
    brute = (x @ x.T)[~np.eye(200, dtype=bool)].mean()
    assert mean_pairwise_cosine(spread) == pytest.approx(brute, abs=1e-9)
    assert hubness(np.array([3, 3, 3, 1])) == 0.75 and hubness(np.arange(10)) == 0.1


def test_cli_train_records_the_selection_and_evaluate_writes_a_report(shapes_root, tmp_path):
    out = run_cli("train", "--data", str(shapes_root), "--out", str(tmp_path / "m"), "--clip-model", "clair-tiny",
                  "--clip-pretrained", "none", "--epochs", "2", "--batch-size", "48", "--seed", "3",
                  "--set", "inter_domain=prototype")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "shipped" in out.stdout.splitlines()[-1]
    meta = json.loads((tmp_path / "m" / "clair.json").read_text())
    assert meta["config"]["inter_domain"] == "prototype" and meta["config"]["seed"] == 3
    rec = meta["training"]
    assert rec["shipped"] in ("clair", "mapping_only", "raw_clip", "per_domain", "centred_mapping")
    assert set(rec["validation"]) == {"raw_clip", "mapping_only", "clair", "chosen", "metric"}
    assert len(rec["selection"]["folds"]) == 5 and all(len(f["curve"]) == 2 for f in rec["selection"]["folds"])
    assert len(rec["history"]) == rec["selection"]["epoch"] + 1 == 2  # the folds judge the schedule the final model runs
    assert set(rec["stats"]["domains"]) == {"clipart", "photo", "sketch"}
    assert "pseudo-label confidence filter: clipart dropped" in out.stdout
    report = tmp_path / "report"
    out = run_cli("evaluate", "--model", str(tmp_path / "m"), "--data", str(shapes_root), "--report", str(report), "--k", "20", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert all(abs(r["chance"] - 1 / len(r["classes"])) < 0.1 for r in rows)  # classes of similar size: a random ranking scores about 1/C
    assert {r["query"] for r in rows} == {"clipart", "sketch"}
    for r in rows:
        for method in ("raw_clip", "model"):
            assert {"mAP@all", "mAP@20", "P@100", "P@20", "mean_pairwise_cosine", "hubness"} <= set(r[method])
            assert 0 <= r[method]["hubness"] <= 1 and -1 <= r[method]["mean_pairwise_cosine"] <= 1
    check_report(report)


def test_a_report_the_disk_refuses_keeps_the_results_and_leaves_its_folder_as_it_was(model_dir, shapes_root, tmp_path,
                                                                                     monkeypatch, capsys):  # fmt: skip
    """A full disk under `evaluate --report` lost the printed results and left a 0-byte chart."""
    import errno

    pytest.importorskip("matplotlib")
    from clair_vec.cli import main
    from clair_vec.evaluation import report as report_module

    written = report_module._write

    def full(result, stage, *rest):
        written(result, stage, *rest)
        (stage / "training.png").write_bytes(b"")  # what the disk took of the last file before it said no
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "_write", full)
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["evaluate", "--model", str(model_dir), "--data", str(shapes_root), "--report", str(out), "--k", "20"]
    assert main(args) == 1
    printed = capsys.readouterr()
    assert "query → gallery" in printed.out and "sketch" in printed.out  # the results were printed first
    assert printed.err.strip() == (f"clair-vec: error: no space left on the device ({out}); free some space and run the "
                                   "same command again (what was written whole is kept)")  # fmt: skip
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # nothing half-written, nothing of the user's removed
    monkeypatch.undo()
    assert main(args) == 0 and (out / "notes.txt").read_text() == "mine"
    check_report(out)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.rows = 0
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "tr":
            self.rows += 1
        for key in ("href", "src"):
            if key in a:
                self.links.append(a[key])


def check_report(report: Path) -> None:
    page = _Page()
    page.feed((report / "index.html").read_text())
    assert page.rows == 1 + 2 * 2 + 1 + 2  # header + (raw CLIP, model) for two query domains; the selection, per domain
    text = (report / "index.html").read_text()
    assert "Model selection" in text and "5 folds of the seen classes" in text and "Pseudo-label confidence filter" in text
    assert all(not link.startswith(("http:", "https:", "//")) for link in page.links)  # self-contained
    for img in page.images:
        assert (report / img["src"]).is_file(), img["src"]
    srcs = [i["src"] for i in page.images]
    assert "metrics.png" in srcs and "training.png" in srcs
    hits = [i for i in page.images if "hit" in i.get("class", "")]
    assert len(hits) == 2 * 6 * 10  # 6 sample queries per domain, 10 hits each
    assert {i["class"] for i in hits} <= {"hit ok", "hit bad"} and any(i["class"] == "hit ok" for i in hits)


def test_zero_shot_tags_come_from_the_users_labels(model_dir, shapes_root, tmp_path):
    uri = str(tmp_path / "g.db")
    photos = [shapes_root / "photo" / c for c in UNSEEN]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(UNSEEN) + "\n")  # the user's own vocabulary, classes never trained on (read verbatim)
    out = run_cli("index", "--model", str(model_dir), "--collection", "g", "--uri", uri, "--labels", str(labels), *map(str, photos))
    assert out.returncode == 0, out.stderr
    from clair_vec import get_backend

    with get_backend("milvus", uri) as be:
        payloads = [p for _, p in be.records("g")]
    assert len(payloads) == 32
    assert {p["pseudo_label"] for p in payloads} <= set(UNSEEN)  # never a training class
    assert all(0 < p["confidence"] <= 1 for p in payloads)
    tagged = payloads[0]["pseudo_label"]
    hits = clair_vec.search("g", [shapes_root / "sketch" / "heart" / "0000.png"], domain="sketch", top_k=32,
                            filter={"pseudo_label": tagged}, model=model_dir, uri=uri)[0]  # fmt: skip
    assert hits and all(h.payload["pseudo_label"] == tagged for h in hits)
    assert len(hits) == sum(p["pseudo_label"] == tagged for p in payloads)
    with pytest.raises(ValueError, match="empty"):
        clair_vec.index("g", photos, model=model_dir, uri=uri, labels=[" ", ""], progress=False)


def test_every_cli_option_has_help_with_its_default():
    from clair_vec.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"train", "index", "search", "evaluate", "serve", "demo", "bootstrap-clip", "backends",
                                "reindex", "compare", "alias", "benchmark", "report"}
    actions = next(a for a in sub.choices["benchmark"]._actions if a.dest == "benchmark_command").choices
    assert set(actions) == {"list", "run"}
    commands = {**{n: p for n, p in sub.choices.items() if n != "benchmark"}, **{f"benchmark {n}": p for n, p in actions.items()}}
    for name, p in commands.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help, f"clair-vec {name} {action.option_strings or action.dest} has no help"
        text = p.format_help()
        assert "(default:" in text or name in ("backends", "report", "benchmark list"), name
        assert "(default: None)" not in text.replace("(None:", ""), f"clair-vec {name} shows a meaningless default"
    train, demo = sub.choices["train"], sub.choices["demo"]
    assert "--seed" in train.format_help() and "--seed" in demo.format_help()


def test_bootstrap_clip_command_trains_on_a_web_pool_in_its_domain_mix(tmp_path):
    from clair_vec.datasets.shapes import SHAPES, make_web_pool

    web = make_web_pool(tmp_path / "web", per_class=10, classes=SHAPES[:6], seed=1)
    out = run_cli("bootstrap-clip", "--data", str(web), "--out", str(tmp_path / "clip.pt"), "--steps", "3", "--batch-size", "8",
                  "--mix", "photo=0.5")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "--clip-pretrained" in out.stdout and "of 6 classes" in out.stdout and "photo 50%" in out.stdout
    from clair_vec.method.foundation import FoundationModel

    assert FoundationModel.load("clair-tiny", str(tmp_path / "clip.pt")).embed_dim > 0


def test_the_stand_in_clip_is_the_same_for_a_seed_with_two_threads(tmp_path, monkeypatch):
    # two CPU threads made torch pick kernels that sum in a varying order: a demo seed's stand-in,
    # and so its table, changed from run to run (40 steps apart by 0.02; too slow to show here, so
    # the steps are also checked to run under torch's deterministic kernels)
    import torch

    from clair_vec.training import bootstrap_clip as module

    seen: list[bool] = []
    real_bar = module.progress_bar

    class Recording:
        def __init__(self, **kw):
            self.bar = real_bar(**kw)

        def __enter__(self):
            self.inner = self.bar.__enter__()
            return self

        def __exit__(self, *exc):
            return self.bar.__exit__(*exc)

        def update(self, n):
            seen.append(torch.are_deterministic_algorithms_enabled())
            self.inner.update(n)

        def set_postfix(self, **kw):
            self.inner.set_postfix(**kw)

    monkeypatch.setattr(module, "progress_bar", Recording)

    from clair_vec.datasets.folders import scan_folder
    from clair_vec.datasets.shapes import SHAPES, make_web_pool
    from clair_vec.method.tensor_files import load_tensor_file
    from clair_vec.training.bootstrap_clip import bootstrap_clip

    pool = scan_folder(make_web_pool(tmp_path / "web", per_class=6, classes=SHAPES[:4], seed=1))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        made = [load_tensor_file(bootstrap_clip(pool, tmp_path / f"{n}.pt", steps=12, batch_size=32, seed=5, progress=False))
                for n in range(2)]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(made[0][k], made[1][k]) for k in made[0])
    assert seen == [True] * 24
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is left as it was


def test_reading_the_next_batch_ahead_gives_the_stand_in_of_reading_it_in_turn(tmp_path, monkeypatch):
    # the bootstrap reads batch k+1 on a second thread while it steps on batch k; if the step drew
    # random numbers, the two would interleave and the seed would no longer fix the stand-in
    import torch

    from clair_vec.datasets.folders import scan_folder
    from clair_vec.datasets.shapes import SHAPES, make_web_pool
    from clair_vec.method.tensor_files import load_tensor_file
    from clair_vec.training import bootstrap_clip as module

    states: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recorded(module._InTurn):
        """Reads each batch when the step before it is done, noting torch's generator around it."""

        def submit(self, fn):
            def read():
                before = torch.get_rng_state()
                out = fn()
                states.append((before, torch.get_rng_state()))
                return out

            return super().submit(read)

    pool = scan_folder(make_web_pool(tmp_path / "web", per_class=6, classes=SHAPES[:4], seed=1))
    ahead = load_tensor_file(module.bootstrap_clip(pool, tmp_path / "ahead.pt", steps=8, batch_size=16, seed=3, progress=False))
    monkeypatch.setattr(module, "ThreadPoolExecutor", Recorded)
    in_turn = load_tensor_file(module.bootstrap_clip(pool, tmp_path / "turn.pt", steps=8, batch_size=16, seed=3, progress=False))
    assert len(states) == 8
    # a step drew nothing: each read starts where the one before it left the generator
    assert all(torch.equal(states[k][1], states[k + 1][0]) for k in range(7))
    assert all(torch.equal(ahead[k], in_turn[k]) for k in ahead)
    other = load_tensor_file(module.bootstrap_clip(pool, tmp_path / "other.pt", steps=8, batch_size=16, seed=4, progress=False))
    assert not all(torch.equal(ahead[k], other[k]) for k in ahead)  # the comparison can tell stand-ins apart


def test_a_model_whose_step_draws_random_numbers_reads_its_batches_in_turn():
    from torch import nn

    from clair_vec.method.foundation import FoundationModel
    from clair_vec.training.bootstrap_clip import draws_random_numbers

    assert not draws_random_numbers(FoundationModel.load("clair-tiny", None).model)
    assert draws_random_numbers(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))
    assert not draws_random_numbers(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)))
    assert draws_random_numbers(nn.MultiheadAttention(4, 2, dropout=0.1))
    from open_clip.transformer import PatchDropout

    assert draws_random_numbers(PatchDropout(0.5)) and not draws_random_numbers(PatchDropout(0.0))


def test_a_pool_with_no_readable_image_stops_the_bootstrap_with_one_clear_error(tmp_path):
    from clair_vec.datasets.folders import scan_folder
    from clair_vec.datasets.shapes import SHAPES, make_web_pool
    from clair_vec.errors import DatasetError
    from clair_vec.training.bootstrap_clip import bootstrap_clip

    web = make_web_pool(tmp_path / "web", per_class=2, classes=SHAPES[:2], seed=1)
    pool = scan_folder(web)
    for item in pool.items:
        Path(item.path).write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="no readable image left"):
        bootstrap_clip(pool, tmp_path / "clip.pt", steps=3, batch_size=4, seed=0, progress=False)
    assert not (tmp_path / "clip.pt").exists()


def test_the_bootstrap_optimiser_is_fused_where_the_device_has_the_kernel_and_steps_where_not():
    # torch checks a fused optimiser's device only at its first step: a device without the kernel
    # (meta here) must get the plain one up front, not fail mid-bootstrap
    import torch

    from clair_vec.training.bootstrap_clip import bootstrap_optimizer

    for device, fused in (("cpu", True), ("meta", None)):
        w = torch.nn.Parameter(torch.ones(3, device=device))
        opt = bootstrap_optimizer([w], 1e-3)
        assert opt.defaults["fused"] is fused
        w.grad = torch.ones(3, device=device)
        opt.step()


def test_a_resnet_stand_in_trains_channels_last_and_saves_a_file_of_ordinary_tensors(tmp_path):
    # oneDNN's convolutions are faster on channels-last tensors (the demo's bootstrap step about
    # 0.19 s -> 0.15 s); the file must still hold ordinary tensors, loadable into a model of either layout
    import torch
    import torch.utils.deterministic as deterministic

    from clair_vec.datasets.folders import scan_folder
    from clair_vec.datasets.shapes import SHAPES, make_web_pool
    from clair_vec.method.foundation import FoundationModel
    from clair_vec.method.tensor_files import load_tensor_file
    from clair_vec.training import bootstrap_clip as module

    assert module.image_layout(FoundationModel.load("clair-tiny", None).model.visual) is torch.channels_last
    assert module.image_layout(FoundationModel.load("clair-tiny-vit", None).model.visual) is torch.contiguous_format
    layouts: list[tuple[bool, bool]] = []
    towers: list = []
    real_load = module.FoundationModel.load

    def load(*args, **kwargs):
        fm = real_load(*args, **kwargs)
        towers.append(fm.model.visual)
        fm.model.visual.register_forward_pre_hook(
            lambda _m, inputs: layouts.append((inputs[0].is_contiguous(memory_format=torch.channels_last),
                                               deterministic.fill_uninitialized_memory)))  # fmt: skip
        return fm

    pool = scan_folder(make_web_pool(tmp_path / "web", per_class=4, classes=SHAPES[:3], seed=1))
    fill_before = deterministic.fill_uninitialized_memory
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module.FoundationModel, "load", load)
        saved = load_tensor_file(module.bootstrap_clip(pool, tmp_path / "clip.pt", steps=3, batch_size=8, seed=0, progress=False))
    # every step fed the tower channels-last pixels, with deterministic mode's NaN fill off
    assert layouts == [(True, False)] * 3
    assert towers and towers[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)  # the weights too
    assert deterministic.fill_uninitialized_memory is fill_before  # the caller's setting is left as it was
    assert all(t.is_contiguous() for t in saved.values())
    assert FoundationModel.load("clair-tiny", str(tmp_path / "clip.pt")).embed_dim == 64
