"""``clair-vec benchmark``: the five protocols' shipped class lists, and each protocol run end to
end on a tiny generated copy of its folder layout (one small image a class and domain)."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from clair_vec.cli import main
from clair_vec.errors import DatasetError
from clair_vec.evaluation.protocols import PROTOCOLS, class_key, protocol_split

COUNTS = {"sketchy-split1": {"seen": 100, "unseen": 25}, "sketchy-split2": {"seen": 104, "unseen": 21},
          "tuberlin": {"seen": 220, "unseen": 30}, "quickdraw": {"seen": 80, "unseen": 30},
          "domainnet": {"seen": 245, "val": 55, "unseen": 45}}  # fmt: skip


def make_layout(root: Path, name: str, *, spell=lambda c: c) -> Path:
    """ROOT/<domain>/<class>/0.png for every class of the protocol: a disc whose colour and place
    come from the class, drawn as a filled disc in the gallery domain and as its outline elsewhere."""
    p = PROTOCOLS[name]
    for part in COUNTS[name]:
        for c in p.classes(part):
            h = zlib.crc32(class_key(c).encode())
            colour, x, y = (h & 255, (h >> 8) & 255, (h >> 16) & 255), 4 + (h >> 24) % 12, 4 + (h >> 4) % 12
            for d in p.domains:
                folder = root / d / spell(c)
                folder.mkdir(parents=True, exist_ok=True)
                im = Image.new("RGB", (32, 32), "white")
                draw = ImageDraw.Draw(im)
                if d == p.gallery:
                    draw.ellipse((x, y, x + 14, y + 14), fill=colour)
                else:
                    draw.ellipse((x, y, x + 14, y + 14), outline=(0, 0, 0), width=2)
                im.save(folder / "0.png")
    return root


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    from clair_vec.method.foundation import FoundationModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save(FoundationModel.load("clair-tiny", None).state_dict(), path)
    return path


def test_list_shows_each_protocol_with_the_standard_class_counts(capsys):
    assert main(["benchmark", "list", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert {n: r["classes"] for n, r in rows.items()} == COUNTS
    assert rows["sketchy-split1"]["metrics"] == ["mAP@all", "P@100"] == rows["tuberlin"]["metrics"]
    assert all(rows[n]["metrics"] == ["mAP@200", "P@200"] for n in ("sketchy-split2", "quickdraw", "domainnet"))
    for name, p in PROTOCOLS.items():  # the parts of a protocol never share a class, however it is spelt
        keys = [class_key(c) for part in COUNTS[name] for c in p.classes(part)]
        assert len(keys) == len(set(keys)), name
    assert "bat" in PROTOCOLS["sketchy-split2"].classes("unseen") and "palm tree" in PROTOCOLS["quickdraw"].classes("unseen")
    assert main(["benchmark", "list"]) == 0
    assert "245 seen / 55 val / 45 unseen" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_each_protocol_runs_end_to_end_on_a_tiny_copy(name, tmp_path, clip_file, capsys):
    root = make_layout(tmp_path / "data", name)
    out = tmp_path / "run"
    args = ["benchmark", "run", name, "--data", str(root), "--out", str(out), "--clip-model", "clair-tiny",
            "--clip-pretrained", str(clip_file), "--epochs", "1", "--batch-size", "64"]  # fmt: skip
    # selection folds on the smallest protocol, so that path runs too; the others ship unchecked, for time
    assert main([*args, *([] if name == "sketchy-split2" else ["--val-fraction", "0"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    p = PROTOCOLS[name]
    assert result["protocol"]["seen_classes"] == COUNTS[name]["seen"] and result["protocol"]["unseen_classes"] == COUNTS[name]["unseen"]
    assert [r["query"] for r in result["rows"]] == list(p.queries) and all(r["gallery"] == p.gallery for r in result["rows"])
    for r in result["rows"]:
        assert r["queries"] == COUNTS[name]["unseen"] and len(r["classes"]) == COUNTS[name]["unseen"]
        assert all(0.0 <= r[who][m] <= 1.0 for who in ("raw_clip", "model") for m in p.metrics)
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"] == result["protocol"] and (out / "model" / "clair.json").is_file()
    model_record = json.loads((out / "model" / "clair.json").read_text())["training"]
    unseen = {class_key(c) for c in p.classes("unseen")}
    assert {class_key(c) for c in model_record["unseen_classes"]} == unseen
    assert not unseen & {class_key(c) for c in model_record["seen_classes"]}  # zero-shot: never trained on
    if p.has_validation:  # DomainNet's validation classes are left out of training, as its protocol does
        assert not {class_key(c) for c in p.classes("val")} & {class_key(c) for c in model_record["seen_classes"]}
    from clair_vec.evaluation.benchmark import benchmark_table

    table = benchmark_table(saved)
    assert f"{p.metrics[0]} raw CLIP" in table and f"{p.metrics[1]} raw CLIP" in table and "CLAIR" in table
    assert len(table.splitlines()) == 3 + len(p.queries) + 1
    if name == "sketchy-split2":
        assert saved["record"]["selection"]["folds"]
        assert main(["report", str(out / "results.json"), "--out", str(tmp_path / "report")]) == 0
        assert (tmp_path / "report" / "index.html").read_text().count("<img") > 0
        # drawn into the folder it came from (as `benchmark run` invites), the results.json keeps its training record
        before = (out / "results.json").read_bytes()
        assert main(["report", str(out / "results.json"), "--out", str(out)]) == 0
        assert (out / "results.json").read_bytes() == before and "Model selection" in (out / "index.html").read_text()
        # the dataset moved away: the report still draws, saying which images it could not find
        (root / "photo").rename(tmp_path / "photo-elsewhere")
        assert main(["report", str(out / "results.json"), "--out", str(tmp_path / "report2")]) == 0
        assert "(image not found)" in (tmp_path / "report2" / "index.html").read_text()


def test_class_folders_spelt_the_dataset_s_way_are_found(tmp_path):
    root = make_layout(tmp_path / "data", "tuberlin", spell=lambda c: c.replace(" ", "_").replace("-", "_").upper())
    split = protocol_split(PROTOCOLS["tuberlin"], root)
    assert len(split.train.classes) == 220 and "HOT_AIR_BALLOON" in split.unseen.classes


def test_two_folders_of_one_class_are_refused_not_merged(tmp_path):
    root = make_layout(tmp_path / "data", "quickdraw")
    (root / "photo" / "alarm clock").mkdir()
    (root / "photo" / "alarm_clock" / "0.png").rename(root / "photo" / "alarm clock" / "0.png")
    (root / "photo" / "alarm_clock" / "1.png").write_bytes((root / "photo" / "alarm clock" / "0.png").read_bytes())
    with pytest.raises(DatasetError, match=r"1 class\(es\) have more than one folder under .*photo, e.g. \['alarm clock', 'alarm_clock'\]"):
        protocol_split(PROTOCOLS["quickdraw"], root)


@pytest.mark.parametrize("text, why", [
    ('{"rows": [{}], "k": 200, "model": "m", "classes_from": "x", "samples": {}}', "row 0: field 'query'"),
    ('{"rows": [1], "k": 200, "model": "m", "classes_from": "x", "samples": {}}', "row 0 is not an object"),
    ('{"rows": [], "k": 200}', "field 'model'"),
    ('{"rows": [], "k": 200, "model": "m", "classes_from": "x", "samples": {"sketch": [{"query": 1}]}}', "samples of 'sketch'"),
    ("{not json", "not JSON"),
])  # fmt: skip
def test_report_refuses_a_results_file_it_cannot_draw_in_one_line(text, why, tmp_path, capsys):
    (tmp_path / "r.json").write_text(text)
    assert main(["report", str(tmp_path / "r.json"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and "is not a results file" in err, err


def _drawable() -> dict:
    scores = {"mAP@all": 0.3, "mAP@200": 0.3, "P@100": 0.2, "P@200": 0.2, "mean_pairwise_cosine": 0.5, "hubness": 0.1}
    row = {"query": "sketch", "gallery": "photo", "classes": ["a", "b"], "queries": 4, "gallery_size": 8, "raw_clip": scores,
           "model": dict(scores), "shipped": "clair", "chance": 0.5}  # fmt: skip
    return {"model": "m", "classes_from": "x", "k": 200, "rows": [row], "samples": {}}


@pytest.mark.parametrize("edit, why", [
    (lambda r: r["rows"][0].pop("shipped"), "KeyError: 'shipped'"),
    (lambda r: r["rows"][0]["raw_clip"].pop("hubness"), "KeyError: 'hubness'"),
    (lambda r: r["rows"][0].__setitem__("classes", [1, 2]), "TypeError"),
    (lambda r: r["rows"][0].__setitem__("chance", "half"), "Unknown format code"),
    (lambda r: r.__setitem__("model", "\ud800"), "UnicodeEncodeError"),
])  # fmt: skip
def test_an_edited_results_file_the_checks_pass_but_drawing_cannot_is_one_line_and_leaves_no_folder(edit, why, tmp_path, capsys):
    """Such files ended in KeyError, TypeError or a codec's words from deep in the drawing, and left
    an empty --out folder behind."""
    good = _drawable()
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert main(["report", str(tmp_path / "good.json"), "--out", str(tmp_path / "ok")]) == 0
    edit(good)
    (tmp_path / "r.json").write_text(json.dumps(good))  # a lone surrogate is written escaped, as JSON allows
    capsys.readouterr()
    assert main(["report", str(tmp_path / "r.json"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and "is not a results file" in err, err
    assert not (tmp_path / "out").exists()


def test_a_results_file_no_json_reader_should_take_is_refused_in_one_line(tmp_path, capsys):
    for name, text in (("deep", "[" * 200_000), ("digits", '{"k": ' + "9" * 5000 + "}")):
        (tmp_path / f"{name}.json").write_text(text)
        assert main(["report", str(tmp_path / f"{name}.json"), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not JSON this reader takes" in err, err


def test_sample_images_that_are_bombs_or_pipes_are_drawn_as_not_found(tmp_path):
    """A 20000 x 20000 PNG failed the whole report (PIL's DecompressionBombError is no OSError) and
    a FIFO blocked it for ever."""
    from clair_vec.evaluation.report import _thumb

    Image.new("1", (20_000, 20_000)).save(tmp_path / "bomb.png")
    os.mkfifo(tmp_path / "fifo")
    assert _thumb(str(tmp_path / "bomb.png"), tmp_path / "out") is None
    assert _thumb(str(tmp_path / "fifo"), tmp_path / "out") is None
    Image.new("RGB", (40, 30)).save(tmp_path / "fine.png")
    assert _thumb(str(tmp_path / "fine.png"), tmp_path / "out") is not None


def test_a_missing_folder_or_class_is_one_line_that_names_it(tmp_path, clip_file, capsys):
    root = make_layout(tmp_path / "data", "quickdraw")
    for f in (root / "sketch" / "zebra").iterdir():
        f.unlink()
    (root / "sketch" / "zebra").rmdir()
    with pytest.raises(DatasetError, match=r"quickdraw: 1 of its 30 unseen classes has no folder with images under .*sketch: \['zebra'\]"):
        protocol_split(PROTOCOLS["quickdraw"], root)
    args = ["--out", str(tmp_path / "o"), "--clip-model", "clair-tiny", "--clip-pretrained", str(clip_file)]
    assert main(["benchmark", "run", "quickdraw", "--data", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'zebra'" in err and not (tmp_path / "o").exists()
    assert main(["benchmark", "run", "domainnet", "--data", str(root), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing ['real', 'clipart', 'infograph', 'painting', 'quickdraw']" in err
    assert main(["benchmark", "run", "sketchy-split1", "--data", str(tmp_path / "nowhere"), *args]) == 2
    assert "does not exist" in capsys.readouterr().err
    (root / "results.json").write_text("[1, 2]")
    assert main(["report", str(root / "results.json"), "--out", str(tmp_path / "r")]) == 2
    assert "is not a results file" in capsys.readouterr().err
