"""A model directory is validated before use: every tampered variant ends in one clear error that
names the file, the field and what was expected, never a traceback (issue 16)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from clair_vec.errors import CheckpointError, ClairVecError, UnsafeCheckpointError, WeightsNotFoundError
from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.head import ClairHead
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.model import ClairModel
from clair_vec.method.model_card import ModelCard
from clair_vec.method.prompts import PromptLearner, hand_crafted_text_embeddings

CLASSES = ["circle", "square", "star"]
DOMAINS = ["clipart", "photo", "sketch"]


@pytest.fixture(scope="module")
def base(tiny_clip, tmp_path_factory) -> Path:
    """A valid checkpoint with every part filled in: random tiny CLIP (foundation.pt), prompts, routing."""
    text = {d: hand_crafted_text_embeddings(tiny_clip, CLASSES, d) for d in DOMAINS}
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None)
    torch.manual_seed(0)
    model = ClairModel(tiny_clip, ClairHead(tiny_clip.embed_dim, 32), DomainMapping.fit(text, "photo"), CLASSES, text, cfg,
                       PromptLearner(tiny_clip, DOMAINS, cfg.n_ctx).state_dict(), {"unseen_classes": ["heart"]},
                       {"clipart": 1.0, "photo": 0.5, "sketch": 0.0})  # fmt: skip
    return model.save(tmp_path_factory.mktemp("base") / "m")


def meta_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        meta = json.loads((d / "clair.json").read_text())
        change(meta)
        (d / "clair.json").write_text(json.dumps(meta))

    return apply


def setter(key: str, value) -> Callable[[Path], None]:
    return meta_edit(lambda m: m.__setitem__(key, value))


def dropper(key: str) -> Callable[[Path], None]:
    return meta_edit(lambda m: m.pop(key))


def config_setter(key: str, value) -> Callable[[Path], None]:
    return meta_edit(lambda m: m["config"].__setitem__(key, value))


def raw_json(text: str | bytes) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        (d / "clair.json").write_bytes(text if isinstance(text, bytes) else text.encode())

    return apply


def huge_json(d: Path) -> None:
    with open(d / "clair.json", "r+b") as f:
        f.truncate(33 * 2**20)  # sparse: the size alone must refuse it, before any read


def state_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Change the loaded ``clair.pt`` dictionary in place (the lambda's value is ignored)."""
    def apply(d: Path) -> None:
        state = torch.load(d / "clair.pt", weights_only=True)
        change(state)
        torch.save(state, d / "clair.pt")

    return apply


def head_edit(key: str, value) -> Callable[[Path], None]:
    return state_edit(lambda s: s["head"].__setitem__(key, value))


def file_bytes(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data)


def torch_file(name: str, obj) -> Callable[[Path], None]:
    return lambda d: torch.save(obj, d / name)


