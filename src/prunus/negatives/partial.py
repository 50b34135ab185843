"""Run only the top layers of a transformer encoder, from cached inputs of the frozen bottom.

When only the top ``T`` layers of a model are trained, the bottom (embeddings and the first
layers) maps each text to the same hidden states at every step. :class:`TopLayers` computes
those states once per text and then runs the top layers, pooling and normalisation only, with
gradients where the top layers need them: the same embeddings as the full model (a test checks
it) at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.errors import PrunusError


class TopLayers:
    """Encode texts with a sentence-transformers BERT-style model, running only its top layers.

    Args:
        model: a sentence-transformers model whose first module wraps a Hugging Face encoder
            with ``embeddings`` and ``encoder.layer``.
        layers: how many top layers run per call (the others come from the cache).
        store: a dict to keep the cached states in; share it between copies of one model whose
            bottom weights are equal (e.g. deep copies of a pre-trained model). Default: new.
    """

    def __init__(self, model: Any, layers: int, store: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.backbone = _backbone(model)
        total = len(self.backbone.encoder.layer)
        if not 1 <= layers <= total:
            raise PrunusError(f"train_layers must be in [1, {total}] (got {layers}).")
        self.layers = layers
        self.first = total - layers  # hidden_states[first] is the input of the first top layer
        self.store = {} if store is None else store

    def precompute(self, texts: Sequence[str], batch_size: int = 64) -> None:
        """Cache the bottom's output of every text not cached yet (no gradients)."""
        missing = sorted({t for t in texts if t not in self.store}, key=len)
        if not missing:
            return
        modes = [(m, m.training) for m in self.backbone.modules()]
        self.backbone.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(missing), batch_size):
                    chunk = missing[start : start + batch_size]
                    features = _device(self.model, _prepare(self.model, chunk))
                    out = self.backbone(
                        **{k: v for k, v in features.items() if k in _MODEL_INPUTS},
                        output_hidden_states=True,
                    )
                    states = out.hidden_states[self.first]
                    lengths = features["attention_mask"].sum(1).tolist()
                    for text, state, n in zip(chunk, states, lengths):
                        self.store[text] = state[: int(n)].clone()
        finally:
            for module, mode in modes:  # frozen layers stay in eval, trained ones in train
                module.training = mode

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings of ``texts`` (gradients flow into the top layers if they train)."""
        self.precompute(texts)
        states = [self.store[t] for t in texts]
        length = max(len(s) for s in states)
        batch = torch.zeros((len(states), length, states[0].shape[1]), dtype=states[0].dtype)
        mask = torch.zeros((len(states), length), dtype=torch.int64)
        for i, s in enumerate(states):
            batch[i, : len(s)] = s
            mask[i, : len(s)] = 1
        device = getattr(self.model, "device", torch.device("cpu"))
        replay = _Replay(batch.to(device))
        saved_embeddings = self.backbone.embeddings
        saved_layers = self.backbone.encoder.layer
        self.backbone.embeddings = replay
        self.backbone.encoder.layer = nn.ModuleList(list(saved_layers)[self.first :])
        try:
            features = {
                "input_ids": torch.zeros_like(mask, device=device),
                "attention_mask": mask.to(device),
                "token_type_ids": torch.zeros_like(mask, device=device),
            }
            return self.model(features)["sentence_embedding"]
        finally:
            self.backbone.embeddings = saved_embeddings
            self.backbone.encoder.layer = saved_layers

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 embeddings without gradients (for evaluation)."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                e = self.encode(chunk)
                out.append(torch.nn.functional.normalize(e, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Replay(nn.Module):
    # Stands in for the embedding layer: returns the cached bottom states.
    def __init__(self, states: torch.Tensor) -> None:
        super().__init__()
        self.states = states

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.states


def _backbone(model: Any) -> nn.Module:
    first = model[0] if hasattr(model, "__getitem__") else model
    backbone = getattr(first, "auto_model", None) or getattr(first, "model", None)
    encoder = getattr(backbone, "encoder", None)
    if backbone is None or not hasattr(backbone, "embeddings") or not hasattr(encoder, "layer"):
        raise PrunusError("train_layers needs a BERT-style encoder; use train_layers=None.")
    return backbone


def _prepare(model: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    prepare = getattr(model, "preprocess", None) or model.tokenize
    return prepare(texts)


def _device(model: Any, features: dict[str, Any]) -> dict[str, Any]:
    device = getattr(model, "device", torch.device("cpu"))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
