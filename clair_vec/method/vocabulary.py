"""Text embeddings of a user's label vocabulary: bounded batches, a hard upper limit, a bounded cache.

``clair-vec index --labels`` tags every image zero-shot over the user's own labels, which may be
thousands of names. The text tower runs over ``BATCH`` names at a time, so memory is the size of
the result (``C x D`` floats) plus one batch's activations, whatever ``C`` is. The result is
kept for the next call (every index batch asks for the same vocabulary) in a small LRU cache that
holds at most ``CACHE_ENTRIES`` vocabularies and ``CACHE_FLOATS`` numbers in all.

``MAX_VOCABULARY`` = 50,000 labels: at that size the embeddings of one domain are 100 MB
(ViT-B-32, 512 floats a label), the softmax over them costs as much as the CLIP image pass of a
batch, and building them on a 2-core CPU with ViT-B-32's text tower takes minutes. Larger label
sets (e.g. a whole WordNet) are better served by a text search over the labels than by an
argmax over all of them; a vocabulary above the limit is refused with the count and the limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from clair_vec.errors import VocabularyTooLargeError
from clair_vec.progress import progress_bar

MAX_VOCABULARY = 50_000
BATCH = 256
PROGRESS_FROM = 2_048  # vocabularies this long show progress: they take seconds to minutes
CACHE_ENTRIES = 4
CACHE_FLOATS = 4 * MAX_VOCABULARY * 512  # 400 MB of float32 at most


def check_vocabulary_size(n: int, limit: int = MAX_VOCABULARY) -> None:
    if n > limit:
        raise VocabularyTooLargeError(
            f"the label vocabulary has {n:,} labels; at most {limit:,} are supported (each label is embedded by "
            "CLIP's text tower and scored against every image). Split it, or keep the labels users actually filter on."
        )


@torch.no_grad()
def batched_text_embeddings(
    names: Sequence[str],
    embed: Callable[[Sequence[str]], torch.Tensor],
    dim: int,
    *,
    batch: int = BATCH,
    progress: bool | None = None,
    desc: str = "label embeddings",
) -> torch.Tensor:
    """``(C, dim)`` rows of ``embed`` run over ``batch`` names at a time into one preallocated tensor."""
    check_vocabulary_size(len(names))
    out = torch.empty(len(names), dim)
    show = len(names) >= PROGRESS_FROM if progress is None else progress
    with progress_bar(total=len(names), desc=desc, unit="label", enabled=show) as bar:
        for start in range(0, len(names), batch):
            chunk = list(names[start : start + batch])
            out[start : start + len(chunk)] = embed(chunk).float().cpu()
            bar.update(len(chunk))
    return out


class TextCache:
    """LRU cache of vocabulary embeddings, bounded in entries and in stored floats."""

    def __init__(self, entries: int = CACHE_ENTRIES, floats: int = CACHE_FLOATS) -> None:
        self.entries, self.floats = entries, floats
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def get(self, key: tuple) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        if value.numel() > self.floats:
            return  # larger than the whole budget: computing it again is cheaper than holding it
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.entries or self.stored > self.floats:
            self._items.popitem(last=False)

    @property
    def stored(self) -> int:
        return sum(v.numel() for v in self._items.values())

    def __len__(self) -> int:
        return len(self._items)
