"""Tokenizers and sequences for causal LMs, every sequence keyed by document id.

* :func:`train_tokenizer` — byte-level BPE (GPT-2 style: any text round-trips exactly) trained
  locally with ``tokenizers`` on a corpus split, cached on disk by that split's fingerprint and
  the vocabulary size, returned as a ``transformers.PreTrainedTokenizerFast``.
* :func:`load_tokenizer` — ``"bpe"`` (train or load from cache) or a local Hugging Face
  tokenizer directory.
* :func:`document_sequences` — **per-document** padded sequences with attention masks, for
  scoring (perplexity, per-document mean loss): ``<eos> document <eos>``, right-padded to
  ``context_length``; a longer document is cut into windows (by default only its first is kept,
  ``max_windows=None`` keeps all), consecutive windows overlapping by one token so that every
  token of the document is a prediction target exactly once.
* :func:`pack_blocks` — **packing** for training: ``<eos> doc₁ <eos> doc₂ <eos> …`` cut into
  blocks of ``context_length`` tokens; ``token_doc_ids`` says which document every token belongs
  to (the ``<eos>`` closing a document belongs to it), so token losses map back to documents.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunus.errors import PrunusError, require
from prunus.files import atomic_directory, cache_hit, write_cache

EOS = "<|endoftext|>"
PAD = "<|pad|>"
TOKENIZER_RECIPE = 1


# --------------------------------------------------------------------------- tokenizers


def train_tokenizer(
    corpus: Any,
    *,
    vocab_size: int = 4096,
    split: str = "train",
    min_frequency: int = 2,
    cache: bool = True,
):
    """Byte-level BPE trained on one split of a corpus, cached by fingerprint and vocab size.

    Args:
        corpus: a :class:`~prunus.text.corpus.TextCorpus` (its ``split`` is used) or a
            :class:`~prunus.text.corpus.TextSplit`.
        vocab_size: the vocabulary size, special tokens included, at least 258 (256 bytes plus
            ``<|endoftext|>`` and ``<|pad|>``). Default 4096.
        split: the split trained on. Default ``"train"``.
        min_frequency: a merge needs at least this many occurrences. Default 2.
        cache: load/save ``tokenizer.json`` under the cache dir (``$PRUNUS_CACHE_DIR``).
            Default True.

    Returns:
        a ``transformers.PreTrainedTokenizerFast`` with ``eos_token`` (also ``bos_token``) and
        ``pad_token`` set; ``tokenizer.init_kwargs["prunus_cache"]`` is ``"hit"``, ``"miss"``
        or ``"off"``.

    Raises:
        PrunusError: vocab_size below 258, an empty split.
    """
    texts, fingerprint = _split_texts(corpus, split)
    if not isinstance(vocab_size, int) or vocab_size < 258:
        raise PrunusError(f"vocab_size must be an integer of at least 258 (got {vocab_size!r}).")
    if not texts:
        raise PrunusError(f"split {split!r} is empty: there is nothing to train a tokenizer on.")
    path = tokenizer_cache_path(fingerprint, vocab_size, min_frequency) if cache else None
    if path is not None and cache_hit(path, path.parent.name):
        return _wrap(str(path), "hit")
    raw = _train_bpe(texts, vocab_size, min_frequency)
    if path is None:
        wrapped = _wrap_object(raw, "off")
        return wrapped
    write_cache(path, lambda tmp: raw.save(str(tmp)), path.parent.name)
    return _wrap(str(path), "miss")


def load_tokenizer(
    source: str = "bpe", corpus: Any = None, *, vocab_size: int = 4096, cache: bool = True
):
    """``"bpe"``: :func:`train_tokenizer` on ``corpus``; otherwise a local Hugging Face tokenizer
    directory (nothing is downloaded). A tokenizer without a pad token pads with its eos token.

    Raises:
        PrunusError: ``"bpe"`` without a corpus, a path that is not a tokenizer directory, a
            tokenizer with neither an eos nor a pad token.
    """
    if source == "bpe":
        if corpus is None:
            raise PrunusError("tokenizer 'bpe' is trained on a corpus; pass corpus=.")
        return train_tokenizer(corpus, vocab_size=vocab_size, cache=cache)
    path = Path(str(source))
    if not path.is_dir():
        raise PrunusError(
            f"tokenizer must be 'bpe' or a local tokenizer directory (got {str(source)!r})."
        )
    require("transformers", "lm")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PrunusError(
            f"tokenizer directory {str(path)!r} could not be loaded ({exc})."
        ) from exc
    if tokenizer.eos_token is None and tokenizer.pad_token is None:
        raise PrunusError(f"tokenizer {str(path)!r} has neither an eos nor a pad token.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.pad_token
    return tokenizer


def tokenizer_cache_path(fingerprint: str, vocab_size: int, min_frequency: int = 2) -> Path:
    """Where the BPE trained on a split with this fingerprint and vocab size is cached."""
    from prunus.datasets.mnist1d import cache_dir

    tokenizers = require("tokenizers", "lm")
    recipe = (
        f"{TOKENIZER_RECIPE}|{fingerprint}|{vocab_size}|{min_frequency}|{tokenizers.__version__}"
    )
    digest = hashlib.blake2b(recipe.encode(), digest_size=10).hexdigest()
    return cache_dir() / "tokenizers" / f"bpe-v{vocab_size}-{digest}" / "tokenizer.json"


def _split_texts(corpus: Any, split: str) -> tuple[list[str], str]:
    from prunus.text.corpus import TextCorpus, TextSplit

    if isinstance(corpus, TextCorpus):
        part = corpus[split]
    elif isinstance(corpus, TextSplit):
        part = corpus
    else:
        raise PrunusError(
            f"corpus must be a TextCorpus or TextSplit (got {type(corpus).__name__})."
        )
    return part.texts, part.fingerprint


def _train_bpe(texts: Sequence[str], vocab_size: int, min_frequency: int):
    require("tokenizers", "lm")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def _wrap(path: str, cache_state: str):
    require("transformers", "lm")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=path,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        prunus_cache=cache_state,
    )


def _wrap_object(raw, cache_state: str):
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "tokenizer.json")
        raw.save(file)
        return _wrap(file, cache_state)


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> Path:
    """Save a tokenizer as a Hugging Face directory (``from_pretrained`` reads it back), written
    whole with :func:`prunus.files.atomic_directory` (an existing directory is replaced)."""
    return atomic_directory(directory, lambda tmp: tokenizer.save_pretrained(str(tmp)))


# --------------------------------------------------------------------------- sequences


@dataclass
class DocumentSequences:
    """Per-document sequences: row ``r`` is a window of document ``doc_ids[r]``.

    ``input_ids`` and ``attention_mask`` are int64 arrays of shape (rows, context_length),
    right-padded (mask 0 on padding). ``truncated`` counts documents cut to ``max_windows``.
    """

    doc_ids: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass
class PackedBlocks:
    """Packed training blocks: ``input_ids`` (blocks, context_length); ``token_doc_ids`` the
    document of every token (-1 on padding); ``attention_mask`` 0 only on the last block's
    padding."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_doc_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def documents_of_block(self, block: int) -> np.ndarray:
        """The ids of the documents that have tokens in this block, in order of appearance."""
        row = self.token_doc_ids[block]
        row = row[row >= 0]
        _, first = np.unique(row, return_index=True)
        return row[np.sort(first)]


