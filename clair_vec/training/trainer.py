"""Single-process CLAIR training over cached CLIP features (spec §3.9).

The same :class:`ClairTrainer` runs inside Ray Train workers: ``rank``/``world_size`` pick the
worker's slice of every batch, ``wrap_head`` lets Ray wrap the head in DDP, and
``all_gather``/``all_reduce`` keep memory banks and prompt gradients identical across workers.
With the defaults it is plain single-process training.

Devices: the cached CLIP features stay on the CPU (they can be larger than a GPU); the head, its
momentum copy, the memory banks, the pseudo-labels and the text embeddings live on the trainer's
device (``device``, or wherever ``wrap_head`` put the head: Ray moves it to the worker's GPU), and
each batch is moved there as it is drawn. Checkpoints hold CPU tensors.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from clair_vec.errors import DatasetError, TrainingDivergedError
from clair_vec.method import losses
from clair_vec.method.centering import DomainCenters, center_batch
from clair_vec.method.config import ClairConfig
from clair_vec.method.devices import module_device
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.head import ClairHead, momentum_copy, momentum_update
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.metrics import retrieval_metrics
from clair_vec.method.model import ClairModel
from clair_vec.method.prompts import PromptLearner, combine_text_embeddings, hand_crafted_text_embeddings
from clair_vec.method.pseudo_labels import PseudoLabels, pseudo_label
from clair_vec.progress import progress_bar
from clair_vec.training.features import DomainFeatures


@dataclass
class EpochStats:
    epoch: int
    loss: float
    terms: dict[str, float]
    kept_fraction: float
    mean_confidence: float
    pseudo_label_accuracy: float  # against ground truth; monitoring only
    seconds: float
    lr: float
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update({f"loss_{k}": v for k, v in self.terms.items()})
        d.update(self.extra)
        # NaN (no labeled image to measure against) is not JSON: strict parsers refuse the line
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


VAL_KEY = "val_mAP@200"


def _identity_gather(t: torch.Tensor) -> torch.Tensor:
    return t


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


class ClairTrainer:
    def __init__(
        self,
        config: ClairConfig,
        foundation: FoundationModel,
        classes: Sequence[str],
        features: dict[str, DomainFeatures],
        *,
        rank: int = 0,
        world_size: int = 1,
        wrap_head: Callable[[nn.Module], nn.Module] | None = None,
        all_gather: Callable[[torch.Tensor], torch.Tensor] = _identity_gather,
        all_reduce_mean: Callable[[torch.Tensor], None] | None = None,
        val_features: dict[str, DomainFeatures] | None = None,
        progress: bool = True,
        label: str = "",
        device: str | torch.device | None = None,
    ) -> None:
        self.cfg = config
        self.foundation = foundation
        self.classes = list(classes)
        self.domains = sorted(features)
        if config.pivot_domain not in self.domains:
            raise DatasetError(
                f"pivot (gallery) domain {config.pivot_domain!r} has no training images; domains present: "
                f"{self.domains}. Set pivot_domain to one of them."
            )
        empty = [d for d in self.domains if len(features[d]) == 0]
        if empty:
            raise DatasetError(f"domains {empty} have no readable training images")
        self.features = features
        self.val_features = val_features
        self.rank, self.world_size = rank, world_size
        self.all_gather, self.all_reduce_mean = all_gather, all_reduce_mean
        self.progress = progress and rank == 0
        self.label = label  # e.g. "fold 2/4 ": prefixes the progress bars
        torch.manual_seed(config.seed)
        self.label_index = {c: i for i, c in enumerate(self.classes)}

        dim = foundation.embed_dim
        self.head = ClairHead(dim, config.head_hidden, config.head_alpha_init, center=config.head_center,
                              zero_init=config.head_zero_init, activation=config.head_activation).to(torch.device(device or foundation.device))  # fmt: skip
        self.train_head = wrap_head(self.head) if wrap_head else self.head
        self.device = module_device(self.head)  # where wrap_head left it
        self.key_head = momentum_copy(self.head)

        hand_text = {d: hand_crafted_text_embeddings(foundation, self.classes, d, config.templates) for d in self.domains}
        self.pseudo: dict[str, PseudoLabels] = {d: self._label(d, hand_text[d]) for d in self.domains}
        self.hand_text = {d: t.to(self.device) for d, t in hand_text.items()}
        self.prompts = (
            PromptLearner(foundation, self.domains, config.n_ctx, config.templates).to(foundation.device)
            if config.prompt_side == "text" and config.w_prompt > 0
            else None
        )
        with torch.no_grad():
            self.banks = {d: self._center(self.key_head(features[d].clean.to(self.device))) for d in self.domains}
        groups = [{"params": list(self.head.parameters()), "lr": config.lr}]
        if self.prompts is not None:
            groups.append({"params": list(self.prompts.parameters()), "lr": config.prompt_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.per_domain_batch = max(1, config.batch_size // len(self.domains))
        n_max = max(len(features[d]) for d in self.domains)
        self.steps_per_epoch = max(1, math.ceil(n_max / (self.per_domain_batch * world_size)))
        total = self.steps_per_epoch * config.epochs
        warm = self.steps_per_epoch * config.lr_warmup_epochs

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.epoch = 0
        self.history: list[EpochStats] = []
        #: the epoch with the best mean validation mAP (when validating)
        self.best: dict | None = None

    def _center(self, z: torch.Tensor) -> torch.Tensor:
        """One domain's embeddings centred on their own mean, when the method centres domains."""
        return center_batch(z) if self.cfg.domain_center else z

    # ------------------------------------------------------------------ pseudo-labels and text
    def _label(self, domain: str, text: torch.Tensor) -> PseudoLabels:
        """Pseudo-labels of one domain, computed beside the CPU-held features, kept on the device."""
        c = self.cfg
        pl = pseudo_label(
            self.features[domain].clean,
            text.detach().cpu(),
            self.foundation.logit_scale,
            method=c.confidence,
            norm=c.confidence_norm,
            threshold=c.confidence_threshold,
            weighting=c.confidence_weighting,
        )
        return PseudoLabels(**{k: v.to(self.device) for k, v in vars(pl).items()})

    def text_embeddings(self, *, grad: bool = False, prompts: PromptLearner | None = None) -> dict[str, torch.Tensor]:
        """``t_c^d`` per domain: hand-crafted, plus the learned prompt when enabled (the current one,
        or ``prompts``, e.g. the best epoch's)."""
        prompts = prompts if prompts is not None else self.prompts
        if prompts is None:
            return dict(self.hand_text)
        with torch.set_grad_enabled(grad):
            return {d: combine_text_embeddings(self.hand_text[d], prompts(self.classes, d)) for d in self.domains}

    def _prototypes(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.cfg.prototype_source == "text":
            text = self.text_embeddings()
            return {d: (text[d], torch.ones(len(self.classes), dtype=torch.bool, device=self.device)) for d in self.domains}
        return {
            d: losses.class_prototypes(self.banks[d], self.pseudo[d].labels, self.pseudo[d].weights, len(self.classes))
            for d in self.domains
        }

    # ------------------------------------------------------------------ training
    def _batch_indices(self, perm: torch.Tensor, step: int) -> torch.Tensor:
        start = (step * self.world_size + self.rank) * self.per_domain_batch
        return perm[torch.arange(start, start + self.per_domain_batch) % len(perm)]

    def draw_views(self, batch: dict[str, torch.Tensor], g: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Two different cached augmented views (query, key) of every image in ``batch``, on the CPU."""
        vq, vk = [], []
        for d in self.domains:
            views = self.features[d].views[batch[d]]  # (B, V, D)
            n_v = views.shape[1]
            a = torch.randint(n_v, (len(views),), generator=g)
            b = (a + 1 + torch.randint(max(n_v - 1, 1), (len(views),), generator=g)) % n_v if n_v > 1 else a
            rows = torch.arange(len(views))
            vq.append(views[rows, a])
            vk.append(views[rows, b])
        return vq, vk

    def step_loss(self, batch: dict[str, torch.Tensor], vq: Sequence[torch.Tensor], vk: Sequence[torch.Tensor],
                  protos: dict[str, tuple[torch.Tensor, torch.Tensor]], ramp: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:  # fmt: skip
        """The loss of one step on the trainer's device: (total, each term averaged over domains,
        the keys to write into the banks). ``batch`` holds CPU image indices per domain, ``vq``/``vk``
        CPU features; everything is moved to the device here, so nothing else has to."""
        c, dev = self.cfg, self.device
        # one forward over all domains: DDP expects a single forward per backward
        vq = [v.to(dev, non_blocking=True) for v in vq]
        q_all = self.train_head(torch.cat(vq))
        with torch.no_grad():
            k_all = self.key_head(torch.cat([v.to(dev, non_blocking=True) for v in vk]))
        text = self.text_embeddings(grad=True) if self.prompts is not None else None
        weights = {"inst_disc": c.w_inst_disc, "instance": c.w_instance, "cluster": c.w_cluster,
                   "domain": c.w_domain, "prompt": c.w_prompt, "identity": c.identity_decay}  # fmt: skip
        total = q_all.sum() * 0.0
        means: dict[str, torch.Tensor] = {}
        offset = 0
        keys = {}
        for d in self.domains:
            idx = batch[d].to(dev)
            q, k = self._center(q_all[offset : offset + len(idx)]), self._center(k_all[offset : offset + len(idx)])
            offset += len(idx)
            keys[d] = (idx, k)
            pl = self.pseudo[d]
            y, w = pl.labels[idx], pl.weights[idx]
            terms = {}
            # a term weighted 0 is still measured (the epoch record shows every term) but outside
            # the graph: its backward pass was half of a CPU step's time with the default weights
            with torch.set_grad_enabled(torch.is_grad_enabled() and c.w_inst_disc != 0):
                terms["inst_disc"] = losses.instance_discrimination_loss(q, k, self.banks[d], idx, c.tau)
            with torch.set_grad_enabled(torch.is_grad_enabled() and c.w_instance != 0):
                terms["instance"] = losses.supervised_instance_loss(q, k, y, w, idx, self.banks[d], pl.labels, pl.kept, c.tau)
            with torch.set_grad_enabled(torch.is_grad_enabled() and c.w_cluster != 0):
                terms["cluster"] = ramp * losses.prototype_loss(q, y, w, *protos[d], c.tau_cluster)
            with torch.set_grad_enabled(torch.is_grad_enabled() and c.w_domain != 0):
                dom_terms = []
                for e in self.domains:
                    if e == d:
                        continue
                    if c.inter_domain == "instance":
                        pe = self.pseudo[e]
                        dom_terms.append(losses.inter_domain_loss(q, y, w, self.banks[e], pe.labels, pe.kept, c.tau))
                    else:
                        dom_terms.append(losses.prototype_loss(q, y, w, *protos[e], c.tau_cluster))
                terms["domain"] = torch.stack(dom_terms).mean() if dom_terms else q.sum() * 0.0
            if text is not None:
                v = self.features[d].clean[batch[d]].to(dev, non_blocking=True)
                terms["prompt"] = losses.prompt_loss(v, text[d], y, w, self.foundation.logit_scale)
            if c.identity_decay > 0:  # ||head(v) - v||^2 of unit vectors: 2 - 2 cos
                terms["identity"] = (2.0 - 2.0 * (q * F.normalize(vq[self.domains.index(d)], dim=-1)).sum(-1)).mean()
            for name, value in terms.items():
                total = total + weights[name] * value / len(self.domains)
                means[name] = means.get(name, 0.0) + value.detach() / len(self.domains)
        return total, means, keys

    def train_epoch(self) -> EpochStats:
        c, epoch = self.cfg, self.epoch
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(c.seed * 100_003 + epoch)
        perms = {d: torch.randperm(len(self.features[d]), generator=g) for d in self.domains}
        protos = self._prototypes()
        ramp = 1.0 if epoch >= c.cluster_warmup_epochs else 0.0
        sums: dict[str, float] = defaultdict(float)
        self.train_head.train()
        with progress_bar(total=self.steps_per_epoch, desc=f"{self.label}epoch {epoch + 1}/{c.epochs}", unit="step", enabled=self.progress) as bar:
            for step in range(self.steps_per_epoch):
                batch = {d: self._batch_indices(perms[d], step) for d in self.domains}
                vq, vk = self.draw_views(batch, g)
                total, means, keys = self.step_loss(batch, vq, vk, protos, ramp)
                if not math.isfinite(total.item()):
                    raise self._diverged(f"step {step + 1}'s loss is {total.item()}")
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                if self.prompts is not None and self.all_reduce_mean is not None:
                    for p in self.prompts.parameters():
                        if p.grad is not None:
                            self.all_reduce_mean(p.grad)
                self.optimizer.step()
                self.scheduler.step()
                momentum_update(self.key_head, self.head, c.momentum)
                with torch.no_grad():
                    for d, (idx, k) in keys.items():
                        self.banks[d][self.all_gather(idx)] = self.all_gather(k)
                for name, value in means.items():
                    sums[name] += float(value)
                sums["total"] += total.item()
                bar.update(1)
                bar.set_postfix(loss=f"{total.item():.3f}", refresh=False)
        if not all(bool(torch.isfinite(p).all()) for group in self.optimizer.param_groups for p in group["params"]):
            raise self._diverged("the trained weights are no longer finite")
        if c.relabel_each_epoch:
            text_now = self.text_embeddings()
            self.pseudo = {d: self._label(d, text_now[d]) for d in self.domains}
        stats = self._stats(epoch, {k: v / self.steps_per_epoch for k, v in sums.items()}, time.perf_counter() - t0)
        if self.val_features:
            stats.extra.update(self.evaluate(self.val_features))
            score = stats.extra.get(VAL_KEY, float("nan"))
            if math.isfinite(score) and (self.best is None or score > self.best["score"]):
                self.best = {"epoch": epoch, "score": score, "head": _clone(self.head.state_dict()),
                             "prompts": _clone(self.prompts.state_dict()) if self.prompts is not None else None}  # fmt: skip
        self.history.append(stats)
        self.epoch += 1
        return stats

    def _diverged(self, what: str) -> TrainingDivergedError:
        """A diverged run, said with what to change: NaN weights would otherwise ship, score as a
        gain on the folds and fail only when a user loads them."""
        return TrainingDivergedError(
            f"{self.label}training diverged in epoch {self.epoch + 1}: {what} at learning rate {self.cfg.lr:g}. Lower the "
            f"learning rate (--set lr=..., default {ClairConfig.lr:g}), or undo other --set changes (a tiny tau), and train "
            "again; nothing of this run was saved")

    def _stats(self, epoch: int, means: dict[str, float], seconds: float) -> EpochStats:
        kept = torch.cat([self.pseudo[d].kept.cpu() for d in self.domains]).float()
        conf = torch.cat([self.pseudo[d].confidence.cpu() for d in self.domains])
        correct, known = 0, 0
        for d in self.domains:
            truth = [self.label_index.get(lbl, -1) for lbl in self.features[d].labels]
            t = torch.tensor(truth)
            known += int((t >= 0).sum())
            correct += int(((self.pseudo[d].labels.cpu() == t) & (t >= 0)).sum())
        total = means.pop("total", 0.0)
        return EpochStats(
            epoch=epoch,
            loss=total,
            terms=means,
            kept_fraction=float(kept.mean()),
            mean_confidence=float(conf.mean()),
            pseudo_label_accuracy=correct / known if known else float("nan"),
            seconds=seconds,
            lr=float(self.scheduler.get_last_lr()[0]),
        )

    def fit(self, on_epoch: Callable[[EpochStats], None] | None = None, *, until: int | None = None) -> list[EpochStats]:
        """Train to the end of the schedule, or only its first ``until`` epochs (the learning-rate
        schedule stays the full one's, so stopping there equals a fold's snapshot at that epoch)."""
        stop = self.cfg.epochs if until is None else min(until, self.cfg.epochs)
        while self.epoch < stop:
            stats = self.train_epoch()
            if on_epoch:
                on_epoch(stats)
        return self.history

    def evaluate(self, features: dict[str, DomainFeatures], k: int = 200) -> dict[str, float]:
        """Retrieval of every other domain into the pivot domain with the current head and mapping:
        ``val_mAP@k_<domain>``, ``val_P@k_<domain>`` and their means over query domains."""
        model = self.build_model()
        pivot = self.cfg.pivot_domain
        if pivot not in features:
            raise DatasetError(f"validation data has no {pivot!r} (gallery) images")
        gallery = features[pivot]
        g = model.embed_features(gallery.clean, pivot).numpy()
        out: dict[str, float] = {}
        for d in sorted(set(features) - {pivot}):
            if not len(features[d]) or not len(gallery):  # a fold whose classes this domain lacks: no evidence
                continue
            q = model.embed_features(features[d].clean, d).numpy()
            m = retrieval_metrics(q, features[d].labels, g, gallery.labels, map_ks=(k,), prec_ks=(k,))
            out[f"val_mAP@{k}_{d}"], out[f"val_P@{k}_{d}"] = m[f"mAP@{k}"], m[f"P@{k}"]
        for name in (f"mAP@{k}", f"P@{k}"):
            values = [v for key, v in out.items() if key.startswith(f"val_{name}_")]
            out[f"val_{name}"] = sum(values) / len(values) if values else float("nan")
        return out

    # ------------------------------------------------------------------ results and resume
    def build_model(self, *, best: bool = False) -> ClairModel:
        """The deployable model: head, final text embeddings and the mapping fitted on them.
        ``best``: the best validation epoch's weights instead of the current ones."""
        head, prompts = self.head, self.prompts
        if best and self.best is not None:
            head = ClairHead(self.head.dim, self.cfg.head_hidden, self.cfg.head_alpha_init, center=self.cfg.head_center,
                             activation=self.cfg.head_activation)  # fmt: skip
            head.load_state_dict(self.best["head"])
            if prompts is not None and self.best["prompts"] is not None:
                prompts = PromptLearner(self.foundation, self.domains, self.cfg.n_ctx, self.cfg.templates)
                prompts.load_state_dict(self.best["prompts"])
        text = self.text_embeddings(prompts=prompts)
        mapping = DomainMapping.fit(text, self.cfg.pivot_domain, self.cfg.mapping, self.cfg.mapping_lambda,
                                    center=self.cfg.domain_center)  # fmt: skip
        head.eval()
        dev = module_device(head)
        centers = (DomainCenters.fit({d: self.features[d].clean for d in self.domains}, lambda v, _d: head(v.to(dev)))
                   if self.cfg.domain_center else None)  # fmt: skip
        return ClairModel(
            foundation=self.foundation,
            head=head,
            mapping=mapping,
            classes=self.classes,
            text_embeddings=text,
            config=self.cfg,
            prompt_state=prompts.state_dict() if prompts is not None else None,
            centers=centers,
        )

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "head": self.head.state_dict(),
            "key_head": self.key_head.state_dict(),
            "prompts": self.prompts.state_dict() if self.prompts is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "banks": {d: b.cpu() for d, b in self.banks.items()},
            "pseudo": {d: {k: v.cpu() for k, v in vars(p).items()} for d, p in self.pseudo.items()},
            "history": [s.as_dict() for s in self.history],
            "best": self.best,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.head.load_state_dict(state["head"])
        self.key_head.load_state_dict(state["key_head"])
        if self.prompts is not None and state["prompts"] is not None:
            self.prompts.load_state_dict(state["prompts"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.banks = {d: b.to(self.device) for d, b in state["banks"].items()}
        self.pseudo = {d: PseudoLabels(**{k: v.to(self.device) for k, v in p.items()}) for d, p in state["pseudo"].items()}
        fields = set(EpochStats.__dataclass_fields__)
        self.history = [EpochStats(**{k: v for k, v in h.items() if k in fields}) for h in state["history"]]
        self.best = state.get("best")
