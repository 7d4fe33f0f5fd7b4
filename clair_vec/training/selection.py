"""Which model ships, decided per query domain on folds of the seen classes.

The promise: training never makes search worse than what a user had before training, raw CLIP
(the spec's B0), and ships what training gained where the folds show it. The evidence is the folds
of :mod:`clair_vec.training.folds`: each trained on some seen classes and validated, as
zero-shot, on the others.

The scheme (the gallery is embedded once, so every choice is made against one gallery embedding):

- An embedding *path* is a blend of raw CLIP and the head, ``normalize((1 - b) v + b head(v))``,
  optionally centred per domain (:mod:`clair_vec.method.centering`, centres fitted on the
  training images of the fold or of the final model), then a map into the gallery domain: ``none``
  (identity), ``text`` (the closed-form map of the hand-crafted text embeddings, as B1) or
  ``text+prompts`` (of the text with learned prompts); a centred path takes the map fitted on
  text embeddings centred the same way. Raw CLIP is ``b = 0``, uncentred, no map.
- For every gallery path, each query domain's options (paths centred as the gallery is, times
  maps) are scored on every fold, at the last epoch, against the gallery embedded by that path:
  mAP@200 of the fold's held-out classes. The gain of an option is its score minus raw CLIP's on
  the same fold (raw queries, raw gallery).
- An option is trusted when its mean gain, less one standard error of that mean (the standard
  deviation of the fold gains over the square root of their number), exceeds
  ``selection_margin``: ``mean - stderr > margin``.
- The trained model as training built it (the head, centred, with its text map) ships whole when
  it is trusted for one query domain and no query domain's mean gain is below the margin
  (``selection_whole="one_trusted"``; ``"all_trusted"`` asks for every query domain): it is the
  method the ablation measured, and the one whose gains carried over to unseen classes (centring
  alone, trusted as often on the folds, lost on the demo's unseen classes where the whole model
  gained). A domain that ships with it untrusted is recorded as ``carried``.
- Otherwise the gallery stays raw CLIP, and each query domain takes its most trusted option
  against it (the text map, or the uncentred head), or keeps raw CLIP exactly.

The decision lives in the shipped :class:`ClairModel` (its ``routing``, centres and per-domain
maps), so every consumer that embeds through ``embed_features``/``embed_images`` applies it, and in
the training record (``clair.json`` ``training.selection``): folds, threshold, and per domain the
choice, its gain, the standard error and the fold scores of B0, B1, the trained model and the
choice.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from clair_vec.method.centering import DomainCenters
from clair_vec.method.checkpoint_schema import MAX_DIM
from clair_vec.method.config import ClairConfig
from clair_vec.method.devices import module_device
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.head import ClairHead
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.metrics import retrieval_metrics
from clair_vec.method.model import ClairModel
from clair_vec.method.prompts import PromptLearner, combine_text_embeddings, hand_crafted_text_embeddings
from clair_vec.training.features import DomainFeatures
from clair_vec.training.folds import FoldRun, subset

log = logging.getLogger(__name__)
K = 200
CLAIR, MAPPING_ONLY, RAW_CLIP, PER_DOMAIN = "clair", "mapping_only", "raw_clip", "per_domain"
CENTRED_MAP = "centred_mapping"  # raw CLIP centred per domain + the text map fitted on centred text: no training
MAP_NONE, MAP_TEXT, MAP_PROMPTS = "none", "text", "text+prompts"
MAX_QUERIES, MAX_GALLERY = 400, 2000  # per domain and fold: the option grid is scored many times
#: an embedding path: (blend of the head, centred per domain)
EmbeddingPath = tuple[float, bool]
RAW: EmbeddingPath = (0.0, False)
CENTRED: EmbeddingPath = (0.0, True)
OptionKey = tuple[EmbeddingPath, str, EmbeddingPath, str]  # (gallery path, query domain, query path, map)


def embedding_paths(config: ClairConfig) -> list[EmbeddingPath]:
    """Raw CLIP, each blend of the head against a raw gallery (uncentred), the trained path, and,
    when the method centres, raw CLIP centred (the method's training-free part)."""
    blends = sorted(set(config.selection_blends) - {0.0})
    centred = [CENTRED] if config.domain_center else []
    return list(dict.fromkeys([RAW, *((b, False) for b in blends), trained_path(config), *centred]))


def whole_options(config: ClairConfig, foundation: FoundationModel) -> list[tuple[EmbeddingPath, str]]:
    """The options that ship whole (gallery and queries on one path), in order of preference: the
    trained model as trained, then raw CLIP centred per domain with the centred text map."""
    return [(trained_path(config), trained_map(config, foundation)), *([(CENTRED, MAP_TEXT)] if config.domain_center else [])]


def trained_path(config: ClairConfig) -> EmbeddingPath:
    """The path of the trained model as training built it: the head, centred when the method centres."""
    return (1.0, config.domain_center)


def trained_map(config: ClairConfig, foundation: FoundationModel) -> str:
    """The map the trained model carries: the text map, with learned prompts when it learned them."""
    learns_prompts = config.prompt_side == "text" and config.w_prompt > 0 and foundation.supports_prompt_learning
    return MAP_PROMPTS if learns_prompts else MAP_TEXT


def mapping_only_model(foundation: FoundationModel, classes: Sequence[str], domains: Sequence[str], config: ClairConfig) -> ClairModel:
    """B1: raw CLIP features (identity head), mapped into the pivot domain by the text-only mapping."""
    text = {d: hand_crafted_text_embeddings(foundation, classes, d, config.templates) for d in domains}
    mapping = DomainMapping.fit(text, config.pivot_domain, config.mapping, config.mapping_lambda)
    head = ClairHead.identity(foundation.embed_dim, config.head_hidden)  # raw CLIP: one id whatever the activation
    return ClairModel(foundation, head, mapping, classes, text, config.replace(prompt_side="none"))


# ---------------------------------------------------------------------- scoring the options on one fold
def _head(config: ClairConfig, dim: int, state: dict) -> ClairHead:
    head = ClairHead(dim, int(state["mlp.0.weight"].shape[0]), config.head_alpha_init, center=config.head_center,
                     activation=config.head_activation)  # fmt: skip
    head.load_state_dict(state)
    return head.eval()


Maps = dict[tuple[str, bool], DomainMapping | None]


def fold_maps(foundation: FoundationModel, config: ClairConfig, classes: Sequence[str], domains: Sequence[str],
              prompt_state: dict | None) -> Maps:  # fmt: skip
    """The candidate maps of a model trained on ``classes``, by (name, for centred features): none,
    hand-crafted text, text + prompts; the centred ones are fitted on centred text embeddings."""
    texts = {MAP_TEXT: {d: hand_crafted_text_embeddings(foundation, classes, d, config.templates) for d in domains}}
    if prompt_state is not None and foundation.supports_prompt_learning:
        learner = PromptLearner(foundation, domains, config.n_ctx, config.templates)
        learner.load_state_dict(prompt_state)
        with torch.no_grad():
            texts[MAP_PROMPTS] = {d: combine_text_embeddings(texts[MAP_TEXT][d], learner(list(classes), d)) for d in domains}
    maps: Maps = {(MAP_NONE, False): None, (MAP_NONE, True): None}
    for name, text in texts.items():
        for centered in (False, True):
            maps[(name, centered)] = DomainMapping.fit(text, config.pivot_domain, config.mapping, config.mapping_lambda,
                                                       center=centered)  # fmt: skip
    return maps


def _blend(v: torch.Tensor, h: torch.Tensor, b: float) -> torch.Tensor:
    return v if b == 0 else h if b == 1 else F.normalize((1 - b) * v + b * h, dim=-1)


@torch.no_grad()
def path_centers(head: ClairHead, paths: Sequence[EmbeddingPath], training: Mapping[str, torch.Tensor]) -> dict[EmbeddingPath, DomainCenters]:
    """Per centred path, each domain's mean embedding over ``training`` (CLIP features of the
    training images): the centres a model trained on those images would carry."""
    return {p: DomainCenters.fit(training, lambda v, _d, b=p[0]: _blend(F.normalize(v.float(), dim=-1), head(v.float()), b))
            for p in paths if p[1]}  # fmt: skip


def _sample(f: DomainFeatures, cap: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    rows = list(range(len(f)))
    if len(rows) > cap:
        rows = sorted(random.Random(seed).sample(rows, cap))
    return f.clean[rows], [f.labels[i] for i in rows]


@torch.no_grad()
def score_options(
    head: ClairHead,
    maps: Maps,
    validation: dict[str, DomainFeatures],
    pivot: str,
    paths: Sequence[EmbeddingPath],
    centers: Mapping[EmbeddingPath, DomainCenters],
    *,
    seed: int = 0,
) -> dict[OptionKey, float]:
    """mAP@200 of every (gallery path, query domain, query path, map) on one fold's held-out classes."""
    feats = {d: _sample(f, MAX_GALLERY if d == pivot else MAX_QUERIES, seed) for d, f in validation.items() if len(f)}
    if pivot not in feats:
        return {}  # no gallery image of this fold's classes: the fold says nothing
    raw = {d: F.normalize(x.float(), dim=-1) for d, (x, _) in feats.items()}
    headed = {d: head(x.float()) for d, (x, _) in feats.items()}

    def embed(d: str, path: EmbeddingPath) -> torch.Tensor:
        e = _blend(raw[d], headed[d], path[0])
        return centers[path].apply(e, d) if path[1] else e

    out: dict[OptionKey, float] = {}
    g_labels = feats[pivot][1]
    for gp in paths:
        g = embed(pivot, gp).numpy()
        for d in sorted(set(feats) - {pivot}):
            for qp in (p for p in paths if p[1] == gp[1]):
                e = embed(d, qp)
                for (name, centered), mapping in maps.items():
                    if centered != qp[1]:
                        continue  # a centred path takes the map fitted on centred text, and only it
                    q = (mapping.apply(e, d) if mapping is not None else e).numpy()
                    out[(gp, d, qp, name)] = retrieval_metrics(q, feats[d][1], g, g_labels, map_ks=(K,), prec_ks=())[f"mAP@{K}"]
    return out


def fold_tables(
    runs: Sequence[FoldRun],
    foundation: FoundationModel,
    config: ClairConfig,
    features: dict[str, DomainFeatures],
) -> list[dict[OptionKey, float]]:
    """:func:`score_options` of every fold at its last epoch."""
    tables = []
    domains = sorted(set(features) - {config.pivot_domain})
    paths = embedding_paths(config)
    for i, run in enumerate(runs):
        snap = run.snapshots[-1]
        head = _head(config, foundation.embed_dim, snap["head"])
        val = subset(features, run.validation_classes, views=False)
        train = subset(features, run.validation_classes, views=False, exclude=True)
        centers = path_centers(head, paths, {d: f.clean for d, f in train.items() if len(f)})
        maps = fold_maps(foundation, config, run.training_classes, sorted(features), snap["prompts"])
        table = score_options(head, maps, val, config.pivot_domain, paths, centers, seed=config.seed * 1000 + i)
        if {k[1] for k in table} == set(domains):  # folds lacking a domain's images are left out of the decision
            tables.append(table)
    return tables


# ---------------------------------------------------------------------- the decision
def _stats(scores: Sequence[float], base: Sequence[float]) -> dict[str, float]:
    gains = [s - b for s, b in zip(scores, base, strict=True)]
    mean = statistics.fmean(gains)
    stderr = statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else math.inf
    return {"gain": mean, "stderr": stderr, "lower": mean - stderr, "score": statistics.fmean(scores)}


def _option(path: EmbeddingPath, mapping: str) -> dict[str, Any]:
    return {"blend": path[0], "centered": path[1], "mapping": mapping}


def _best_trusted(options: list[dict[str, Any]], margin: float) -> dict[str, Any] | None:
    trusted = [o for o in options if o["lower"] > margin]
    return max(trusted, key=lambda o: o["lower"]) if trusted else None


def decide(tables: Sequence[dict[OptionKey, float]], margin: float, trained: tuple[EmbeddingPath, str] | None = None,
           *, whole: Sequence[tuple[EmbeddingPath, str]] = (), rule: str = "one_trusted") -> dict[str, Any]:  # fmt: skip
    """The gallery path and each query domain's (path, map) from per-fold option scores (see module doc).

    ``trained`` is the trained model's own option (its path and map) and ``whole`` further options
    that ship whole, after it in order of preference: the first that ``rule`` accepts against its
    own gallery ships (``one_trusted``: trusted for one query domain, no domain's mean gain below
    the margin; ``all_trusted``: trusted for every query domain). Otherwise the gallery stays raw and
    each domain takes its most trusted option against the raw gallery, or raw CLIP."""
    keys = list(tables[0])
    domains = sorted({k[1] for k in keys})
    base = {d: [t[(RAW, d, RAW, MAP_NONE)] for t in tables] for d in domains}

    def option(key: OptionKey) -> dict[str, Any]:
        return {**_option(key[2], key[3]), **_stats([t[key] for t in tables], base[key[1]])}

    for path, mapping in [*([trained] if trained is not None else []), *whole]:
        if path == RAW:
            continue
        plan = {d: option((path, d, path, mapping)) for d in domains if (path, d, path, mapping) in tables[0]}
        if len(plan) < len(domains):
            continue
        trusted = {d: p["lower"] > margin for d, p in plan.items()}
        # with no query domain (a gallery-only model) there is nothing to trust: it ships as it always did
        accepted = all(trusted.values()) if rule == "all_trusted" or not trusted else (
            any(trusted.values()) and all(p["gain"] >= margin for p in plan.values()))
        if accepted:
            return {"gallery": path, "domains": {d: {**p, "trusted": trusted[d], **({} if trusted[d] else {"carried": True})}
                                                 for d, p in plan.items()}}  # fmt: skip
    plan = {}
    for d in domains:
        options = [option(k) for k in keys if k[0] == RAW and k[1] == d and k != (RAW, d, RAW, MAP_NONE)]
        pick = _best_trusted(options, margin)
        if pick is not None:
            plan[d] = {**pick, "trusted": True}
            continue
        # nothing beat raw CLIP beyond the noise: raw CLIP, and the closest contender for the record
        contenders = options + ([option((trained[0], d, trained[0], trained[1]))] if trained and (trained[0], d, trained[0], trained[1]) in tables[0] else [])
        runner_up = max(contenders, key=lambda o: o["lower"], default=None)
        plan[d] = {**_option(RAW, MAP_NONE), **_stats(base[d], base[d]), "trusted": False,
                   "best_other": {k: runner_up[k] for k in ("blend", "centered", "mapping", "gain", "stderr")} if runner_up else None}  # fmt: skip
    return {"gallery": RAW, "domains": plan}


def _scores(tables: Sequence[dict], key: OptionKey) -> list[float]:
    return [round(t[key], 4) for t in tables if key in t]


def select_on_folds(
    runs: Sequence[FoldRun],
    foundation: FoundationModel,
    config: ClairConfig,
    features: dict[str, DomainFeatures],
    threshold_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The gallery path and per-domain decisions from the fold runs, as a record."""
    tables = fold_tables(runs, foundation, config, features)
    if len(tables) < 2:  # no standard error can be measured: nothing is trusted
        queries = sorted(set(features) - {config.pivot_domain})
        tables = [{(RAW, d, RAW, MAP_NONE): 0.0 for d in queries}] * 2
    (trained, tmap), *whole = whole_options(config, foundation)
    plan = decide(tables, config.selection_margin, (trained, tmap), whole=whole, rule=config.selection_whole)
    gp = plan["gallery"]
    domains = {}
    for d, p in plan["domains"].items():
        qp = (p["blend"], p["centered"])
        domains[d] = {
            **_option(qp, p["mapping"]), "trusted": p["trusted"], **({"carried": True} if p.get("carried") else {}),
            "gain": _round(p["gain"]), "stderr": _round(p["stderr"]), "lower": _round(p["lower"]),
            **({"best_other": {k: _round(v) if k in ("gain", "stderr") else v for k, v in p["best_other"].items()}}
               if p.get("best_other") else {}),
            "folds": {"raw_clip": _scores(tables, (RAW, d, RAW, MAP_NONE)), "mapping_only": _scores(tables, (RAW, d, RAW, MAP_TEXT)),
                      "clair": _scores(tables, (trained, d, trained, tmap)),
                      "centred_mapping": _scores(tables, (CENTRED, d, CENTRED, MAP_TEXT)),
                      "chosen": _scores(tables, (gp, d, qp, p["mapping"]))},
        }  # fmt: skip
    return {
        "metric": f"mAP@{K} of each fold's held-out seen classes, query domain -> gallery",
        "rule": "an option ships for a domain when its mean gain over raw CLIP, less one standard error of that mean "
                "over the folds, exceeds the margin; otherwise raw CLIP"
                + ("; a model that ships whole may carry a domain whose mean gain is not below the margin"
                   if config.selection_whole == "one_trusted" else ""),
        "whole": config.selection_whole,
        "margin": config.selection_margin,
        "epoch": min(len(r.curve) for r in runs) - 1 if runs else 0,
        "folds": [r.as_record() for r in runs],
        "threshold": threshold_record or {"chosen": config.confidence_threshold},
        "gallery_blend": gp[0],
        "gallery_centered": gp[1],
        "domains": domains,
    }  # fmt: skip


def _round(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


# ---------------------------------------------------------------------- the shipped model
def average_fold_heads(trained: ClairModel, runs: Sequence[FoldRun]) -> ClairModel:
    """``trained`` with its head averaged with the folds' last-epoch heads when the config says
    ``head_ensemble="folds"`` (:meth:`ClairHead.average`); as it is otherwise, or without folds.
    The folds' evidence is each fold's own head, not this average: the guard stays a judgement of
    the method as trained, and the average is the variance one head's random start leaves out."""
    if trained.config.head_ensemble != "folds" or not runs:
        return trained
    dev = module_device(trained.head)
    heads = [trained.head, *(_head(trained.config, trained.dim, r.snapshots[-1]["head"]).to(dev) for r in runs)]
    width = sum(h.mlp[0].out_features for h in heads)
    if width > MAX_DIM:  # a checkpoint holds a head at most this wide: one that could not load is not shipped
        log.warning("head_ensemble=folds: %d heads side by side would be %d units wide, above a checkpoint's %d; the "
                    "final head ships alone (fewer selection_folds or a narrower head_hidden would fit)", len(heads), width,
                    MAX_DIM)  # fmt: skip
        return trained
    return ClairModel(trained.foundation, ClairHead.average(heads), trained.mapping, trained.classes, trained.text_embeddings,
                      trained.config, trained.prompt_state, trained.record, trained.routing, trained.centers)  # fmt: skip


def apply_selection(trained: ClairModel, selection: dict[str, Any], features: Mapping[str, torch.Tensor]) -> ClairModel:
    """``trained`` (final head, its text) with the selection's blends, centres and per-domain maps;
    centres are fitted on ``features`` (CLIP features of each domain's training images)."""
    cfg, fm = trained.config, trained.foundation
    pivot = trained.pivot
    maps = fold_maps(fm, cfg, trained.classes, trained.domains, trained.prompt_state)
    eye = torch.eye(trained.dim)
    chosen = {}
    paths = {pivot: (float(selection["gallery_blend"]), bool(selection.get("gallery_centered", False)))}
    for d in trained.domains:
        if d == pivot:
            continue
        decision = selection["domains"].get(d, _option(RAW, MAP_NONE))
        paths[d] = (float(decision["blend"]), bool(decision.get("centered", False)))
        mapping = maps.get((decision["mapping"], paths[d][1]))
        chosen[d] = mapping.maps[d] if mapping is not None else (eye.clone(), torch.zeros(trained.dim))
    routing = {d: b for d, (b, _) in paths.items()}
    head = trained.head if any(b > 0 for b in routing.values()) else ClairHead.identity(trained.dim, cfg.head_hidden)
    head.eval()
    centered = {d: features[d] for d, (_, c) in paths.items() if c and d in features}
    dev = module_device(head)
    centers = DomainCenters.fit(centered, lambda v, d: _blend(F.normalize(v.float(), dim=-1), head(v.to(dev).float()).cpu(),
                                                              routing[d]))  # fmt: skip
    return ClairModel(fm, head, DomainMapping(pivot, chosen), trained.classes, trained.text_embeddings, cfg,
                      trained.prompt_state, dict(trained.record), routing, centers)  # fmt: skip


def shipped_kind(selection: dict[str, Any]) -> str:
    options = [(selection["gallery_blend"], selection.get("gallery_centered", False)),
               *((d["blend"], d.get("centered", False)) for d in selection["domains"].values())]  # fmt: skip
    if all(b == 1.0 for b, _ in options):
        return CLAIR
    if all(o == RAW for o in options):
        return MAPPING_ONLY if any(d["mapping"] != MAP_NONE for d in selection["domains"].values()) else RAW_CLIP
    if all(o == CENTRED for o in options):
        return CENTRED_MAP
    return PER_DOMAIN


def _label(decision: dict[str, Any]) -> str:
    blend, centered = decision["blend"], decision.get("centered", False)
    if blend == 0.0:
        what = "raw CLIP" + (", centred per domain" if centered else "")
        return what if decision["mapping"] == MAP_NONE else what + " + text mapping" + ("" if centered else " (B1)")
    what = "CLAIR head" if blend == 1.0 else f"{blend:g} head + {1 - blend:g} raw CLIP"
    what += ", centred per domain" if centered else ""
    return what + ("" if decision["mapping"] == MAP_NONE else f" + {decision['mapping']} mapping")


def _describe(decision: dict[str, Any]) -> str:
    """One domain's decision with its evidence, for the reason and the warning."""
    if decision.get("trusted", True):
        return f"{_label(decision)} (gain {decision['gain'] or 0:+.4f} over raw CLIP, standard error {decision['stderr'] or 0:.4f})"
    if decision.get("carried"):
        return (f"{_label(decision)} (gain {decision['gain'] or 0:+.4f} over raw CLIP, standard error {decision['stderr'] or 0:.4f}: "
                "not beyond the noise, not below raw CLIP; it ships with the model trusted on another domain)")
    other = decision.get("best_other")
    if not other:
        return "raw CLIP"
    stderr = other["stderr"] if other["stderr"] is not None else float("inf")
    return (f"raw CLIP (the best other option, {_label(other)}, gained {other['gain'] or 0:+.4f} with a standard error "
            f"of {stderr:.4f})")


def ship(trained: ClairModel, selection: dict[str, Any] | None, features: Mapping[str, torch.Tensor], *,
         why_none: str) -> tuple[ClairModel, dict[str, Any]]:  # fmt: skip
    """The model to ship and the record of why.

    ``selection`` is :func:`select_on_folds`'s record, or ``None`` when there are no folds:
    ``why_none`` is ``"disabled"`` (the user turned validation off: the trained model ships
    unchecked, with a warning) or a sentence saying why no fold was possible (raw CLIP ships).
    ``features``: CLIP features of each domain's training images, for the shipped centres.
    """
    if selection is None:
        if why_none == "disabled":
            warning = ("validation is off (--val-fraction 0 or selection_folds=0): the trained head ships unchecked, and "
                       "may search unseen classes worse than raw CLIP")  # fmt: skip
            return trained, {"shipped": CLAIR, "selection": None, "reason": warning, "warning": warning}
        warning = (f"{why_none}. Nothing can show the trained head beats raw CLIP, so raw CLIP ships; --val-fraction 0 "
                   "ships the trained head unchecked.")  # fmt: skip
        selection = {"gallery_blend": 0.0, "gallery_centered": False, "folds": [], "reason": why_none,
                     "domains": {d: _option(RAW, MAP_NONE) for d in trained.domains if d != trained.pivot}}  # fmt: skip
        log.info(warning)
        return apply_selection(trained, selection, features), {"shipped": RAW_CLIP, "selection": selection, "reason": warning,
                                                               "warning": warning}  # fmt: skip
    model = apply_selection(trained, selection, features)
    kind = shipped_kind(selection)
    per_domain = "; ".join(f"{d}: {_describe(p)}" for d, p in selection["domains"].items())
    gallery = _label({"blend": selection["gallery_blend"], "centered": selection.get("gallery_centered", False), "mapping": MAP_NONE})
    reason = f"per query domain on {len(selection['folds'])} folds of the seen classes, gallery {gallery}: {per_domain}"
    record: dict[str, Any] = {"shipped": kind, "selection": selection, "reason": reason, "validation": _validation(selection)}
    kept_raw = [d for d, p in selection["domains"].items() if not p.get("trusted", True) and not p.get("carried")]
    if kept_raw:
        warning = (f"training did not beat raw CLIP on the validation folds by more than their standard error for "
                   f"query domains {kept_raw}; they are searched with raw CLIP. More seen classes or more training "
                   "images make the folds' evidence stronger.")  # fmt: skip
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
