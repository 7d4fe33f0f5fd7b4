"""The pseudo-label and collapse measurements behind the confidence_norm and head_center options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from clair_vec.evaluation.diagnostics import collapse_stats, pseudo_label_report
from clair_vec.method.model import ClairModel
from clair_vec.method.pseudo_labels import NORMS


def _constant_residual(model_dir, value: torch.Tensor) -> ClairModel:
    """The trained model with a head whose residual is ``value`` for every input."""
    m = ClairModel.load(model_dir)
    last = m.head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(value)
        m.head.alpha.fill_(1.0)
    return m


def _features(m: ClairModel) -> dict[str, torch.Tensor]:
    """Diverse unit features per query domain (a random-weight CLIP maps every image to nearly one direction)."""
    g = torch.Generator().manual_seed(0)
    return {d: F.normalize(torch.randn(40, m.dim, generator=g), dim=-1) for d in m.domains if d != m.pivot}


def test_a_residual_shared_by_every_input_is_measured_as_collapse(model_dir):
    m = ClairModel.load(model_dir)
    offset = torch.zeros(m.dim)
    offset[0] = 0.8
    report = collapse_stats(_constant_residual(model_dir, offset), _features(m))
    assert set(report) == set(m.domains) - {m.pivot}
    for row in report.values():
        assert row["shared_offset_norm"] == pytest.approx(0.8, abs=1e-3)
        assert row["per_sample_spread"] == pytest.approx(0.0, abs=1e-3)
        cos = row["mean_pairwise_cosine"]
        assert cos["head"] > cos["raw_clip"] + 0.05  # every embedding pulled towards one direction
        assert cos["head_centred"] == pytest.approx(cos["raw_clip"], abs=1e-3)  # centring removes exactly that


def test_a_head_without_residual_leaves_the_features_alone(model_dir):
    m = ClairModel.load(model_dir)
    report = collapse_stats(_constant_residual(model_dir, torch.zeros(m.dim)), _features(m))
    for row in report.values():
        assert row["shared_offset_norm"] == 0 and row["per_sample_spread"] == 0
        cos = row["mean_pairwise_cosine"]
        assert cos["head"] == pytest.approx(cos["raw_clip"], abs=1e-3)
        assert cos["head_mapped"] == pytest.approx(cos["raw_clip_mapped"], abs=1e-3)


def test_pseudo_label_report_counts_what_each_rule_drops(model_dir, shapes_root):
    m = ClairModel.load(model_dir)
    report = pseudo_label_report(m, shapes_root, thresholds=(0.2, 0.5, 0.9))
    assert set(report) == set(m.domains)
    for row in report.values():
        assert row["images"] == 8 * len(m.classes)  # the fixture's 8 images per class and domain
        assert row["wrong"] == round(row["images"] * (1 - row["accuracy"]))
        for norm in NORMS:
            rules = [r for r in row["rules"] if r["norm"] == norm]
            assert [r["threshold"] for r in rules] == [0.2, 0.5, 0.9]
            assert all(0 <= r["wrong_dropped"] <= row["wrong"] for r in rules)
            # a higher threshold keeps no more and drops no fewer wrong labels
            assert all(a["kept"] >= b["kept"] and a["wrong_dropped"] <= b["wrong_dropped"] for a, b in zip(rules, rules[1:], strict=False))
        # per-class normalisation gives each class's most confident member weight 1
        assert max(row["normalised"]["class"]["right"] + row["normalised"]["class"]["wrong"]) <= 1.0


def test_the_command_prints_the_report_as_json(model_dir, shapes_root):
    r = subprocess.run([sys.executable, "-m", "clair_vec.evaluation.diagnostics", "collapse", "--model", str(model_dir), "--data",
                        str(shapes_root)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = ClairModel.load(model_dir)
    assert set(json.loads(r.stdout)) == set(m.domains) - {m.pivot}
