"""Device hand-offs, checked without a GPU: the trainable parts are put on PyTorch's ``meta``
device (where every kernel checks its inputs' devices and computes nothing), the CLIP features
stay on the CPU, and any tensor not moved where the head lives raises "Expected all tensors to be
on the same device", as it does on a GPU. Where CUDA exists, the same flows run on it too."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from clair_vec.method.config import ClairConfig
from clair_vec.method.devices import DeviceError, module_device, resolve_device
from clair_vec.training.trainer import ClairTrainer

CUDA = torch.cuda.is_available()
DEVICES = ["meta"] + (["cuda"] if CUDA else [])


def test_resolve_device_picks_cuda_only_when_there_is_one():
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu") == resolve_device(None)
    assert resolve_device("CPU") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "tpu", ""):
        if bad:
            with pytest.raises(DeviceError, match="is not a device; use auto, cpu, cuda or cuda:N"):
                resolve_device(bad)
    if not CUDA:
        with pytest.raises(DeviceError, match="CUDA is not available here"):
            resolve_device("cuda")
    else:
        with pytest.raises(DeviceError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.fixture(scope="module")
def features(tiny_clip, shapes_root):
    from clair_vec.datasets.folders import split_dataset
    from clair_vec.training.features import extract_features

    seen, _ = split_dataset(shapes_root)
    return seen.classes, extract_features(tiny_clip, seen, n_views=2, progress=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("terms", [{}, {"w_instance": 1.0, "w_cluster": 1.0, "w_domain": 1.0, "w_prompt": 1.0}])
def test_a_training_step_runs_where_ray_train_puts_the_head(tiny_clip, features, device, terms):
    """Ray Train's prepare_model moves the head to the worker's GPU after the trainer built it; the
    cached features stay on the CPU. Every term of the loss must still meet on one device."""
    classes, feats = features
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=1, batch_size=24, **terms)
    trainer = ClairTrainer(cfg, tiny_clip, classes, feats, progress=False, wrap_head=lambda head: head.to(device))
    assert trainer.device.type == device and module_device(trainer.key_head).type == device
    assert {b.device.type for b in trainer.banks.values()} == {device}
    assert all(f.clean.device.type == "cpu" for f in feats.values())  # the cache stays where it was
    g = torch.Generator().manual_seed(0)
    batch = {d: trainer._batch_indices(torch.randperm(len(feats[d]), generator=g), 0) for d in trainer.domains}
    vq, vk = trainer.draw_views(batch, g)
    total, means, keys = trainer.step_loss(batch, vq, vk, trainer._prototypes(), 1.0)
    assert total.device.type == device and {v.device.type for v in means.values()} == {device}
    assert {k.device.type for _, k in keys.values()} == {device}
    if device != "meta":
        total.backward()
        trainer.optimizer.step()


@pytest.mark.parametrize("device", DEVICES)
def test_search_embeds_cpu_features_with_a_head_on_another_device(tiny_clip, features, device):
    classes, feats = features
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=1, batch_size=24)
    trainer = ClairTrainer(cfg, tiny_clip, classes, feats, progress=False)
    trainer.fit()
    model = trainer.build_model().to(device)
    assert model.device.type == device
    for d in model.domains:
        out = model.embed_on_device(feats[d].clean[:5], d)  # CPU features in, the head's device out
        assert out.device.type == device and out.shape == (5, model.dim)
    if device != "meta":
        assert model.embed_features(feats["sketch"].clean[:5], "sketch").device.type == "cpu"


def _as_if_saved_on_cuda(path: Path) -> None:
    """Rewrite a torch.save file so every tensor says it was saved from cuda:0, as a GPU run's is."""
    blobs = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            blob = z.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in blob
                blob = blob.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            blobs[info] = blob
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for info, blob in blobs.items():
            z.writestr(info, blob)


@pytest.mark.skipif(CUDA, reason="checks a CUDA-saved model on a machine without CUDA")
def test_a_model_saved_on_a_gpu_loads_and_searches_on_a_cpu_only_machine(tiny_clip, features, tmp_path):
    from clair_vec.method.model import ClairModel

    classes, feats = features
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=1, batch_size=24)
    trainer = ClairTrainer(cfg, tiny_clip, classes, feats, progress=False)
    trainer.fit()
    path = trainer.build_model().save(tmp_path / "m")
    want = ClairModel.load(path).embed_features(feats["sketch"].clean[:4], "sketch")
    for name in ("clair.pt", "foundation.pt"):
        _as_if_saved_on_cuda(path / name)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path / "clair.pt", weights_only=True)  # what a loader without a map location meets
    again = ClairModel.load(path, device="auto")
    assert again.device.type == "cpu"
    torch.testing.assert_close(again.embed_features(feats["sketch"].clean[:4], "sketch"), want)


MODEL_COMMANDS = ("train", "evaluate", "index", "search", "reindex", "compare", "serve", "demo", "bootstrap-clip")


def test_every_command_that_runs_the_model_takes_device():
    from clair_vec.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in MODEL_COMMANDS:
        text = sub.choices[name].format_help()
        assert "--device" in text and "auto" in text, f"clair-vec {name} has no --device"


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
def test_a_missing_gpu_is_one_line_and_exit_2(shapes_root, unchecked_model, tmp_path):
    from conftest import run_cli

    query = str(next((shapes_root / "sketch" / "heart").iterdir()))
    runs = [
        run_cli("search", "--model", str(unchecked_model), "--collection", "g", "--uri", str(tmp_path / "g.db"),
                "--domain", "sketch", query, "--device", "cuda"),
        run_cli("train", "--data", str(shapes_root), "--out", str(tmp_path / "m"), "--clip-model", "clair-tiny",
                "--clip-pretrained", "none", "--epochs", "1", "--device", "cuda:1"),
        run_cli("index", "--model", str(unchecked_model), "--collection", "g", "--uri", str(tmp_path / "g.db"), query,
                "--device", "gpu"),
    ]  # fmt: skip
    for out, want in zip(runs, ("CUDA is not available here", "CUDA is not available here", "is not a device"), strict=True):
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("clair-vec: error: --device") and want in lines[0], out.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "g.db").exists()  # nothing half-made


@pytest.fixture(scope="module")
def unchecked_model(shapes_root, tmp_path_factory):
    from clair_vec.training.job import train_local

    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=1, batch_size=48)
    return train_local(shapes_root, cfg, val_fraction=0.0, progress=False).save(tmp_path_factory.mktemp("dev") / "m")


def test_index_and_search_on_auto_give_the_cpu_results(shapes_root, unchecked_model, tmp_path):
    import clair_vec

    gallery = sorted(str(p) for p in (shapes_root / "photo" / "heart").iterdir())[:4]
    query = str(sorted((shapes_root / "sketch" / "heart").iterdir())[0])
    hits = {}
    for device in ("cpu", "auto"):
        uri = str(tmp_path / f"{device}.db")
        clair_vec.index("g", gallery, uri=uri, model=unchecked_model, progress=False, device=device)
        hits[device] = [(h.id, round(h.score, 5)) for h in clair_vec.search("g", [query], domain="sketch", top_k=4, uri=uri,
                                                                             model=unchecked_model, device=device)[0]]  # fmt: skip
    assert hits["cpu"] == hits["auto"] and len(hits["cpu"]) == 4
