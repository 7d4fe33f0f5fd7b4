"""Which model ships: the trained CLAIR head, or raw CLIP + the closed-form mapping (the spec's B1).

Training keeps the epoch with the best mean validation mAP@200 on held-out *seen* classes (never
trained on, never the zero-shot test classes). At the end that epoch is compared, on the same
validation split, with B1: frozen CLIP features, no head, the text-only mapping. If the head does
not beat B1, B1 ships with a warning, so a run never ships a model worse than what it started
from. The checkpoint records which one shipped and both validation numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.head import ClairHead
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.metrics import retrieval_metrics
from clair_vec.method.model import ClairModel
from clair_vec.method.prompts import hand_crafted_text_embeddings
from clair_vec.training.features import DomainFeatures

log = logging.getLogger(__name__)
K = 200
CLAIR, MAPPING_ONLY = "clair", "mapping_only"


def mapping_only_model(foundation: FoundationModel, classes: Sequence[str], domains: Sequence[str], config: ClairConfig) -> ClairModel:
    """B1: raw CLIP features (identity head), mapped into the pivot domain by the text-only mapping."""
    text = {d: hand_crafted_text_embeddings(foundation, classes, d, config.templates) for d in domains}
    mapping = DomainMapping.fit(text, config.pivot_domain, config.mapping, config.mapping_lambda)
    head = ClairHead.identity(foundation.embed_dim, config.head_hidden)
    return ClairModel(foundation, head, mapping, classes, text, config.replace(prompt_side="none"))


def validation_scores(model: ClairModel, features: dict[str, DomainFeatures], k: int = K) -> dict[str, float]:
    """mAP@k of every other domain into the pivot domain, and their mean (``mean``)."""
    pivot = model.pivot
    g = model.embed_features(features[pivot].clean, pivot).numpy()
    out: dict[str, float] = {}
    for d in sorted(set(features) - {pivot}):
        if d in model.domains and len(features[d]):
            q = model.embed_features(features[d].clean, d).numpy()
            out[d] = retrieval_metrics(q, features[d].labels, g, features[pivot].labels, map_ks=(k,), prec_ks=())[f"mAP@{k}"]
    out["mean"] = sum(out.values()) / len(out) if out else float("nan")
    return out


def select(
    trained: ClairModel,
    baseline: ClairModel,
    val_features: dict[str, DomainFeatures] | None,
    *,
    margin: float = 0.0,
) -> tuple[ClairModel, dict[str, Any]]:
    """The model to ship and the record of why. Without validation data the trained head ships
    (nothing to compare on), and the record says so."""
    if not val_features:
        return trained, {"shipped": CLAIR, "validation": None,
                         "reason": "no validation classes (too few seen classes); the trained head ships unchecked"}  # fmt: skip
    ours, theirs = validation_scores(trained, val_features), validation_scores(baseline, val_features)
    record = {"validation": {CLAIR: ours, MAPPING_ONLY: theirs, "metric": f"mean mAP@{K} over query domains"}}
    if ours["mean"] > theirs["mean"] + margin:
        record.update(shipped=CLAIR, reason=f"trained head {ours['mean']:.4f} > mapping only {theirs['mean']:.4f}")
        return trained, record
    warning = (
        f"the trained CLAIR head did not beat raw CLIP + the text mapping on the validation classes "
        f"(mean mAP@{K} {ours['mean']:.4f} vs {theirs['mean']:.4f}); shipping raw CLIP + mapping instead. "
        "More or cleaner training data, or other ClairConfig settings, may help."
    )
    log.warning(warning)
    record.update(shipped=MAPPING_ONLY, reason=warning, warning=warning)
    return baseline, record
