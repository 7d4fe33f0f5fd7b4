"""Train a tiny CLIP on captioned images so the offline demo has a foundation model with real
text-image alignment. It stands in for downloaded weights (none are reachable here) and writes an
ordinary open_clip checkpoint file, loaded back through the same local-checkpoint path a user's
downloaded ViT-B-32 weights take.

It trains on a "web" pool (:mod:`clair_vec.datasets.web_pool`): every class, unseen ones included,
as web-pretrained CLIP has seen them, in the domain mix of web data (mostly photos), and never an
image CLAIR trains or is evaluated on.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

from clair_vec.datasets.folders import MultiDomainDataset
from clair_vec.datasets.images import load_image
from clair_vec.datasets.web_pool import domain_weights
from clair_vec.errors import CorruptImageError, DatasetError
from clair_vec.method.devices import resolve_device
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.prompts import clean_class_name, domain_templates
from clair_vec.method.tensor_files import save_tensor_file
from clair_vec.progress import progress_bar
from clair_vec.training.features import train_transform

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """torch's deterministic kernels inside, its settings as they were outside. With two CPU threads
    the same seed gave a different stand-in each run (weights 0.02 apart after 40 steps, a demo's
    unseen-class gain anywhere from +0.01 to +0.04); a kernel with no deterministic form warns
    instead of failing (``warn_only``).

    Deterministic mode also fills every new tensor with NaN so that a read of memory nobody wrote
    shows up. It is off here: the ~600 fills a step cost 7 % of a tiny CLIP's step on one thread,
    and the fill changes no result (clair-tiny on a CPU: the weights after 20 steps were
    bit-identical with and without it; a kernel that read unwritten memory would differ)."""
    import torch.utils.deterministic as deterministic

    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill_before = deterministic.fill_uninitialized_memory
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        deterministic.fill_uninitialized_memory = False
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        deterministic.fill_uninitialized_memory = fill_before


def image_layout(tower: torch.nn.Module) -> torch.memory_format:
    """Put ``tower`` in the layout it trains fastest in and return that layout, for its input:
    channels-last for a ResNet tower (batch-normed convolutions), the ordinary layout for a ViT,
    whose only convolution cuts the patches. oneDNN's convolutions run faster on channels-last
    tensors: a tiny ResNet CLIP's training step took 0.141-0.152 s against 0.180-0.212 s (1 CPU
    thread, batch 64; 0.131-0.139 s without the NaN fill above); a ViT's step is the same either
    way, and keeps the layout its numbers were measured in."""
    convolutional = any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules())
    layout = torch.channels_last if convolutional else torch.contiguous_format
    tower.to(memory_format=layout)
    return layout


def bootstrap_optimizer(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW's fused kernel where the device has one: the token table is most of a tiny CLIP's
    weights, and the per-tensor loop spent 32 ms of a 280 ms step on it (7 ms fused; 1 CPU thread).
    Decided here from the parameters' device, since torch only checks it at the first step."""
    params = list(params)
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        fused_on = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a torch that moved it: the two devices every release has
        fused_on = {"cpu", "cuda"}
    fused = bool(params) and all(p.device.type in fused_on and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.1, **({"fused": True} if fused else {}))


def draws_random_numbers(model: torch.nn.Module) -> bool:
    """Whether a training step of ``model`` draws from torch's generator (dropout of any kind): then
    the next batch cannot be augmented on another thread meanwhile without the two draws
    interleaving by timing."""
    from open_clip.transformer import PatchDropout

    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if isinstance(m, torch.nn.MultiheadAttention) and m.dropout > 0:
            return True
        if isinstance(m, PatchDropout) and m.prob > 0:
            return True
    return False