def remove(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def replaced_by(name: str, kind: str) -> Callable[[Path], None]:
    def tamper(d: Path) -> None:
        (d / name).unlink()
        if kind == "folder":
            (d / name).mkdir()
        else:
            (d / name).symlink_to("/dev/zero")  # a device: endless zeros, never a checkpoint
    return tamper


def clip_weights(d: Path) -> None:
    torch.save(torch.load(d / "foundation.pt", weights_only=True), d / "clair.pt")


def foundation_of_other_shape(d: Path) -> None:
    w = torch.load(d / "foundation.pt", weights_only=True)
    w["positional_embedding"] = torch.zeros(7, 3)
    torch.save(w, d / "foundation.pt")


CK, WN, US = CheckpointError, WeightsNotFoundError, UnsafeCheckpointError
#: (name, tamper, error class, message pattern); clair.json cases are also checked through ModelCard.read
CASES: list[tuple[str, Callable[[Path], None], type, str]] = [
    ("dim negative", setter("dim", -3), CK, r"clair.json field 'dim' is -3; expected a positive integer \(the embedding width"),
    ("dim zero", setter("dim", 0), CK, r"field 'dim' is 0; expected a positive integer"),
    ("dim huge", setter("dim", 10**12), CK, r"field 'dim' is 1000000000000; expected a positive integer .* at most 16384"),
    ("dim string", setter("dim", "512"), CK, r"field 'dim' is '512'; expected a positive integer"),
    ("dim float", setter("dim", 64.5), CK, r"field 'dim' is 64.5"),
    ("dim bool", setter("dim", True), CK, r"field 'dim' is True"),
    ("dim wrong width", setter("dim", 32), CK, r"clair.pt field 'head.mlp.0.weight' has shape \[32, 64\]; expected \[32, 32\]"),
    ("no model_id", dropper("model_id"), CK, r"clair.json has no field 'model_id'"),
    ("model_id list", setter("model_id", ["x"]), CK, r"field 'model_id' is a JSON array of 1 items"),
    ("no classes", dropper("classes"), CK, r"clair.json has no field 'classes'"),
    ("classes string", setter("classes", "circle"), CK, r"field 'classes' is 'circle'; expected a non-empty list of class names"),
    ("classes empty", setter("classes", []), CK, r"field 'classes' is a JSON array of 0 items"),
    ("classes numbers", setter("classes", [1, 2, 3]), CK, r"field 'classes' is a JSON array of 3 items; expected a non-empty list"),
    ("classes twice", setter("classes", ["circle", "circle", "star"]), CK, r"field 'classes' names a class twice"),
    ("classes fewer than text rows", setter("classes", ["circle", "square"]), CK,
     r"clair.pt field 'text_embeddings.clipart' has shape \[3, 64\]; expected \[2, 64\]"),
    ("no config", dropper("config"), CK, r"clair.json has no field 'config'"),
    ("config list", setter("config", []), CK, r"field 'config' is a JSON array of 0 items; expected an object"),
    ("config unknown field", config_setter("warp_speed", 9), CK, r"field 'config' is not a valid ClairConfig \(unknown ClairConfig fields \['warp_speed'\]"),
    ("config bad choice", config_setter("confidence", "bogus"), CK, r"ClairConfig.confidence='bogus' is not one of"),
    ("config wrong type", config_setter("epochs", "many"), CK, r"field 'config.epochs' is 'many'; expected a int \(JSON integer\)"),
    ("config pivot mismatch", config_setter("pivot_domain", "sketch"), CK, r"field 'config.pivot_domain' is 'sketch' but field 'pivot' is 'photo'"),
    ("no clip_model", dropper("clip_model"), CK, r"clair.json has no field 'clip_model'"),
    ("clip_model number", setter("clip_model", 5), CK, r"field 'clip_model' is 5; expected an open_clip architecture name"),
    ("clip_model unknown", setter("clip_model", "ViT-Z-99"), CK, r"field 'clip_model' is 'ViT-Z-99', which open_clip does not know"),
    ("clip_pretrained number", setter("clip_pretrained", 3), CK, r"field 'clip_pretrained' is 3; expected an open_clip pretrained tag"),
    ("clip_pretrained missing file", setter("clip_pretrained", "/nonexistent/ViT.pt"), WN, r"'/nonexistent/ViT.pt' does not exist"),
    ("no domains", dropper("domains"), CK, r"clair.json has no field 'domains'"),
    ("domains empty", setter("domains", []), CK, r"field 'domains' is a JSON array of 0 items"),
    ("domains missing one", setter("domains", ["photo", "sketch"]), CK, r"routing' names domains \['clipart'\] the model does not have"),
    ("no pivot", dropper("pivot"), CK, r"clair.json has no field 'pivot'"),
    ("pivot unknown", setter("pivot", "x-ray"), CK, r"field 'pivot' is 'x-ray'; expected the gallery domain, one of"),
    ("format version", setter("format_version", 2), CK, r"field 'format_version' is 2; expected 1"),
    ("training string", setter("training", "yes"), CK, r"field 'training' is 'yes'; expected an object"),
    ("training unseen not a list", meta_edit(lambda m: m["training"].__setitem__("unseen_classes", 7)), CK, r"'training.unseen_classes' is 7"),
    ("routing out of range", setter("routing", {"sketch": 2.0}), CK, r"field 'routing' gives domain 'sketch' the blend 2.0; expected a number in \[0, 1\]"),
    ("routing list", setter("routing", [1]), CK, r"field 'routing' is a list; expected an object"),
    ("json list", raw_json("[1, 2, 3]"), CK, r"clair.json holds a JSON list; expected a JSON object"),
    ("json string", raw_json('"model"'), CK, r"clair.json holds a JSON str"),
    ("json deep", raw_json("[" * 100_000 + "]" * 100_000), CK, r"clair.json nests more than 32 levels deep"),
    ("json deep object", raw_json('{"a":' * 100_000 + "1" + "}" * 100_000), CK, r"nests more than 32 levels"),
    ("json broken", raw_json('{"dim": 64,'), CK, r"clair.json is not valid JSON \(Expecting property name"),
    ("json empty", raw_json(""), CK, r"clair.json is not valid JSON"),
    ("json not utf-8", raw_json(b'{"model_id": "\xff\xfe"}'), CK, r"clair.json is not UTF-8 text"),
    ("json huge", huge_json, CK, r"clair.json is 34,603,008 bytes; expected at most"),
    ("no clair.json", remove("clair.json"), WN, r"is not a clair_vec checkpoint \(no clair.json\)"),
    ("no clair.pt", remove("clair.pt"), WN, r"CLAIR checkpoint file .*clair.pt' does not exist"),
    ("clair.pt a folder", replaced_by("clair.pt", "folder"), WN, r"CLAIR checkpoint file .*clair.pt' is a folder, not a file"),
    ("foundation.pt a device", replaced_by("foundation.pt", "device"), WN,
     r"CLIP weights file .*foundation.pt' is not a regular file \(a pipe, a device or a socket\)"),
    ("clair.pt random bytes", file_bytes("clair.pt", b"\x00garbage" * 100), US, r"clair.pt' is truncated or not a torch file"),
    ("clair.pt empty", file_bytes("clair.pt", b""), US, r"truncated or not a torch file"),
    ("clair.pt a list", torch_file("clair.pt", [1, 2, 3]), CK, r"clair.pt holds a list; expected the dictionary clair-vec train writes"),
    ("clair.pt a tensor", torch_file("clair.pt", torch.zeros(3)), CK, r"clair.pt holds a Tensor"),
    ("clair.pt CLIP weights", clip_weights, CK, r"clair.pt holds CLIP weights, not a CLAIR checkpoint"),
    ("clair.pt no mapping", state_edit(lambda s: s.pop("mapping") is None), CK, r"clair.pt has no entries \['mapping'\]"),
    ("head not a dict", state_edit(lambda s: s.__setitem__("head", [1])), CK, r"clair.pt field 'head' is list"),
    ("head missing weight", state_edit(lambda s: s["head"].pop("alpha") is None), CK, r"clair.pt field 'head' has entries"),
    ("head wrong shape", head_edit("mlp.2.weight", torch.zeros(64, 31)), CK, r"'head.mlp.2.weight' has shape \[64, 31\]; expected \[64, 32\]"),
    ("head a string", head_edit("mlp.0.bias", "zeros"), CK, r"'head.mlp.0.bias' is str 'zeros'; expected a tensor of shape \[32\]"),
    ("head NaN", head_edit("alpha", torch.tensor(float("nan"))), CK, r"'head.alpha' holds NaN or infinite values"),
    ("head integer", head_edit("mlp.0.bias", torch.zeros(32, dtype=torch.long)), CK, r"'head.mlp.0.bias' has dtype torch.int64"),
    ("head_hidden string", state_edit(lambda s: s.__setitem__("head_hidden", "32")), CK, r"clair.pt field 'head_hidden' is '32'"),
    ("head_hidden mismatch", state_edit(lambda s: s.__setitem__("head_hidden", 16)), CK, r"'head.mlp.0.weight' has shape \[32, 64\]; expected \[16, 64\]"),
    ("mapping W shape", state_edit(lambda s: s["mapping"]["maps"]["sketch"].__setitem__("W", torch.eye(63))), CK,
     r"'mapping.maps.sketch.W' has shape \[63, 63\]; expected \[64, 64\]"),
    ("mapping b missing", state_edit(lambda s: s["mapping"]["maps"]["sketch"].pop("b") is None), CK, r"'mapping.maps.sketch' is"),
    ("mapping domain missing", state_edit(lambda s: s["mapping"]["maps"].pop("clipart") is None), CK,
     r"'mapping.maps' has domains \['sketch'\]; expected \['clipart', 'sketch'\]"),
    ("mapping pivot", state_edit(lambda s: s["mapping"].__setitem__("pivot", "sketch")), CK, r"'mapping.pivot' is 'sketch'; expected 'photo'"),
    ("text rows", state_edit(lambda s: s["text_embeddings"].__setitem__("photo", torch.zeros(5, 64))), CK,
     r"'text_embeddings.photo' has shape \[5, 64\]; expected \[3, 64\]"),
    ("text domain missing", state_edit(lambda s: s["text_embeddings"].pop("photo") is None), CK, r"'text_embeddings' is \['clipart', 'sketch'\]"),
    ("prompts shape", state_edit(lambda s: s["prompts"].__setitem__("ctx", torch.zeros(3, 4, 7))), CK,
     r"'prompts.ctx' has shape \[3, 4, 7\]; expected \[3, 4, 64\]"),
    ("prompts a list", state_edit(lambda s: s.__setitem__("prompts", [0])), CK, r"clair.pt field 'prompts' is a JSON array"),
    ("no foundation.pt", remove("foundation.pt"), WN, r"CLIP weights file .*foundation.pt' does not exist"),
    ("foundation.pt other shape", foundation_of_other_shape, CK, r"foundation.pt does not fit the CLIP architecture 'clair-tiny'"),
    ("foundation.pt a list", torch_file("foundation.pt", [1]), CK, r"foundation.pt holds a list; expected the state dict of a clair-tiny CLIP"),
    ("foundation.pt garbage", file_bytes("foundation.pt", b"nope"), US, r"foundation.pt' is truncated or not a torch file"),
    ("model_id changed", setter("model_id", "clair-clair-tiny-000000000000"), WN, r"loads as model .* but was saved as clair-clair-tiny-000000000000"),
    # the routing is in the model id: an edit is named as an edit, not as changed CLIP weights
    ("an edited routing", meta_edit(lambda m: m["routing"].__setitem__("sketch", 0.5)), WN, r"clair.json or clair.pt was edited or swapped"),
    # the text embeddings' rows follow the class order, which the id does not cover: a reordered list searched "dog" with "cat"'s text
    ("reordered classes", meta_edit(lambda m: m.__setitem__("classes", m["classes"][::-1])), CK,
     r"clair.json field 'classes' lists the classes in another order than clair.pt was saved with"),
    ("selection a string", meta_edit(lambda m: m["training"].__setitem__("selection", "x")), CK, r"field 'training.selection' is 'x'; expected an object or null"),
    ("stats a list", meta_edit(lambda m: m["training"].__setitem__("stats", [1])), CK, r"field 'training.stats' is a JSON array"),
]  # fmt: skip


def tampered(base: Path, tmp_path: Path, tamper: Callable[[Path], None]) -> Path:
    d = tmp_path / "m"
    shutil.copytree(base, d)
    tamper(d)
    return d


def test_the_untampered_checkpoint_loads_with_its_routing(base):
    model = ClairModel.load(base)
    assert model.routing == {"clipart": 1.0, "photo": 0.5, "sketch": 0.0}
    assert ModelCard.read(base).routing == model.routing


@pytest.mark.parametrize(("name", "tamper", "error", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_a_tampered_checkpoint_is_one_clear_error(base, tmp_path, name, tamper, error, pattern):
    d = tampered(base, tmp_path, tamper)
    with pytest.raises(ClairVecError) as info:
        ClairModel.load(d)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message and len(message) < 1200, message
    assert __import__("re").search(pattern, message), message
    if error is CK:
        assert message.startswith(f"model directory {d}: ") or "CLIP weights file" in message, message


def test_there_are_at_least_35_tampered_variants():
    assert len(CASES) >= 35


@pytest.mark.parametrize("name", sorted(n for n in (c[0] for c in CASES) if n.startswith(("dim", "no ", "json", "classes", "routing", "config"))
                                        and "clair.pt" not in n and "foundation" not in n and n != "dim wrong width"
                                        and n != "classes fewer than text rows"))  # fmt: skip
def test_the_torch_free_card_validates_the_metadata_too(base, tmp_path, name):
    _, tamper, error, pattern = next(c for c in CASES if c[0] == name)
    d = tampered(base, tmp_path, tamper)
    with pytest.raises(ClairVecError) as info:
        ModelCard.read(d)
    assert type(info.value) is error and __import__("re").search(pattern, str(info.value)), str(info.value)


@pytest.mark.parametrize("name", ["dim string", "json deep", "clair.pt CLIP weights", "clair.pt a list", "mapping W shape",
                                  "foundation.pt other shape"])  # fmt: skip
def test_clair_vec_search_prints_the_error_without_a_traceback(base, tmp_path, name, shapes_root):
    _, tamper, _, pattern = next(c for c in CASES if c[0] == name)
    d = tampered(base, tmp_path, tamper)
    query = str(sorted((shapes_root / "sketch" / "heart").iterdir())[0])
    out = run_cli("search", "--model", str(d), "--collection", "g", "--uri", str(tmp_path / "s.db"), "--domain", "sketch", query)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("clair-vec: error:")]
    assert __import__("re").search(pattern, line), line


def test_clip_weights_of_another_architecture_are_one_line(tmp_path):
    weights = tmp_path / "tiny.pt"
    torch.save(FoundationModel.load("clair-tiny", None).state_dict(), weights)
    with pytest.raises(CheckpointError, match=r"CLIP weights file .*tiny.pt' does not fit architecture 'ViT-B-32' "
                                              r"\(AssertionError: text pos_embed width changed!\)\. Pass the --clip-model"):
        FoundationModel.load("ViT-B-32", str(weights))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"does not fit architecture 'clair-tiny' \((UnpicklingError|error)"):
        FoundationModel.load("clair-tiny", str(tmp_path / "junk.pt"))
    torch.save({"a": torch.zeros(1)}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match=r"does not fit architecture 'clair-tiny' \(RuntimeError: Error\(s\) in loading"):
        FoundationModel.load("clair-tiny", str(tmp_path / "dict.pt"))


def test_train_with_mismatched_clip_weights_is_one_line_not_a_traceback(shapes_root, tmp_path):
    weights = tmp_path / "tiny.pt"
    torch.save(FoundationModel.load("clair-tiny", None).state_dict(), weights)
    out = run_cli("train", "--data", str(shapes_root), "--out", str(tmp_path / "m"), "--clip-model", "ViT-B-32",
                  "--clip-pretrained", str(weights), "--epochs", "1")  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [x for x in out.stderr.splitlines() if x.startswith("clair-vec: error:")]
    assert len(errors) == 1 and "does not fit architecture 'ViT-B-32'" in errors[0], out.stderr[-2000:]
