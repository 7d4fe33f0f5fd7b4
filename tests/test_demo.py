"""The README's main job, end to end at a small size, through Milvus Lite and Qdrant Edge."""

from __future__ import annotations

import json

import pytest

from clair_vec.demo import run_demo


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_demo_end_to_end_reports_metrics_for_both_methods(tmp_path, capsys, backend):
    res = run_demo(tmp_path / "w", backend=backend, per_class=8, web_per_class=10, bootstrap_steps=20, epochs=2, batch_size=24,
                   top_k=20, progress=False)  # fmt: skip
    out = capsys.readouterr().out
    assert "[6/6]" in out and "raw CLIP" in out and "CLAIR" in out
    assert set(res["rows"]) == {"raw CLIP", "CLAIR"}
    for method in res["rows"].values():
        assert set(method) == {"clipart->photo", "sketch->photo"}
        for cell in method.values():
            assert 0.0 <= cell["P@20"] <= 1.0 and 0.0 <= cell["mAP@20"] <= 1.0
            assert cell["queries"] == 6 * 8  # 6 unseen classes x 8 images
            # a gallery of 48 photos, 8 relevant: at least one relevant within the top 20 on average
            assert cell["P@20"] > 0.0
    assert res["gallery"] == 48 and res["seed"] == 0
    saved = json.loads((tmp_path / "w" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    assert (tmp_path / "w" / "model" / "clair.json").is_file()
    # the demo says, in words, how the model did against raw CLIP, and what to run next
    said = [p for p in ("the model beats raw CLIP", "the model ranks like raw CLIP", "note: the model lost to raw CLIP") if p in out]
    assert len(said) == 1, out
    rows = res["rows"]
    tie = all(abs(rows["CLAIR"][p]["mAP@20"] - rows["raw CLIP"][p]["mAP@20"]) <= 5e-4 for p in rows["raw CLIP"])
    assert not tie or said == ["the model ranks like raw CLIP"]  # shipping raw CLIP is not "beating" it
    assert "next:" in out and len(res["next"]) == 3


def test_a_tie_says_raw_clip_was_kept_only_where_the_shipped_model_keeps_it():
    from clair_vec.demo import verdict

    rows = {"raw CLIP": {"sketch->photo": {"mAP@200": 0.4}}, "CLAIR": {"sketch->photo": {"mAP@200": 0.4002}}}
    for shipped, kept in (("raw_clip", True), ("per_domain", True), ("clair", False), ("centred_mapping", False)):
        said = verdict({"rows": rows}, 200, shipped)
        assert said.startswith("the model ranks like raw CLIP") and ("keeps raw CLIP" in said) is kept, shipped


def test_a_seed_reproduces_its_numbers_at_the_same_thread_count(tmp_path, capsys):
    kw = dict(per_class=6, web_per_class=10, bootstrap_steps=15, epochs=2, batch_size=24, top_k=20, progress=False, seed=3,
              threads=2)  # fmt: skip
    import torch

    threads = torch.get_num_threads()
    first, again = (run_demo(tmp_path / w, **kw) for w in ("a", "b"))
    assert torch.get_num_threads() == threads  # the caller's thread count is its own again
    assert first["threads"] == again["threads"] == 2 and first["stand_in"] == {"seed": 3, "steps": 15, "threads": 2, "device": "cpu",
                                                                               "mix": None}  # fmt: skip
    assert first["rows"] == again["rows"]  # in another folder: the views are keyed by path under the data root
    assert "2 torch threads as asked" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--threads 0: give at least 1"):
        run_demo(tmp_path / "c", **{**kw, "threads": 0})


def test_the_next_steps_the_demo_prints_work_as_printed(tmp_path, monkeypatch):
    """Copied from the demo's output into a shell, in the directory it ran in."""
    import shlex
    import subprocess
    import sys
    import time
    import urllib.request

    monkeypatch.chdir(tmp_path)
    res = run_demo("w", per_class=8, web_per_class=10, bootstrap_steps=20, epochs=1, batch_size=24, top_k=20, progress=False)
    serve, search, evaluate = (shlex.split(line.split("#")[0]) for line in res["next"])
    assert serve[:2] == ["clair-vec", "serve"] and search[:2] == ["clair-vec", "search"] and evaluate[:2] == ["clair-vec", "evaluate"]
    cli = [sys.executable, "-m", "clair_vec.cli"]
    out = subprocess.run([*cli, *search[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0 and len(json.loads(out.stdout.splitlines()[-1])["hits"]) == 10, out.stderr
    out = subprocess.run([*cli, *evaluate[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "w" / "report" / "index.html").is_file(), out.stderr
    from servers import free_port

    port = free_port()
    proc = subprocess.Popen([*cli, *serve[1:], "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    assert json.loads(r.read())["count"] == 48
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ablation_table_over_demo_workdirs(tmp_path, capsys):
    from clair_vec.evaluation.ablation import VARIANTS, demo_run, format_table, run

    for seed in (0, 1):
        run_demo(tmp_path / f"w{seed}", per_class=6, web_per_class=10, bootstrap_steps=10, epochs=1, batch_size=24, top_k=20,
                 seed=seed, progress=False)  # fmt: skip
    runs = [demo_run(tmp_path / f"w{seed}") for seed in (0, 1)]
    assert [r.seed for r, _ in runs] == [0, 1]  # each workdir is its own seed: its own data and stand-in CLIP
    res = run(runs, epochs=1, batch_size=24, k=20)
    assert list(res["rows"]) == list(VARIANTS) and res["seeds"] == [0, 1]
    for cells in res["rows"].values():
        assert all(0.0 <= m <= 1.0 and s >= 0.0 for c, (m, s) in cells.items() if c.endswith("mAP"))
    b0 = res["rows"]["B0 raw CLIP"]
    assert all(s > 0 for c, (_, s) in b0.items() if c.endswith("mAP"))  # two bootstraps, two raw CLIPs: seeds differ
    for p in res["pseudo_labels"].values():
        assert p["kept"] == pytest.approx(0.3, abs=0.02) and p["spec_kept"] == 1.0  # the spec filter keeps everything
    table = format_table(res)
    assert "| default, unchecked |" in table and "accuracy kept / dropped" in table

    from clair_vec.evaluation import training_seeds

    assert training_seeds.main(["--workdir", str(tmp_path / "w0"), "--workdir", str(tmp_path / "w1"), "--training-seeds", "2",
                                "--config", 'short={"epochs": 1}', "--json"]) == 0  # fmt: skip
    out = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])["short"]
    assert out["cells"] == 4 and len(out["mean"]) == 2 and out["worst"] <= min(out["mean"])  # clipart and sketch
    cells = [training_seeds.gains(r, pivot, {"epochs": 1}, t) for r, pivot in runs[:1] for t in (0, 0)]
    assert cells[0] == cells[1]  # one training seed, one batch order, one result
    # an ensemble of one is that same head; of two, a second head from its own seed joins it
    assert training_seeds.gains(runs[0][0], runs[0][1], {"epochs": 1}, 0, ensemble=1) == cells[0]
    pair = training_seeds.gains(runs[0][0], runs[0][1], {"epochs": 1}, 0, ensemble=2)
    assert len(pair) == 2 and all(-1.0 <= g <= 1.0 for g in pair)


@pytest.mark.skipif(not __import__("os").environ.get("MILVUS_LITE_URI"),
                    reason="needs MILVUS_LITE_URI: run through `make test`, which starts a milvus-lite server")  # fmt: skip
def test_a_password_in_the_demo_uri_is_never_printed_or_saved(tmp_path, capsys):
    import os

    password = "Demo-Planted-Pw-4417"
    uri = os.environ["MILVUS_LITE_URI"].replace("http://", f"http://root:{password}@")
    res = run_demo(tmp_path / "w", uri=uri, per_class=8, web_per_class=10, bootstrap_steps=20, epochs=1, batch_size=24, top_k=20,
                   progress=False)  # fmt: skip
    out = capsys.readouterr()
    saved = (tmp_path / "w" / "results.json").read_text()
    assert password not in out.out + out.err + saved
    assert res["uri"] == uri.replace(f"root:{password}", "***")  # shown, masked
    host = os.environ["MILVUS_LITE_URI"]
    assert any(f"--uri {host}" in line for line in res["next"]) and "credentials are left out" in res["next"][-1]
