"""Which model ships, decided per query domain on rotating folds of the seen classes.

The promise: training never makes search worse than what a user had before training, raw CLIP
(the spec's B0). The evidence is the folds of :mod:`clair_vec.training.folds`: each trained on
some seen classes and validated, as zero-shot, on the others.

The scheme (the gallery is embedded once, so every choice is made against one gallery embedding):

- Every domain's embedding is a blend ``e_d(v) = normalize((1 - b_d) v + b_d head(v))`` followed by
  its map into the gallery domain, one of: ``none`` (identity), ``text`` (the closed-form map of
  the hand-crafted text embeddings, as B1) or ``text+prompts`` (of the text with learned prompts).
  ``b = 0`` with ``none`` is B0; ``b = 0`` with ``text`` is B1; ``b = 1`` is the CLAIR head.
- For a gallery blend ``b_p`` (from ``ClairConfig.selection_blends``), each query domain's options
  ``(b_d, map)`` are scored on every fold, at the fold-chosen epoch, against the gallery embedded
  with ``b_p``: mAP@200 of the fold's held-out classes. The gain of an option is its score minus
  B0's on the same fold (raw queries, raw gallery).
- An option is trusted when its mean gain exceeds the fold-to-fold spread of that gain (sample
  standard deviation) by more than ``selection_margin``: ``mean - spread > margin``. A domain takes
  the trusted option with the highest ``mean - spread`` (the simpler one on ties).
- ``b_p = 0`` is always possible: a domain with no trusted option keeps B0 exactly (raw queries,
  raw gallery). A ``b_p > 0`` is possible only when every query domain has a trusted option
  against that gallery, since no query path can reproduce B0 against a changed gallery. Among the
  possible gallery blends the one with the highest mean ``mean - spread`` over domains wins.

The decision lives in the shipped :class:`ClairModel` (its ``routing`` and per-domain maps), so
every consumer that embeds through ``embed_features``/``embed_images`` applies it, and in the
training record (``clair.json`` ``training.selection``): folds, epoch, threshold, and per domain
the choice, its gain, the spread and the fold scores of B0, B1 and the head.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.head import ClairHead
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.metrics import retrieval_metrics
from clair_vec.method.model import ClairModel
from clair_vec.method.prompts import PromptLearner, combine_text_embeddings, hand_crafted_text_embeddings
from clair_vec.training.features import DomainFeatures
from clair_vec.training.folds import FoldRun, best_epoch, subset

log = logging.getLogger(__name__)
K = 200
CLAIR, MAPPING_ONLY, RAW_CLIP, PER_DOMAIN = "clair", "mapping_only", "raw_clip", "per_domain"
MAP_NONE, MAP_TEXT, MAP_PROMPTS = "none", "text", "text+prompts"
MAX_QUERIES, MAX_GALLERY = 400, 2000  # per domain and fold: the option grid is scored many times


def mapping_only_model(foundation: FoundationModel, classes: Sequence[str], domains: Sequence[str], config: ClairConfig) -> ClairModel:
    """B1: raw CLIP features (identity head), mapped into the pivot domain by the text-only mapping."""
    text = {d: hand_crafted_text_embeddings(foundation, classes, d, config.templates) for d in domains}
    mapping = DomainMapping.fit(text, config.pivot_domain, config.mapping, config.mapping_lambda)
    head = ClairHead.identity(foundation.embed_dim, config.head_hidden)
    return ClairModel(foundation, head, mapping, classes, text, config.replace(prompt_side="none"))


# ---------------------------------------------------------------------- scoring the options on one fold
def _head(config: ClairConfig, dim: int, state: dict) -> ClairHead:
    head = ClairHead(dim, int(state["mlp.0.weight"].shape[0]), config.head_alpha_init, center=config.head_center)
    head.load_state_dict(state)
    return head.eval()


def fold_maps(foundation: FoundationModel, config: ClairConfig, classes: Sequence[str], domains: Sequence[str],
              prompt_state: dict | None) -> dict[str, DomainMapping | None]:  # fmt: skip
    """The candidate maps of a model trained on ``classes``: none, hand-crafted text, text + prompts."""
    hand = {d: hand_crafted_text_embeddings(foundation, classes, d, config.templates) for d in domains}
    maps: dict[str, DomainMapping | None] = {MAP_NONE: None,
                                             MAP_TEXT: DomainMapping.fit(hand, config.pivot_domain, config.mapping, config.mapping_lambda)}  # fmt: skip
    if prompt_state is not None and foundation.supports_prompt_learning:
        learner = PromptLearner(foundation, domains, config.n_ctx, config.templates)
        learner.load_state_dict(prompt_state)
        with torch.no_grad():
            learned = {d: combine_text_embeddings(hand[d], learner(list(classes), d)) for d in domains}
        maps[MAP_PROMPTS] = DomainMapping.fit(learned, config.pivot_domain, config.mapping, config.mapping_lambda)
    return maps


def _sample(f: DomainFeatures, cap: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    rows = list(range(len(f)))
    if len(rows) > cap:
        rows = sorted(random.Random(seed).sample(rows, cap))
    return f.clean[rows], [f.labels[i] for i in rows]


@torch.no_grad()
def score_options(
    head: ClairHead,
    maps: dict[str, DomainMapping | None],
    validation: dict[str, DomainFeatures],
    pivot: str,
    blends: Sequence[float],
    *,
    seed: int = 0,
) -> dict[tuple[float, str, float, str], float]:
    """mAP@200 of every (gallery blend, query domain, query blend, map) on one fold's held-out classes."""
    def blend(v: torch.Tensor, h: torch.Tensor, b: float) -> torch.Tensor:
        return v if b == 0 else h if b == 1 else F.normalize((1 - b) * v + b * h, dim=-1)

    feats = {d: _sample(f, MAX_GALLERY if d == pivot else MAX_QUERIES, seed) for d, f in validation.items() if len(f)}
    if pivot not in feats:
        return {}  # no gallery image of this fold's classes: the fold says nothing
    raw = {d: F.normalize(x.float(), dim=-1) for d, (x, _) in feats.items()}
    headed = {d: head(x.float()) for d, (x, _) in feats.items()}
    out: dict[tuple[float, str, float, str], float] = {}
    g_labels = feats[pivot][1]
    for bp in blends:
        g = blend(raw[pivot], headed[pivot], bp).numpy()
        for d in sorted(set(feats) - {pivot}):
            for bd in blends:
                e = blend(raw[d], headed[d], bd)
                for name, mapping in maps.items():
                    q = (mapping.apply(e, d) if mapping is not None else e).numpy()
                    out[(bp, d, bd, name)] = retrieval_metrics(q, feats[d][1], g, g_labels, map_ks=(K,), prec_ks=())[f"mAP@{K}"]
    return out


