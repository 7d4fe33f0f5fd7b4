"""The README's main job, end to end at a small size, through Milvus Lite and Qdrant Edge."""

from __future__ import annotations

import json

import pytest

from clair_vec.demo import run_demo


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_demo_end_to_end_reports_metrics_for_both_methods(tmp_path, capsys, backend):
    res = run_demo(tmp_path / "w", backend=backend, per_class=8, bootstrap_steps=20, epochs=2, batch_size=24,
                   top_k=20, progress=False)  # fmt: skip
    out = capsys.readouterr().out
    assert "[6/6]" in out and "raw CLIP" in out and "CLAIR" in out
    assert set(res["rows"]) == {"raw CLIP", "CLAIR"}
    for method in res["rows"].values():
        assert set(method) == {"clipart->photo", "sketch->photo"}
        for cell in method.values():
            assert 0.0 <= cell["P@20"] <= 1.0 and 0.0 <= cell["mAP@20"] <= 1.0
            assert cell["queries"] == 4 * 8  # 4 unseen classes x 8 images
            # a gallery of 32 photos, 8 relevant: at least one relevant within the top 20 on average
            assert cell["P@20"] > 0.0
    assert res["gallery"] == 32
    saved = json.loads((tmp_path / "w" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    assert (tmp_path / "w" / "model" / "clair.json").is_file()
