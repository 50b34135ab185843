"""Calibration batches for one-shot pruning (:func:`prunus.weights.oneshot`), built offline.

* causal LMs: ``samples`` sequences of ``context_length`` tokens, drawn (seeded, without
  replacement) from the packed token stream of a text split — the bundled ``stdlib`` corpus
  (:func:`stdlib_calibration`) or any texts (:func:`text_calibration`); the papers use 128
  sequences of 2048 tokens from C4.
* encoders (BERT, MiniLM): ``samples`` texts, tokenized with padding and truncation into dict
  batches (:func:`encoder_calibration`), e.g. the ``pycode`` training texts
  (:func:`pycode_calibration`).

Every helper returns a list of batches that :func:`~prunus.weights.oneshot` takes as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from prunus.errors import PrunusError


def text_calibration(
    split: Any,
    tokenizer: Any,
    *,
    samples: int = 128,
    context_length: int = 256,
    seed: int = 0,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """``samples`` token-id sequences of exactly ``context_length`` tokens from a text split.

    The split's documents are packed (``<eos> doc₁ <eos> doc₂ …``, :func:`prunus.text.pack_blocks`)
    and cut into full blocks; ``samples`` of them are drawn without replacement with ``seed``
    (all of them, in a seeded order, when there are fewer).

    Args:
        split: a :class:`~prunus.text.TextSplit` (or anything with ``ids`` and ``texts``).
        tokenizer: a transformers tokenizer with an eos (and pad) token.
        samples: sequences wanted, at least 1. Default 128.
        context_length: tokens per sequence. Default 256.
        seed: seed of the draw. Default 0.
        batch_size: sequences per batch. Default 8.

    Raises:
        PrunusError: samples or batch_size below 1, or texts shorter than one sequence.
    """
    from prunus.text.tokenizer import pack_blocks

    _check_counts(samples, batch_size)
    try:
        blocks = pack_blocks(split, tokenizer, context_length, drop_last=True)
    except PrunusError as exc:
        raise PrunusError(f"calibration texts are shorter than one sequence of {context_length} "
                          f"tokens ({exc}); give more text or a shorter sequence length.") from None
    order = np.random.default_rng(seed).permutation(len(blocks))[:samples]
    ids = torch.as_tensor(blocks.input_ids[np.sort(order)])
    return list(ids.split(batch_size))


def stdlib_calibration(
    tokenizer: Any = None,
    *,
    samples: int = 128,
    context_length: int = 256,
    seed: int = 0,
    split: str = "train",
    batch_size: int = 8,
    corpus: Any = None,
) -> list[torch.Tensor]:
    """:func:`text_calibration` on a split of the bundled ``stdlib`` corpus.

    Args:
        tokenizer: the model's tokenizer; None trains (or loads from the cache) the BPE of
            :func:`prunus.text.train_tokenizer` on the corpus's training split.
        samples, context_length, seed, batch_size: as for :func:`text_calibration`.
        split: the corpus split the sequences come from. Default ``"train"`` (evaluate on
            ``"validation"`` or ``"test"``).
        corpus: a loaded :class:`~prunus.text.TextCorpus` (default ``load_stdlib()``).
    """
    from prunus.text import load_stdlib, load_tokenizer

    corpus = load_stdlib() if corpus is None else corpus
    if tokenizer is None:
        tokenizer = load_tokenizer("bpe", corpus)
    return text_calibration(corpus[split], tokenizer, samples=samples,
                            context_length=context_length, seed=seed, batch_size=batch_size)


def encoder_calibration(
    texts: Sequence[str],
    tokenizer: Any,
    *,
    samples: int = 128,
    max_length: int = 128,
    seed: int = 0,
    batch_size: int = 16,
) -> list[dict[str, torch.Tensor]]:
    """``samples`` texts drawn without replacement (seeded), tokenized into padded dict batches
    (``input_ids``, ``attention_mask``, …) truncated to ``max_length`` tokens.

    Args:
        texts: the pool of texts.
        tokenizer: a transformers tokenizer, or a sentence-transformers model (its
            ``tokenizer`` is used).
        samples: texts drawn, at least 1 (all when fewer). Default 128.
        max_length: truncation length. Default 128.
        seed: seed of the draw. Default 0.
        batch_size: texts per batch. Default 16.

    Raises:
        PrunusError: no text, samples or batch_size below 1.
    """
    _check_counts(samples, batch_size)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise PrunusError("calibration texts must hold at least one non-empty text.")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    order = np.sort(np.random.default_rng(seed).permutation(len(texts))[:samples])
    chosen = [texts[i] for i in order]
    batches = []
    for start in range(0, len(chosen), batch_size):
        encoded = tokenizer(chosen[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
        batches.append(dict(encoded))
    return batches


def pycode_calibration(
    model: Any,
    *,
    samples: int = 128,
    max_length: int = 128,
    seed: int = 0,
    split: str = "train",
    batch_size: int = 16,
    dataset: Any = None,
) -> list[dict[str, torch.Tensor]]:
    """:func:`encoder_calibration` on ``pycode`` texts of one split: its queries (docstring
    sentences) and the source of their positive functions, half and half — what an embedding
    model embeds.

    Args:
        model: a sentence-transformers model or a transformers tokenizer.
        split: ``"train"`` (default), ``"dev"`` or ``"test"``.
        dataset: a loaded ``pycode`` dataset (default ``prunus.datasets.load("pycode")``).
        samples, max_length, seed, batch_size: as for :func:`encoder_calibration`.
    """
    texts = pycode_texts(split, dataset)
    return encoder_calibration(texts, model, samples=samples, max_length=max_length, seed=seed,
                               batch_size=batch_size)


def pycode_texts(split: str = "train", dataset: Any = None) -> list[str]:
    """Queries and positive documents of a ``pycode`` split, interleaved (query, document, …)."""
    if dataset is None:
        from prunus.datasets import load

        dataset = load("pycode")
    queries = dataset.split(split)
    row_of = {int(d): r for r, d in enumerate(dataset.corpus_ids)}
    documents = [dataset.corpus[row_of[int(p)]] for p in queries.positive_ids]
    return [text for pair in zip(queries.queries, documents) for text in pair]


def _check_counts(samples: int, batch_size: int) -> None:
    if not isinstance(samples, int) or samples < 1:
        raise PrunusError(f"samples must be a positive integer (got {samples!r}).")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PrunusError(f"batch_size must be a positive integer (got {batch_size!r}).")
