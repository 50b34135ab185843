"""Embeddings of queries and documents, cached by fingerprint (model weights + texts)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prunus.files import cache_hit, write_cache
from prunus.negatives.model import model_fingerprint

_MEMORY: OrderedDict[str, np.ndarray] = OrderedDict()
_MEMORY_ENTRIES = 16


def embed(
    model: Any,
    texts: Sequence[str],
    kind: Literal["query", "document"] = "document",
    *,
    batch_size: int = 32,
    cache: bool | str | Path = True,
    model_key: str | None = None,
) -> np.ndarray:
    """Unit-length float32 embeddings (one row per text) from ``model``, cached.

    Args:
        model: a sentence-transformers model, or any object with ``encode(texts, **kw)``
            returning an array (``encode_query`` / ``encode_document`` are used when present).
        texts: the texts to embed.
        kind: ``"query"`` or ``"document"`` (selects the model's query/document encoder).
        batch_size: texts per forward pass. Default 32.
        cache: True keeps embeddings in memory and under the user cache dir
            (``$PRUNUS_CACHE_DIR/embeddings``), a path caches there, False never caches.
            The key is the fingerprint of the model's weights, ``kind`` and every text, so a
            fine-tuned model or a changed corpus never reuses stale embeddings; a cached file
            is reused only if its check record (key, size, digest) matches, else it is
            recomputed with a warning (:func:`prunus.files.cache_hit`).
        model_key: a precomputed fingerprint of ``model`` (saves hashing its weights again).
    """
    texts = list(texts)
    key = None
    if cache is not False:
        model_key = model_key or model_fingerprint(model)
        if model_key is not None:
            key = texts_fingerprint(texts, f"{model_key}|{kind}")
    if key is not None and key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = None
    if key is not None:
        path = _cache_root(cache) / f"{key}.npy"
        if cache_hit(path, key):
            array = np.load(path, allow_pickle=False)
            _remember(key, array)
            return array
    array = _encode(model, texts, kind, batch_size)
    if key is not None:
        _remember(key, array)
        _save(path, array)
    return array


def texts_fingerprint(texts: Sequence[str], salt: str = "") -> str:
    """Hash of a list of texts (order matters)."""
    digest = hashlib.blake2b(salt.encode("utf-8"), digest_size=16)
    digest.update(str(len(texts)).encode())
    for text in texts:
        digest.update(text.encode("utf-8", errors="surrogatepass") + b"\0")
    return digest.hexdigest()


def normalise(array: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32; no copy when they already are."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))[:, None]
    if np.all(np.abs(norms - 1.0) < 1e-5):
        return array
    return array / np.maximum(norms, 1e-12)


def clear_memory_cache() -> None:
    """Forget the embeddings kept in memory (the disk cache stays)."""
    _MEMORY.clear()


def _encode(model: Any, texts: list[str], kind: str, batch_size: int) -> np.ndarray:
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    method = getattr(model, f"encode_{kind}", None) or model.encode
    kwargs = {"batch_size": batch_size, "normalize_embeddings": True, "convert_to_numpy": True}
    if hasattr(model, "tokenizer"):
        kwargs["show_progress_bar"] = False
    try:
        array = method(texts, **kwargs)
    except TypeError:  # a minimal encoder that takes only the texts
        array = method(texts)
    return normalise(np.asarray(array))


def _cache_root(cache: bool | str | Path) -> Path:
    if cache is True:
        from prunus.datasets.mnist1d import cache_dir

        return cache_dir() / "embeddings"
    return Path(cache)


def _remember(key: str, array: np.ndarray) -> None:
    array.setflags(write=False)  # shared between callers: never changed in place
    _MEMORY[key] = array
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)


def _save(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    write_cache(path, write, path.stem)
