"""The CLAIR maths checked against independent computations, not just shapes."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clair_vec.errors import UnknownDomainError
from clair_vec.method import losses
from clair_vec.method.config import ClairConfig
from clair_vec.method.head import ClairHead, momentum_copy, momentum_update
from clair_vec.method.mapping import DomainMapping, fit_mapping, solve_sylvester_sym
from clair_vec.method.metrics import average_precision, ranked_metrics, retrieval_metrics
from clair_vec.method.pseudo_labels import confidence_scores, pseudo_label, refine_weights


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------- mapping (spec §3.8, §8.5)
def test_ridge_identity_mapping_equals_least_squares_solve():
    ta, tb, lam = unit(20, 12, seed=1), unit(20, 12, seed=2), 0.7
    w, b = fit_mapping(ta, tb, "ridge_identity", lam)
    # min ||W A - B||^2 + lam ||W - I||^2  ==  least squares on stacked [A'; sqrt(lam) I] W' = [B'; sqrt(lam) I]
    eye = torch.eye(12, dtype=torch.float64)
    lhs = torch.cat([ta, math.sqrt(lam) * eye])
    rhs = torch.cat([tb, math.sqrt(lam) * eye])
    w_ls = torch.linalg.lstsq(lhs, rhs).solution.T
    torch.testing.assert_close(w.double(), w_ls, atol=1e-5, rtol=1e-5)
    assert torch.all(b == 0)


def test_plain_ridge_equals_least_squares_solve():
    ta, tb, lam = unit(15, 10, seed=3), unit(15, 10, seed=4), 0.3
    w, _ = fit_mapping(ta, tb, "ridge", lam)
    lhs = torch.cat([ta, math.sqrt(lam) * torch.eye(10, dtype=torch.float64)])
    rhs = torch.cat([tb, torch.zeros(10, 10, dtype=torch.float64)])
    torch.testing.assert_close(w.double(), torch.linalg.lstsq(lhs, rhs).solution.T, atol=1e-5, rtol=1e-5)


def test_large_lambda_gives_identity_and_small_lambda_recovers_rotation():
    ta = unit(40, 8, seed=5)
    assert torch.allclose(fit_mapping(ta, unit(40, 8, seed=6), "ridge_identity", 1e9)[0], torch.eye(8), atol=1e-6)
    r = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]
    w, _ = fit_mapping(ta, ta @ r.T, "ridge_identity", 1e-9)  # C >= D, full rank: T_B = R T_A
    torch.testing.assert_close(w.double(), r, atol=1e-4, rtol=1e-4)


def test_mapping_moves_source_texts_towards_targets_with_fewer_classes_than_dims():
    ta, tb = unit(6, 32, seed=7), unit(6, 32, seed=8)  # C < D: singular Gram, ridge is what makes it solvable
    for method in ("ridge_identity", "ridge", "sylvester", "translation"):
        w, b = fit_mapping(ta, tb, method, 1.0)
        mapped = ta.float() @ w.T + b
        assert torch.linalg.norm(mapped - tb.float()) < torch.linalg.norm(ta - tb), method


def test_sylvester_solver_satisfies_its_equation():
    a = unit(9, 9, seed=9) @ unit(9, 9, seed=9).T + 0.1 * torch.eye(9, dtype=torch.float64)
    b = unit(9, 9, seed=10) @ unit(9, 9, seed=10).T + 0.1 * torch.eye(9, dtype=torch.float64)
    c = torch.randn(9, 9, dtype=torch.float64)
    x = solve_sylvester_sym(a, b, c)
    torch.testing.assert_close(a @ x + x @ b, c, atol=1e-8, rtol=1e-8)


def test_domain_mapping_is_identity_on_pivot_and_rejects_unknown_domains():
    text = {"photo": unit(5, 8, seed=1).float(), "sketch": unit(5, 8, seed=2).float()}
    m = DomainMapping.fit(text, "photo")
    f = unit(3, 8, seed=3).float()
    assert torch.equal(m.apply(f, "photo"), f)
    out = m.apply(f, "sketch")
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert not torch.allclose(out, f)
    with pytest.raises(UnknownDomainError, match="'painting'.*photo.*sketch"):
        m.apply(f, "painting")
    again = DomainMapping.from_state_dict(m.state_dict())
    torch.testing.assert_close(again.apply(f, "sketch"), out)


# ---------------------------------------------------------------- pseudo-labels (§3.2-3.3)
def test_pseudo_labels_confidence_and_per_class_refinement():
    text = torch.eye(3)
    img = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.9, 0.8, 0.0], [0.0, 0.0, 1.0], [0.2, 0.0, 0.3]]), dim=-1)
    pl = pseudo_label(img, text, logit_scale=10.0, threshold=0.0)
    assert pl.labels.tolist() == [0, 0, 2, 2]
    probs = torch.softmax(10 * img @ text.T, -1)
    torch.testing.assert_close(pl.confidence, probs[torch.arange(4), pl.labels])
    # per-class normalisation: the most confident member of each class gets weight 1
    assert pl.weights[0] == pytest.approx(1.0) and pl.weights[2] == pytest.approx(1.0)
    assert pl.weights[1] == pytest.approx(float(probs[1, 0] / probs[0, 0]))
    filtered = refine_weights(torch.tensor([1.0, 0.1, 0.5]), torch.tensor([0, 0, 1]), threshold=0.2)
    assert filtered.tolist() == [1.0, 0.0, 1.0]


def test_confidence_variants():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    cos = torch.tensor([[0.3, 0.1, 0.0], [0.2, 0.15, 0.1]])
    y = torch.tensor([0, 0])
    assert confidence_scores(probs, cos, y, "softmax").tolist() == pytest.approx([0.7, 0.4])
    assert confidence_scores(probs, cos, y, "margin").tolist() == pytest.approx([0.5, 0.05])
    assert confidence_scores(probs, cos, y, "cosine").tolist() == pytest.approx([1.0, 0.0])


# ---------------------------------------------------------------- losses (§3.4-3.7)
def _brute_supcon(q, k, y, w, idx, bank, by, kept, tau):
    num, den = 0.0, 0.0
    for i in range(len(q)):
        if w[i] <= 0:
            continue
        logits = [float(q[i] @ k[i]) / tau] + [float(q[i] @ bank[j]) / tau for j in range(len(bank)) if j != idx[i]]
        js = [j for j in range(len(bank)) if j != idx[i]]
        lse = math.log(sum(math.exp(v) for v in logits))
        pos = [logits[0]] + [logits[1 + n] for n, j in enumerate(js) if by[j] == y[i] and kept[j]]
        li = -(sum(pos) / len(pos) - lse)
        num += float(w[i]) * li
        den += float(w[i])
    return num / den


def test_supervised_instance_loss_matches_brute_force():
    bank = unit(10, 6, seed=1).float()
    by = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    kept = torch.tensor([True] * 8 + [False, True])
    idx = torch.tensor([0, 4, 8])
    q, k = unit(3, 6, seed=2).float(), unit(3, 6, seed=3).float()
    y, w = by[idx], torch.tensor([1.0, 0.5, 0.0])
    got = losses.supervised_instance_loss(q, k, y, w, idx, bank, by, kept, 0.1)
    assert float(got) == pytest.approx(_brute_supcon(q, k, y, w, idx, bank, by, kept, 0.1), rel=1e-4)


def test_instance_discrimination_loss_matches_brute_force_and_masks_self():
    bank, q, k = unit(7, 5, seed=4).float(), unit(2, 5, seed=5).float(), unit(2, 5, seed=6).float()
    idx = torch.tensor([1, 3])
    got = losses.instance_discrimination_loss(q, k, bank, idx, 0.2)
    ref = 0.0
    for i in range(2):
        logits = [float(q[i] @ k[i]) / 0.2] + [float(q[i] @ bank[j]) / 0.2 for j in range(7) if j != idx[i]]
        ref += -(logits[0] - math.log(sum(math.exp(v) for v in logits)))
    assert float(got) == pytest.approx(ref / 2, rel=1e-4)


def test_prototype_and_inter_domain_losses_reward_alignment():
    protos = torch.eye(4)[:3]
    present = torch.tensor([True, True, False])
    y, w = torch.tensor([0, 1, 2]), torch.ones(3)
    aligned = F.normalize(protos + 0.01, dim=-1)
    far = F.normalize(torch.roll(protos, 1, 0) + 0.01, dim=-1)
    assert losses.prototype_loss(aligned, y, w, protos, present, 0.1) < losses.prototype_loss(far, y, w, protos, present, 0.1)
    # the anchor whose class has no prototype is skipped: its value cannot change the loss
    moved = aligned.clone()
    moved[2] = far[2]
    assert float(losses.prototype_loss(moved, y, w, protos, present, 0.1)) == pytest.approx(
        float(losses.prototype_loss(aligned, y, w, protos, present, 0.1)))
    other, oy, okept = protos, torch.tensor([0, 1, 2]), torch.tensor([True, True, True])
    assert losses.inter_domain_loss(aligned, y, w, other, oy, okept, 0.1) < losses.inter_domain_loss(far, y, w, other, oy, okept, 0.1)
    zero = losses.inter_domain_loss(aligned, y, torch.zeros(3), other, oy, okept, 0.1)
    assert float(zero) == 0.0  # no kept anchor: exactly zero


def test_class_prototypes_are_confidence_weighted_centroids():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    protos, present = losses.class_prototypes(feats, torch.tensor([0, 0, 1]), torch.tensor([3.0, 1.0, 0.0]), 3)
    torch.testing.assert_close(protos[0], F.normalize(torch.tensor([3.0, 1.0]), dim=0))
    assert present.tolist() == [True, False, False]


def test_the_linear_head_is_a_linear_map_of_its_input_and_the_default_relu_head_is_not():
    assert ClairConfig().head_activation == "relu"
    x, y = unit(6, 16, seed=2).float(), unit(6, 16, seed=3).float()
    for activation, linear in (("none", True), ("relu", False)):
        torch.manual_seed(0)
        head = ClairHead(16, 32, 1.0, activation=activation)
        with torch.no_grad():
            additive = head.mlp(x + y) - head.mlp(y) - (head.mlp(x) - head.mlp(torch.zeros_like(x)))
        assert bool(torch.allclose(additive, torch.zeros_like(additive), atol=1e-5)) is linear, activation
    with pytest.raises(ValueError, match="'gelu' is not one of"):
        ClairHead(16, activation="gelu")
    with pytest.raises(ValueError, match="head_activation='gelu' is not one of"):
        ClairConfig(head_activation="gelu")


def test_averaged_heads_are_one_head_whose_residual_is_the_mean_of_theirs():
    """The shipped head averages the final and the fold heads: exactly the mean of their scaled,
    centred residuals, as one wider head of the same kind."""
    v = unit(10, 16, seed=4).float()
    for activation, center in (("relu", False), ("relu", True), ("none", True)):
        heads = []
        for seed in range(3):
            torch.manual_seed(seed)
            h = ClairHead(16, 8 + 4 * seed, 0.1 + 0.2 * seed, center=center, activation=activation)
            if center:
                h.train()(unit(32, 16, seed=10 + seed).float())  # a running mean to subtract
            heads.append(h.eval())
        want = F.normalize(v + torch.stack([h.alpha * (h.mlp(v) - (h.offset if center else 0)) for h in heads]).mean(0), dim=-1)
        avg = ClairHead.average(heads)
        assert (avg.mlp[0].out_features, avg.activation, avg.center) == (8 + 12 + 16, activation, center)
        torch.testing.assert_close(avg(v).detach(), want.detach(), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(avg(v), heads[0](v), atol=1e-3)
    assert ClairHead.average(heads[:1]) is heads[0]
    with pytest.raises(ValueError, match="one width, activation and centring"):
        ClairHead.average([ClairHead(16), ClairHead(16, activation="none")])
    assert ClairConfig().head_ensemble == "none" and ClairConfig.from_dict({}).head_ensemble == "none"
    with pytest.raises(ValueError, match="head_ensemble='all' is not one of"):
        ClairConfig(head_ensemble="all")


def test_head_is_residual_normalised_and_momentum_update_is_ema():
    head = ClairHead(8, alpha_init=0.0)
    v = unit(4, 8, seed=1).float()
    torch.testing.assert_close(head(v), v)  # alpha=0: the head starts as the identity on CLIP space
    target = momentum_copy(head)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target.parameters()]
    momentum_update(target, head, 0.9)
    for t, b, s in zip(target.parameters(), before, head.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    assert not any(p.requires_grad for p in target.parameters())


def test_config_rejects_unknown_choices_and_fields():
    with pytest.raises(ValueError, match="mapping"):
        ClairConfig(mapping="magic")
    with pytest.raises(ValueError, match="unknown ClairConfig fields"):
        ClairConfig.from_dict({"nope": 1})
    c = ClairConfig(epochs=3)
    assert ClairConfig.from_dict(c.to_dict()) == c


# ---------------------------------------------------------------- metrics (§5.5)
def _brute_metrics(sim, ql, gl, k):
    maps, mapk, preck = [], [], []
    for i in range(len(sim)):
        order = sorted(range(sim.shape[1]), key=lambda j: (-sim[i, j], j))
        rel = [gl[j] == ql[i] for j in order]

        def ap(r):
            hits, s = 0, 0.0
            for n, x in enumerate(r, 1):
                if x:
                    hits += 1
                    s += hits / n
            return s / hits if hits else 0.0

        maps.append(ap(rel))
        mapk.append(ap(rel[:k]))
        preck.append(sum(rel[:k]) / k)
    return np.mean(maps), np.mean(mapk), np.mean(preck)


def test_metrics_match_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(30, 8)), rng.normal(size=(70, 8))
    ql, gl = rng.integers(0, 4, 30), rng.integers(0, 4, 70)
    got = retrieval_metrics(q, ql, g, gl, map_ks=(20,), prec_ks=(20,), chunk=7)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    ref = _brute_metrics((qn @ gn.T).astype(np.float32), ql, gl, 20)
    assert got["mAP@all"] == pytest.approx(ref[0])
    assert got["mAP@20"] == pytest.approx(ref[1])
    assert got["P@20"] == pytest.approx(ref[2])


def test_metrics_on_hand_made_rankings():
    # ranks 1 and 3 relevant of 4: AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([[1, 0, 1, 0]]))[0] == pytest.approx((1 + 2 / 3) / 2)
    m = ranked_metrics(np.array([[0, 0, 1, 1], [0, 0, 0, 0]]), map_ks=(2,), prec_ks=(2, 4))
    assert m["mAP@all"] == pytest.approx(((1 / 3 + 2 / 4) / 2 + 0) / 2)
    assert m["mAP@2"] == 0.0  # no relevant item within the top 2
    assert m["P@4"] == pytest.approx(0.25) and m["P@2"] == 0.0


def test_confidence_weighting_off_keeps_every_sample_at_weight_one():
    text = torch.eye(3)
    img = F.normalize(torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.0, 1.0], [0.3, 0.2, 0.25]]), dim=-1)
    on = pseudo_label(img, text, 10.0, norm="none", threshold=0.9)
    off = pseudo_label(img, text, 10.0, norm="none", threshold=0.9, weighting=False)
    assert (on.weights == 0).sum() == 2  # the two low-confidence samples are filtered when weighting is on
    assert off.weights.tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(on.labels, off.labels)


def test_domain_normalisation_keeps_the_gap_that_class_normalisation_erases():
    # class 1 attracts only weak, probably wrong, labels: per class they look as sure as class 0
    conf = torch.tensor([0.95, 0.9, 0.3, 0.25])
    labels = torch.tensor([0, 0, 1, 1])
    by_class = refine_weights(conf, labels, norm="class", threshold=0.5)
    by_domain = refine_weights(conf, labels, norm="domain", threshold=0.5)
    assert by_class.tolist() == pytest.approx([1.0, 0.9 / 0.95, 1.0, 0.25 / 0.3])
    q90 = float(torch.quantile(conf, 0.9))
    assert by_domain.tolist() == pytest.approx([min(0.95 / q90, 1.0), 0.9 / q90, 0.0, 0.0])
    assert refine_weights(conf, labels, norm="none", threshold=0.5).tolist() == pytest.approx([0.95, 0.9, 0.0, 0.0])
    with pytest.raises(ValueError, match="unknown confidence normalisation"):
        refine_weights(conf, labels, norm="median")


def test_a_centred_head_adds_no_shared_offset():
    from clair_vec.method.head import ClairHead

    torch.manual_seed(0)
    v = F.normalize(torch.randn(256, 16), dim=-1)
    head = ClairHead(16, alpha_init=1.0, center=True, center_momentum=0.0)
    with torch.no_grad():
        head.mlp[2].bias.fill_(3.0)  # a large shared offset, as training produced
        plain = ClairHead(16, alpha_init=1.0)
        plain.load_state_dict({k: v_ for k, v_ in head.state_dict().items() if k != "offset"})
        head.train()(v)  # momentum 0: the running offset becomes this batch's mean residual
        head.eval()
        residual = head.mlp(v) - head.offset
        assert residual.mean(0).abs().max() < 1e-5
        assert F.cosine_similarity(plain(v)[:128], plain(v)[128:]).mean() > 0.9  # collapsed
        assert F.cosine_similarity(head(v)[:128], head(v)[128:]).mean() < 0.5
    assert "offset" in head.state_dict() and "offset" not in plain.state_dict()


def test_old_configs_load_with_the_behaviour_they_were_trained_with():
    from clair_vec.method.config import ClairConfig

    old = {k: v for k, v in ClairConfig().to_dict().items() if k not in ("confidence_norm", "head_center", "selection_fold_classes")}
    assert ClairConfig.from_dict({**old, "per_class_norm": True}).confidence_norm == "class"
    assert ClairConfig.from_dict({**old, "per_class_norm": False}).confidence_norm == "none"
    assert ClairConfig.from_dict(old).head_center is False
    # a record made before the option says what its folds were: independent draws
    assert ClairConfig.from_dict(old).selection_fold_classes == "random"


def test_set_values_take_the_kind_of_their_field_and_a_wrong_kind_is_named():
    """`--set lr=abc` was a raw TypeError from validate(); `.001`, a fractional warm-up and a
    quoted text must still mean what they say."""
    from clair_vec.method.config import parse_overrides

    assert parse_overrides(["lr=.001", "lr_warmup_epochs=0.5", 'pivot_domain="photo"', "epochs=3", "w_cluster=0"]) == {
        "lr": 0.001, "lr_warmup_epochs": 0.5, "pivot_domain": "photo", "epochs": 3, "w_cluster": 0.0}
    assert parse_overrides(["pivot_domain=2024"]) == {"pivot_domain": "2024"}  # text stays text
    for bad, words in (("lr=abc", "lr takes a number, e.g. lr=0.0003"), ("lr=true", "lr takes a number"),
                       ("epochs=many", "epochs takes a number"), ("epochs=2.5", "epochs counts, so it takes a whole number"),
                       ("batch_size=12.5", "batch_size counts")):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(words)):
            parse_overrides([bad])
    assert parse_overrides(["epochs=60.0", "seed=1e1"]) == {"epochs": 60, "seed": 10}  # whole numbers spelled as decimals
    with pytest.raises(ValueError, match="n_views counts, so it takes a whole number, got 2.5"):
        ClairConfig(n_views=2.5)  # the Python API, where no --set parsed it