def fold_tables(
    runs: Sequence[FoldRun],
    epoch: int,
    foundation: FoundationModel,
    config: ClairConfig,
    features: dict[str, DomainFeatures],
) -> list[dict[tuple[float, str, float, str], float]]:
    """:func:`score_options` of every fold at ``epoch``."""
    tables = []
    domains = sorted(set(features) - {config.pivot_domain})
    for i, run in enumerate(runs):
        snap = run.snapshots[min(epoch, len(run.snapshots) - 1)]
        val = subset(features, run.validation_classes, views=False)
        maps = fold_maps(foundation, config, run.training_classes, sorted(features), snap["prompts"])
        table = score_options(_head(config, foundation.embed_dim, snap["head"]), maps, val, config.pivot_domain,
                              sorted(set(config.selection_blends)), seed=config.seed * 1000 + i)  # fmt: skip
        if {k[1] for k in table} == set(domains):  # folds lacking a domain's images are left out of the decision
            tables.append(table)
    return tables


# ---------------------------------------------------------------------- the decision
def _stats(scores: Sequence[float], base: Sequence[float]) -> dict[str, float]:
    gains = [s - b for s, b in zip(scores, base, strict=True)]
    mean = statistics.fmean(gains)
    spread = statistics.stdev(gains) if len(gains) > 1 else math.inf
    return {"gain": mean, "spread": spread, "lower": mean - spread, "score": statistics.fmean(scores)}