class _InTurn:
    """An executor that runs a submitted call when its result is asked for, on the asking thread."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> _InTurn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()
        future.result = lambda timeout=None: fn()  # type: ignore[method-assign]
        return future


def bootstrap_clip(
    dataset: MultiDomainDataset,
    out_file: str | Path,
    *,
    arch: str = "clair-tiny",
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    cache_bytes: int = 256 * 2**20,
    mix: dict[str, float] | None = None,
    device: str | None = "cpu",
) -> Path:
    """Fit ``arch`` from random init on (image, "a <domain> of a <class>.") pairs; save weights.

    Each sample's domain is drawn by the web mix (``mix``, see :func:`domain_weights`), then an
    image of that domain uniformly, so the stand-in sees the domains as often as web data shows them."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    fm = FoundationModel.load(arch, None, str(resolve_device(device)))
    model = fm.model.train()
    layout = image_layout(model.visual)
    for p in model.parameters():
        p.requires_grad_(True)
    classes, domains = dataset.classes, dataset.domains
    # decoded images are kept only up to a memory budget (a 10k-image dataset held decoded took
    # 3.2 GB); past it, images are decoded again at each step that samples them
    by_domain = {d: dataset.by_domain(d) for d in domains}
    weights = domain_weights(domains, mix)
    pick_from = [d for d in domains if weights.get(d, 0.0) > 0]
    cache: dict[str, object] = {}
    cached_bytes = 0
    augment = {d: train_transform(fm.image_size, d) for d in domains}
    prompts = [domain_templates(d)[0].format(clean_class_name(c)) for d in domains for c in classes]
    tokens = fm.tokenize(prompts)
    opt = bootstrap_optimizer(model.parameters(), lr)

    def next_batch() -> tuple[list, torch.Tensor]:
        nonlocal cached_bytes, pick_from
        batch, pixels = [], []
        while len(batch) < batch_size:
            pick_from = [d for d in pick_from if by_domain[d]]
            if not pick_from:
                raise DatasetError("no readable image left to bootstrap CLIP from")
            pool = by_domain[rng.choices(pick_from, weights=[weights[d] for d in pick_from])[0]]
            item = pool[rng.randrange(len(pool))]
            try:
                image = cache.get(item.path) or load_image(item.path)
                if item.path not in cache and cached_bytes + image.width * image.height * 3 <= cache_bytes:
                    cache[item.path] = image
                    cached_bytes += image.width * image.height * 3
                pixels.append(augment[item.domain](image))
                batch.append(item)
            except CorruptImageError as exc:
                log.warning("skipping %s", exc)
                pool.remove(item)
        return batch, torch.stack(pixels).contiguous(memory_format=layout)

    # The next batch is read and augmented on a second thread while this one steps (a sixth of a
    # step on 2 cores). One producer draws every random number, in order, so a seed still gives the
    # same stand-in; a model whose step draws too (dropout) reads its batches in turn instead.
    executor = _InTurn if draws_random_numbers(model) else ThreadPoolExecutor
    with deterministic_algorithms(), executor(1, thread_name_prefix="clair-bootstrap-batch") as reader, \
            progress_bar(total=steps, desc="bootstrap tiny CLIP", unit="step", enabled=progress) as bar:  # fmt: skip
        ahead: Future[tuple[list, torch.Tensor]] | None = reader.submit(next_batch) if steps > 0 else None
        for step in range(steps):
            assert ahead is not None  # submitted for every step, the first before the loop
            batch, pixels = ahead.result()
            ahead = reader.submit(next_batch) if step + 1 < steps else None
            img = F.normalize(model.encode_image(pixels.to(fm.device, non_blocking=True)), dim=-1)
            txt = F.normalize(model.encode_text(tokens), dim=-1).view(len(domains), len(classes), -1)
            dom = torch.tensor([domains.index(i.domain) for i in batch], device=fm.device)
            # each image against every class, phrased in the image's own domain
            logits = model.logit_scale.exp() * torch.einsum("bd,bcd->bc", img, txt[dom])
            loss = F.cross_entropy(logits, torch.tensor([classes.index(i.label) for i in batch], device=fm.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    # saved in the ordinary layout: the file loads the same into a model of either
    return save_tensor_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out_file)
