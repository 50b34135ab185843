"""LM data-selection scores, each against a hand computation on a tiny case."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from prunus.data.select import select
from prunus.data.table import HIGHER_IS_HARDER, ScoreTable
from prunus.errors import PrunusError
from prunus.text.corpus import TextSplit, load_stdlib
from prunus.text.lm import build_lm, document_losses
from prunus.text.scores import (
    color_filter_models,
    color_filter_scores,
    dsir_features,
    dsir_resample,
    dsir_scores,
    embedding_similarity_scores,
    perplexity_scores,
    quality_classifier_scores,
)
from prunus.text.tokenizer import document_sequences, pack_blocks, train_tokenizer

POOL = ["json", "csv", "heapq", "textwrap", "string", "bisect", "fnmatch", "glob", "shlex",
        "colorsys", "base64", "calendar"]


@pytest.fixture(scope="module")
def data():
    corpus = load_stdlib(modules=POOL, validation_fraction=0.25, test_fraction=0.1, seed=3)
    tok = train_tokenizer(corpus, vocab_size=400)
    pool = corpus["validation"]
    seqs = document_sequences(pool, tok, 32, max_windows=2)
    return corpus, tok, pool, seqs


def _model(tok, seed=0):
    return build_lm("gpt_tiny", vocab_size=len(tok), context_length=32, seed=seed)


def test_perplexity_scores_are_document_losses(data):
    _, tok, pool, seqs = data
    model = _model(tok)
    table = perplexity_scores(model, seqs, split=pool)
    ref = document_losses(model, seqs)
    assert isinstance(table, ScoreTable)
    assert np.array_equal(table.ids, ref["id"]) and set(table.ids) == set(pool.ids)
    assert np.allclose(table.scores(), ref["loss"])
    assert np.allclose(table.scores("perplexity"), np.exp(ref["loss"]))
    assert (table.labels == 0).all()
    assert table.metadata["method"] == "perplexity"
    assert table.direction() == HIGHER_IS_HARDER
    assert table.metadata["cost"]["seconds"] > 0 and table.metadata["cost"]["flops"] > 0
    assert table.fingerprint == pool.fingerprint


def _ngrams(text):
    import re

    words = re.findall(r"\b\w+\b", text.lower())
    return Counter(words + [" ".join(p) for p in itertools.pairwise(words)])


def test_dsir_weights_by_hand():
    pool = ["the cat sat", "the dog ran fast", "a cat and a dog"]
    target = ["the cat", "cat sat down"]
    m = 10_000
    # the hand computation treats each n-gram as its own bucket: check there is no collision
    grams = set().union(*(_ngrams(t) for t in pool + target))
    columns = dsir_features(sorted(grams), m).nonzero()[1]
    assert len(set(columns)) == len(grams)
    raw, tgt = sum(map(_ngrams, pool), Counter()), sum(map(_ngrams, target), Counter())
    n_raw, n_tgt = sum(raw.values()), sum(tgt.values())

    def log_w(text):
        return sum(
            c * (math.log((tgt[g] + 1) / (n_tgt + m)) - math.log((raw[g] + 1) / (n_raw + m)))
            for g, c in _ngrams(text).items()
        )

    table = dsir_scores(pool, target, buckets=m)
    assert np.array_equal(table.ids, [0, 1, 2])
    assert np.allclose(table.scores(), [log_w(t) for t in pool])
    assert table.scores("ngrams").tolist() == [5, 7, 9]
    assert table.scores().argmax() == 0  # "the cat sat" is the most target-like
    assert table.metadata["method"] == "dsir" and table.metadata["cost"]["seconds"] >= 0


def test_dsir_resample_gumbel_top_k():
    w = np.log(np.array([1.0, 1.0, 1e6, 1.0, 1e6]))
    rows = dsir_resample(w, 2, seed=0)
    assert sorted(rows.tolist()) == [2, 4]
    again = dsir_resample(w, 5, seed=3)
    assert sorted(again.tolist()) == [0, 1, 2, 3, 4]
    assert np.array_equal(dsir_resample(w, 3, seed=3), again[:3])
    # draws are proportional to the weights: a weight-3 document is drawn first ~3/4 of the time
    w2 = np.log(np.array([3.0, 1.0]))
    firsts = [dsir_resample(w2, 1, seed=s)[0] for s in range(2000)]
    assert abs(np.mean(np.array(firsts) == 0) - 0.75) < 0.04
    table = dsir_scores(["a b", "c d", "a c"], ["a b"])
    assert set(dsir_resample(table, 2, seed=0)) <= set(table.ids)
    with pytest.raises(PrunusError, match="k must"):
        dsir_resample(w, 6)


def test_color_filter_is_difference_of_losses(data):
    corpus, tok, _pool, seqs = data
    prior_blocks = pack_blocks(corpus.train.take(range(30)), tok, 32)
    target_blocks = pack_blocks(corpus.train.take(range(30, 40)), tok, 32)
    prior, conditional, runs = color_filter_models(
        lambda: _model(tok), prior_blocks, target_blocks, prior_tokens=1500,
        conditional_tokens=500, batch_size=8, lr=3e-3,
    )
    assert runs["prior"].tokens == 1500 and runs["conditional"].tokens == 500
    assert prior is not conditional
    table = color_filter_scores(prior, conditional, seqs)
    a, b = document_losses(prior, seqs), document_losses(conditional, seqs)
    assert np.allclose(table.scores(), a["loss"] - b["loss"])
    assert table.metadata["keep"] == "hardest"
    kept = select(table, 0.5, "hardest", stratify=False)
    best = table.ids[np.argsort(-table.scores())[: len(kept)]]
    assert set(kept) == set(best)


def test_embedding_similarity_by_hand(data):
    _, tok, pool, seqs = data
    model = _model(tok)
    target = pool.take(range(3))
    tseqs = document_sequences(target, tok, 32, max_windows=2)

    def embed(s):
        out = []
        with torch.no_grad():
            for row in range(len(s)):
                n = int(s.attention_mask[row].sum())
                ids = torch.as_tensor(s.input_ids[row : row + 1, :n])
                h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
                out.append((s.doc_ids[row], h.double().numpy().sum(0), n))
        docs = {}
        for d, total, n in out:
            t, c = docs.get(d, (0.0, 0))
            docs[d] = (t + total, c + n)
        return {d: t / c for d, (t, c) in docs.items()}

    pe, te = embed(seqs), embed(tseqs)
    tmat = np.stack(list(te.values()))
    tmat /= np.linalg.norm(tmat, axis=1, keepdims=True)
    for aggregate in ("max", "mean"):
        table = embedding_similarity_scores(model, seqs, tseqs, aggregate=aggregate)
        for doc, score in zip(table.ids, table.scores()):
            cos = tmat @ (pe[doc] / np.linalg.norm(pe[doc]))
            assert score == pytest.approx(cos.max() if aggregate == "max" else cos.mean(), abs=1e-6)
    # a target document is most similar to itself
    table = embedding_similarity_scores(model, seqs, tseqs, aggregate="max")
    assert np.allclose(table.scores()[:3], 1.0)
    weighted = embedding_similarity_scores(model, seqs, tseqs, pooling="weighted")
    assert weighted.metadata["pooling"] == "weighted"
    with pytest.raises(PrunusError, match="aggregate"):
        embedding_similarity_scores(model, seqs, tseqs, aggregate="min")


def test_quality_classifier_ranks_target_like_first():
    rng = np.random.default_rng(0)
    code = ["def f(x): return x + 1", "class A: pass", "import os", "for i in range(3): print(i)"]
    prose = ["the weather was lovely today", "she walked to the market", "a quiet evening",
             "they read a book by the fire"]
    target = [code[i % 4] + f" # v{i}" for i in range(6)]
    pool_texts = [code[i % 4] + f" y{i}" for i in range(4)] + [prose[i % 4] for i in range(12)]
    order = rng.permutation(len(pool_texts))
    pool = TextSplit(np.arange(100, 100 + len(order)), [pool_texts[i] for i in order],
                     ["g"] * len(order))
    table = quality_classifier_scores(pool, target)
    is_code = np.array([i < 4 for i in order])
    scores = table.scores()
    assert scores[is_code].min() > scores[~is_code].max()
    assert ((scores >= 0) & (scores <= 1)).all()
    kept = select(table, 0.25, "hardest", stratify=False)
    assert set(kept) == set(pool.ids[is_code])
    assert table.metadata["method"] == "quality_classifier"