def decide(tables: Sequence[dict[tuple[float, str, float, str], float]], margin: float) -> dict[str, Any]:
    """The gallery blend and each query domain's (blend, map) from per-fold option scores (see module doc)."""
    keys = list(tables[0])
    blends = sorted({k[0] for k in keys})
    domains = sorted({k[1] for k in keys})
    maps = [m for m in (MAP_NONE, MAP_TEXT, MAP_PROMPTS) if any(k[3] == m for k in keys)]
    base = {d: [t[(0.0, d, 0.0, MAP_NONE)] for t in tables] for d in domains}
    best_plan: dict[str, Any] | None = None
    for bp in blends:
        plan: dict[str, Any] = {}
        for d in domains:
            pick, runner_up = None, None
            for bd in blends:
                for m in maps:
                    if (bp, bd, m) == (0.0, 0.0, MAP_NONE):
                        continue
                    s = _stats([t[(bp, d, bd, m)] for t in tables], base[d])
                    option = {"blend": bd, "mapping": m, **s}
                    if s["lower"] > margin and (pick is None or s["lower"] > pick["lower"] + 1e-12):
                        pick = {**option, "trusted": True}
                    if runner_up is None or s["lower"] > runner_up["lower"] + 1e-12:
                        runner_up = option
            if pick is None and bp == 0.0:
                # nothing beat raw CLIP beyond the spread: raw CLIP, and the closest contender for the record
                pick = {"blend": 0.0, "mapping": MAP_NONE, **_stats(base[d], base[d]), "trusted": False,
                        "best_other": {k: runner_up[k] for k in ("blend", "mapping", "gain", "spread")} if runner_up else None}  # fmt: skip
            if pick is None:
                break
            plan[d] = pick
        if len(plan) < len(domains):
            continue  # a changed gallery needs a trusted option for every query domain
        value = statistics.fmean(p["lower"] if p["trusted"] else 0.0 for p in plan.values()) if plan else 0.0
        if best_plan is None or value > best_plan["value"] + 1e-12:
            best_plan = {"gallery_blend": bp, "domains": plan, "value": value}
    assert best_plan is not None  # b_p = 0 always has a plan
    return best_plan


def _reference(tables: Sequence[dict], d: str, bd: float, m: str) -> list[float]:
    return [round(t[(0.0, d, bd, m)], 4) for t in tables if (0.0, d, bd, m) in t]