def document_sequences(
    split: Any,
    tokenizer,
    context_length: int,
    *,
    max_windows: int | None = 1,
) -> DocumentSequences:
    """``<eos> text <eos>`` per document, windows of ``context_length`` tokens, right-padded.

    Args:
        split: a :class:`~prunus.text.corpus.TextSplit`.
        tokenizer: a transformers tokenizer with an eos and a pad token.
        context_length: tokens per row, at least 2.
        max_windows: windows kept per document (its first ones); None keeps every window so
            that the whole document is scored. Default 1.

    Raises:
        PrunusError: context_length below 2, max_windows below 1.
    """
    _check_context(context_length)
    if max_windows is not None and max_windows < 1:
        raise PrunusError(f"max_windows must be a positive integer or None (got {max_windows!r}).")
    eos, pad = _special_ids(tokenizer)
    encoded = _encode(tokenizer, split.texts)
    stride = context_length - 1
    rows_ids: list[int] = []
    rows: list[list[int]] = []
    truncated = 0
    for doc_id, tokens in zip(split.ids.tolist(), encoded):
        tokens = [eos] + tokens + [eos]
        windows = max(1, -(-(len(tokens) - 1) // stride))
        if max_windows is not None and windows > max_windows:
            truncated += 1
            windows = max_windows
        for w in range(windows):
            rows.append(tokens[w * stride : w * stride + context_length])
            rows_ids.append(doc_id)
    input_ids = np.full((len(rows), context_length), pad, dtype=np.int64)
    mask = np.zeros((len(rows), context_length), dtype=np.int64)
    for r, tokens in enumerate(rows):
        input_ids[r, : len(tokens)] = tokens
        mask[r, : len(tokens)] = 1
    return DocumentSequences(np.asarray(rows_ids, dtype=np.int64), input_ids, mask, truncated)


def pack_blocks(
    split: Any, tokenizer, context_length: int, *, drop_last: bool = False
) -> PackedBlocks:
    """Concatenate ``<eos> doc₁ <eos> doc₂ <eos> …`` and cut it into blocks of
    ``context_length`` tokens; the last partial block is padded (or dropped with
    ``drop_last=True``).

    Raises:
        PrunusError: context_length below 2, nothing to pack.
    """
    _check_context(context_length)
    eos, pad = _special_ids(tokenizer)
    encoded = _encode(tokenizer, split.texts)
    if not encoded:
        raise PrunusError("the split is empty: there is nothing to pack.")
    ids = split.ids.tolist()
    stream = [eos]
    owner = [ids[0]]
    for doc_id, tokens in zip(ids, encoded):
        stream.extend(tokens)
        stream.append(eos)
        owner.extend([doc_id] * (len(tokens) + 1))
    stream_arr = np.asarray(stream, dtype=np.int64)
    owner_arr = np.asarray(owner, dtype=np.int64)
    full, rest = divmod(len(stream_arr), context_length)
    blocks = full + (1 if rest and not drop_last else 0)
    if blocks == 0:
        raise PrunusError(
            f"the split has {len(stream_arr)} tokens, fewer than one block of {context_length}."
        )
    size = blocks * context_length
    input_ids = np.full(size, pad, dtype=np.int64)
    token_doc = np.full(size, -1, dtype=np.int64)
    mask = np.zeros(size, dtype=np.int64)
    n = min(size, len(stream_arr))
    input_ids[:n], token_doc[:n], mask[:n] = stream_arr[:n], owner_arr[:n], 1
    shape = (blocks, context_length)
    return PackedBlocks(input_ids.reshape(shape), mask.reshape(shape), token_doc.reshape(shape))


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    out = tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)
    return [list(x) for x in out["input_ids"]]


def _special_ids(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if eos is None:
        raise PrunusError("the tokenizer has no eos token; sequences need one between documents.")
    return int(eos), int(eos if pad is None else pad)


def _check_context(context_length: int) -> None:
    if not isinstance(context_length, (int, np.integer)) or context_length < 2:
        raise PrunusError(
            f"context_length must be an integer of at least 2 (got {context_length!r})."
        )
