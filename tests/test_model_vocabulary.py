"""Label vocabularies (issue 16): text embeddings in bounded batches equal the one-shot ones, a
vocabulary over the limit is refused with its size and the limit, progress shows for long ones,
the cache is bounded; the text tower skips the padding after the end-of-text token exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clair_vec.errors import VocabularyTooLargeError
from clair_vec.method import vocabulary
from clair_vec.method.config import ClairConfig
from clair_vec.method.head import ClairHead
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.model import ClairModel
from clair_vec.method.prompts import PromptLearner, combine_text_embeddings, hand_crafted_text_embeddings

DOMAINS = ["photo", "sketch"]
NAMES = [f"thing {i}" for i in range(23)] + ["a much longer label with many words in it", "x"]


@pytest.fixture(scope="module")
def model(tiny_clip):
    classes = ["circle", "square"]
    text = {d: hand_crafted_text_embeddings(tiny_clip, classes, d) for d in DOMAINS}
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None)
    learner = PromptLearner(tiny_clip, DOMAINS, cfg.n_ctx)
    with torch.no_grad():
        learner.ctx.add_(0.1 * torch.randn_like(learner.ctx))  # a trained-looking context, not the init
    return ClairModel(tiny_clip, ClairHead.identity(tiny_clip.embed_dim), DomainMapping.fit(text, "photo"), classes, text,
                      cfg, learner.state_dict())  # fmt: skip


def test_the_text_tower_skips_padding_exactly(tiny_clip):
    texts = ["a photo of a dog.", "a sketch of a very long named golden retriever wearing a hat.", "x"]
    full = F.normalize(tiny_clip.model.encode_text(tiny_clip.tokenize(texts)).float(), dim=-1)
    torch.testing.assert_close(tiny_clip.encode_texts(texts), full, atol=1e-5, rtol=0)


def test_batched_vocabulary_embeddings_equal_the_one_shot_ones(model, tiny_clip, monkeypatch):
    learner = PromptLearner(tiny_clip, DOMAINS, model.config.n_ctx)
    learner.load_state_dict(model.prompt_state)
    with torch.no_grad():
        want = combine_text_embeddings(hand_crafted_text_embeddings(tiny_clip, NAMES, "sketch"), learner(NAMES, "sketch"))
    monkeypatch.setattr(vocabulary, "BATCH", 4)  # 7 batches, the last one short
    got = model.class_text_embeddings(NAMES, "sketch")
    assert got.shape == (len(NAMES), model.dim)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    labels, conf = model.zero_shot_labels(torch.randn(5, model.dim), "sketch", NAMES)
    assert len(labels) == 5 and set(labels) <= set(NAMES) and ((0 < conf) & (conf <= 1)).all()


def test_zero_shot_labels_in_row_chunks_equal_one_pass(model, monkeypatch):
    import clair_vec.method.model as model_module

    feats = F.normalize(torch.randn(11, model.dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    whole = model.zero_shot_labels(feats, "photo", NAMES)
    monkeypatch.setattr(model_module, "ZERO_SHOT_ROWS", 3)
    chunked = model.zero_shot_labels(feats, "photo", NAMES)
    assert chunked[0] == whole[0]
    torch.testing.assert_close(torch.from_numpy(chunked[1]), torch.from_numpy(whole[1]))


def test_a_vocabulary_over_the_limit_is_refused_before_any_work(model, monkeypatch):
    monkeypatch.setattr(model.foundation, "encode_texts", lambda *a, **k: pytest.fail("the text tower ran"))
    too_many = [f"l{i}" for i in range(vocabulary.MAX_VOCABULARY + 1)]
    with pytest.raises(VocabularyTooLargeError, match=r"has 50,001 labels; at most 50,000 are supported"):
        model.class_text_embeddings(too_many, "photo")
    with pytest.raises(VocabularyTooLargeError, match="50,001"):
        model.zero_shot_labels(torch.zeros(1, model.dim), "photo", too_many)
    assert isinstance(VocabularyTooLargeError("x"), ValueError)  # the CLI's error path prints it as one line


def test_long_vocabularies_show_progress_and_short_ones_do_not(model, monkeypatch):
    shown = []

    class Bar:
        def __init__(self, *, total, desc, unit, enabled):
            shown.append((total, enabled))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            pass

    monkeypatch.setattr(vocabulary, "progress_bar", Bar)
    monkeypatch.setattr(vocabulary, "PROGRESS_FROM", 20)
    fresh = [f"progress {i}" for i in range(25)]  # not in the model's cache from another test
    model.class_text_embeddings(fresh[:5], "photo")
    model.class_text_embeddings(fresh, "photo")
    assert shown == [(5, False), (25, True)]


def test_the_vocabulary_cache_is_bounded(model):
    cache = vocabulary.TextCache(entries=2, floats=100)
    cache.put(("a",), torch.zeros(10, 5))
    cache.put(("b",), torch.zeros(10, 5))
    assert cache.get(("a",)) is not None  # a is now the most recent
    cache.put(("c",), torch.zeros(10, 5))
    assert cache.get(("b",)) is None and len(cache) == 2 and cache.stored == 100
    cache.put(("d",), torch.zeros(30, 5))  # larger than the whole budget: not kept, nothing evicted
    assert cache.get(("d",)) is None and len(cache) == 2
    for i in range(vocabulary.CACHE_ENTRIES + 3):
        model.class_text_embeddings([f"label {i}", "other"], "photo")
    assert len(model._vocab_text) == vocabulary.CACHE_ENTRIES
    first = model.class_text_embeddings(["kept", "twice"], "photo")
    assert model.class_text_embeddings(["kept", "twice"], "photo") is first  # the cache still serves repeats