def select_on_folds(
    runs: Sequence[FoldRun],
    foundation: FoundationModel,
    config: ClairConfig,
    features: dict[str, DomainFeatures],
    threshold_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Early-stopping epoch, gallery blend and per-domain decisions from the fold runs, as a record."""
    epoch = best_epoch(runs)
    tables = fold_tables(runs, epoch, foundation, config, features)
    if len(tables) < 2:  # no spread can be measured: nothing is trusted
        queries = sorted(set(features) - {config.pivot_domain})
        tables = [{(0.0, d, 0.0, MAP_NONE): 0.0 for d in queries}] * 2
    plan = decide(tables, config.selection_margin)
    head_map = MAP_PROMPTS if any(k[3] == MAP_PROMPTS for k in tables[0]) else MAP_TEXT
    domains = {}
    for d, p in plan["domains"].items():
        domains[d] = {
            "blend": p["blend"], "mapping": p["mapping"], "trusted": p["trusted"],
            "gain": _round(p["gain"]), "spread": _round(p["spread"]), "lower": _round(p["lower"]),
            **({"best_other": {k: _round(v) if isinstance(v, float) and k != "blend" else v for k, v in p["best_other"].items()}}
               if p.get("best_other") else {}),
            "folds": {"raw_clip": _reference(tables, d, 0.0, MAP_NONE), "mapping_only": _reference(tables, d, 0.0, MAP_TEXT),
                      "clair": _reference(tables, d, 1.0, head_map),
                      "chosen": [round(t[(plan["gallery_blend"], d, p["blend"], p["mapping"])], 4) for t in tables]},
        }  # fmt: skip
    return {
        "metric": f"mAP@{K} of each fold's held-out seen classes, query domain -> gallery",
        "rule": "an option ships for a domain when its mean gain over raw CLIP minus the fold-to-fold spread of that "
                "gain exceeds the margin; otherwise raw CLIP",
        "margin": config.selection_margin,
        "epoch": epoch,
        "folds": [r.as_record() for r in runs],
        "threshold": threshold_record or {"chosen": config.confidence_threshold},
        "gallery_blend": plan["gallery_blend"],
        "domains": domains,
    }  # fmt: skip


def _round(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


# ---------------------------------------------------------------------- the shipped model
def apply_selection(trained: ClairModel, selection: dict[str, Any]) -> ClairModel:
    """``trained`` (final head, its text) with the selection's blends and per-domain maps."""
    cfg, fm = trained.config, trained.foundation
    pivot = trained.pivot
    maps = fold_maps(fm, cfg, trained.classes, trained.domains, trained.prompt_state)
    eye = torch.eye(trained.dim)
    chosen = {}
    for d in trained.domains:
        if d == pivot:
            continue
        decision = selection["domains"].get(d, {"mapping": MAP_NONE})
        mapping = maps.get(decision["mapping"]) or maps[MAP_NONE]
        chosen[d] = mapping.maps[d] if mapping is not None else (eye.clone(), torch.zeros(trained.dim))
    routing = {d: float(selection["domains"].get(d, {"blend": 0.0})["blend"]) for d in trained.domains if d != pivot}
    routing[pivot] = float(selection["gallery_blend"])
    head = trained.head if any(b > 0 for b in routing.values()) else ClairHead.identity(trained.dim, cfg.head_hidden)
    return ClairModel(fm, head, DomainMapping(pivot, chosen), trained.classes, trained.text_embeddings, cfg,
                      trained.prompt_state, dict(trained.record), routing)  # fmt: skip


def shipped_kind(selection: dict[str, Any]) -> str:
    blends = [selection["gallery_blend"], *(d["blend"] for d in selection["domains"].values())]
    if all(b == 1.0 for b in blends):
        return CLAIR
    if all(b == 0.0 for b in blends):
        return MAPPING_ONLY if any(d["mapping"] != MAP_NONE for d in selection["domains"].values()) else RAW_CLIP
    return PER_DOMAIN


def _label(decision: dict[str, Any]) -> str:
    if decision["blend"] == 0.0:
        return "raw CLIP" if decision["mapping"] == MAP_NONE else "raw CLIP + text mapping (B1)"
    what = "CLAIR head" if decision["blend"] == 1.0 else f"{decision['blend']:g} head + {1 - decision['blend']:g} raw CLIP"
    return what + ("" if decision["mapping"] == MAP_NONE else f" + {decision['mapping']} mapping")


def _describe(decision: dict[str, Any]) -> str:
    """One domain's decision with its evidence, for the reason and the warning."""
    if decision.get("trusted", True):
        return f"{_label(decision)} (gain {decision['gain'] or 0:+.4f} over raw CLIP, fold spread {decision['spread'] or 0:.4f})"
    other = decision.get("best_other")
    if not other:
        return "raw CLIP"
    spread = other["spread"] if other["spread"] is not None else float("inf")
    return (f"raw CLIP (the best other option, {_label(other)}, gained {other['gain'] or 0:+.4f} with a fold spread of "
            f"{spread:.4f})")


def ship(trained: ClairModel, selection: dict[str, Any] | None, *, why_none: str) -> tuple[ClairModel, dict[str, Any]]:
    """The model to ship and the record of why.

    ``selection`` is :func:`select_on_folds`'s record, or ``None`` when there are no folds:
    ``why_none`` is ``"disabled"`` (the user turned validation off: the trained head ships
    unchecked, with a warning) or a sentence saying why no fold was possible (raw CLIP ships).
    """
    if selection is None:
        if why_none == "disabled":
            warning = ("validation is off (--val-fraction 0 or selection_folds=0): the trained head ships unchecked, and "
                       "may search unseen classes worse than raw CLIP")  # fmt: skip
            return trained, {"shipped": CLAIR, "selection": None, "reason": warning, "warning": warning}
        warning = (f"{why_none}: nothing can show the trained head beats raw CLIP, so raw CLIP ships. Add seen classes, "
                   "or pass --val-fraction 0 to ship the trained head unchecked.")  # fmt: skip
        selection = {"gallery_blend": 0.0, "domains": {d: {"blend": 0.0, "mapping": MAP_NONE} for d in trained.domains
                                                       if d != trained.pivot}, "folds": [], "reason": why_none}  # fmt: skip
        log.info(warning)
        return apply_selection(trained, selection), {"shipped": RAW_CLIP, "selection": selection, "reason": warning,
                                                     "warning": warning}  # fmt: skip
    model = apply_selection(trained, selection)
    kind = shipped_kind(selection)
    per_domain = "; ".join(f"{d}: {_describe(p)}" for d, p in selection["domains"].items())
    reason = (f"per query domain on {len(selection['folds'])} folds of the seen classes, gallery "
              f"{selection['gallery_blend']:g} head: {per_domain}")
    record: dict[str, Any] = {"shipped": kind, "selection": selection, "reason": reason, "validation": _validation(selection)}
    kept_raw = [d for d, p in selection["domains"].items() if p["blend"] == 0.0]
    if kept_raw:
        warning = (f"the trained CLAIR head did not beat raw CLIP on the validation folds by more than their spread for "
                   f"query domains {kept_raw}; they are searched without it. More or cleaner training data, or other "
                   "ClairConfig settings, may help.")  # fmt: skip
        log.info(warning)
        record["warning"] = warning
    return model, record


def _validation(selection: dict[str, Any]) -> dict[str, Any]:
    """Mean fold scores per method (the summary the report and the CLI print)."""
    out: dict[str, Any] = {"metric": selection["metric"]}
    for method in ("raw_clip", "mapping_only", "clair", "chosen"):
        per = {d: statistics.fmean(p["folds"][method]) for d, p in selection["domains"].items() if p["folds"][method]}
        out[method] = {**{d: round(v, 4) for d, v in per.items()}, "mean": round(statistics.fmean(per.values()), 4) if per else None}
    return out

