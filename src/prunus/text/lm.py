"""Small causal LMs (Hugging Face ``transformers``) and their per-token and per-document losses.

``build_lm("gpt_tiny", vocab_size=4096, context_length=256, seed=0)`` builds a model from a
config with seeded initialisation; a local ``from_pretrained`` directory works too. The same
names are in the model registry (``prunus.models.build_model("gpt_tiny", input_shape=(256,),
num_classes=4096)``: the input shape is the context length, the "classes" are the vocabulary).

| name          | architecture                                          | params (vocab 4096) |
|---------------|-------------------------------------------------------|---------------------|
| ``gpt_tiny``  | GPT-2, 2 layers, width 40, 4 heads, tied head         | ≈ 0.21M             |
| ``gpt_small`` | GPT-2, 4 layers, width 256, 4 heads, tied head        | ≈ 4.3M              |
| ``llama_tiny``| Llama, 2 layers, width 64, 4 heads (2 kv), MLP 172    | ≈ 0.35M             |

Every architecture knob is an option (``n_layer=3``, ``hidden_size=96``, …) passed to the
config.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunus.errors import PrunusError, choice_error, require
from prunus.models import register_model

_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt_tiny": ("gpt2", {"n_layer": 2, "n_embd": 40, "n_head": 4}),
    "gpt_small": ("gpt2", {"n_layer": 4, "n_embd": 256, "n_head": 4}),
    "llama_tiny": (
        "llama",
        {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 172,
        },
    ),
}
LM_NAMES = tuple(_CONFIGS)


def build_lm(
    name: str | nn.Module,
    *,
    vocab_size: int,
    context_length: int,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """A causal LM by name (``gpt_tiny``, ``gpt_small``, ``llama_tiny``) or local directory.

    Args:
        name: a registered LM name, a local directory saved with ``save_pretrained`` (loaded
            with ``local_files_only=True``; nothing is downloaded), or a ready model.
        vocab_size: the tokenizer's vocabulary size (``len(tokenizer)``).
        context_length: the longest sequence the model will see.
        seed: torch seed of the initialisation of a model built from a config. Default 0.
        **options: config fields overriding the defaults (e.g. ``n_layer=3``).

    Raises:
        PrunusError: unknown name, bad options, or a model whose vocabulary is smaller than
            ``vocab_size`` or whose positions are fewer than ``context_length``.
    """
    if isinstance(name, nn.Module):
        model = name
    elif Path(str(name)).is_dir():
        require("transformers", "lm")
        from transformers import AutoModelForCausalLM

        if options:
            raise PrunusError(f"options apply to named LMs, not to a directory (got {options}).")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(name), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise PrunusError(
                f"model directory {str(name)!r} could not be loaded ({exc})."
            ) from exc
    else:
        if name not in _CONFIGS:
            raise choice_error("language model", name, list(_CONFIGS) + ["a local directory"])
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise PrunusError(f"vocab_size must be an integer of at least 2 (got {vocab_size!r}).")
        if not isinstance(context_length, int) or context_length < 2:
            raise PrunusError(
                f"context_length must be an integer of at least 2 (got {context_length!r})."
            )
        model = _from_config(name, vocab_size, context_length, seed, options)
    check_lm_fits(model, vocab_size, context_length)
    return model


def check_lm_fits(model: nn.Module, vocab_size: int, context_length: int) -> None:
    """Raise a :class:`PrunusError` when the tokenizer's vocabulary or the context length is
    larger than the model's."""
    config = getattr(model, "config", None)
    model_vocab = getattr(config, "vocab_size", None)
    if model_vocab is not None and vocab_size > model_vocab:
        raise PrunusError(
            f"vocab_size {vocab_size} is larger than the model's vocabulary of {model_vocab}; "
            "use the model's own tokenizer or a smaller vocab_size."
        )
    positions = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None
    )
    if positions is not None and context_length > positions:
        raise PrunusError(
            f"context_length {context_length} is longer than the model's {positions} positions; "
            f"use context_length <= {positions}."
        )


def _from_config(
    name: str, vocab_size: int, context_length: int, seed: int, options: dict[str, Any]
) -> nn.Module:
    require("transformers", "lm")
    import transformers

    family, defaults = _CONFIGS[name]
    # special-token ids of train_tokenizer's vocabulary (<|endoftext|> = 0, <|pad|> = 1); they
    # matter only for generation, and keep the config's ids inside the vocabulary
    fields = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1, **defaults, **options}
    if family == "gpt2":
        fields.setdefault("n_positions", context_length)
        fields.setdefault("tie_word_embeddings", True)
        config_cls, model_cls = transformers.GPT2Config, transformers.GPT2LMHeadModel
    else:
        fields.setdefault("max_position_embeddings", context_length)
        fields.setdefault("tie_word_embeddings", True)
        config_cls, model_cls = transformers.LlamaConfig, transformers.LlamaForCausalLM
    known = config_cls()  # a config keeps any keyword as an attribute: check against defaults
    unknown = sorted(k for k in options if not hasattr(known, k))
    if unknown:
        raise PrunusError(f"option {unknown[0]!r} is not a field of the {name} config.")
    try:
        config = config_cls(vocab_size=vocab_size, **fields)
    except (TypeError, ValueError) as exc:
        raise PrunusError(f"options of {name!r} are not valid ({exc}).") from exc
    torch.manual_seed(seed)
    model = model_cls(config)
    model.eval()
    return model


def _registered(name: str) -> Callable[..., nn.Module]:
    def factory(input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
        # build_model seeds torch before calling; keep that stream (seed=None → no reseed)
        return build_lm(
            name,
            vocab_size=num_classes,
            context_length=int(tuple(input_shape)[-1]),
            seed=options.pop("seed", torch.initial_seed()),
            **options,
        )

    factory.__name__ = name
    factory.__doc__ = f"``{name}`` causal LM; input_shape=(context_length,), num_classes=vocab."
    return factory


for _name, _desc in (
    ("gpt_tiny", "causal LM: GPT-2, 2 layers, width 40 (~0.2M params at vocab 4096)"),
    ("gpt_small", "causal LM: GPT-2, 4 layers, width 256 (~4M params at vocab 4096)"),
    ("llama_tiny", "causal LM: Llama, 2 layers, width 64 (~0.3M params at vocab 4096)"),
):
    register_model(_name, _desc)(_registered(_name))


# --------------------------------------------------------------------------- losses


def token_losses(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy at every position: ``loss[b, t] = −log p(x[b, t+1] | x[b, ≤t])``.

    Returns ``(losses, mask)``, both of shape (batch, length − 1): ``mask`` is True where the
    target token is real (``attention_mask[:, 1:]``), and ``losses`` is 0 elsewhere. The mean
    of ``losses[mask]`` is what ``model(input_ids, labels=...)`` reports as ``.loss`` with
    padding labelled −100. Logits are upcast to float32, as transformers does.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].bool()
    losses = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
    ).view_as(targets)
    return losses * mask, mask


def mean_token_loss(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token loss over real target tokens (differentiable; for training)."""
    losses, mask = token_losses(model, input_ids, attention_mask)
    return losses.sum() / mask.sum().clamp_min(1)


@torch.no_grad()
def document_losses(
    model: nn.Module,
    sequences: Any,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Per-document mean token loss (log-perplexity) over a :class:`DocumentSequences`.

    A document's loss is the sum of its token losses over all its windows divided by its
    number of predicted tokens. Returns ``{"id", "loss", "tokens"}`` arrays, one entry per
    document in order of first appearance; ``exp(loss)`` is the document's perplexity.

    Raises:
        PrunusError: batch_size below 1, a non-finite loss.
    """
    if batch_size < 1:
        raise PrunusError(f"batch_size must be a positive integer (got {batch_size!r}).")
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    doc_ids = np.asarray(sequences.doc_ids, dtype=np.int64)
    sums = np.zeros(len(doc_ids), dtype=np.float64)
    counts = np.zeros(len(doc_ids), dtype=np.int64)
    try:
        for start in range(0, len(doc_ids), batch_size):
            ids = torch.as_tensor(sequences.input_ids[start : start + batch_size], device=device)
            mask = torch.as_tensor(
                sequences.attention_mask[start : start + batch_size], device=device
            )
            losses, real = token_losses(model, ids, mask)
            sums[start : start + len(ids)] = losses.sum(1).double().cpu().numpy()
            counts[start : start + len(ids)] = real.sum(1).cpu().numpy()
    finally:
        model.train(was_training)
    unique, first, inverse = np.unique(doc_ids, return_index=True, return_inverse=True)
    total = np.bincount(inverse, weights=sums, minlength=len(unique))
    tokens = np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)
    order = np.argsort(first, kind="stable")
    loss = total[order] / np.maximum(tokens[order], 1)
    if not np.isfinite(loss).all():
        raise PrunusError("the model gave a non-finite loss on some documents.")
    return {"id": unique[order], "loss": loss, "tokens": tokens[order]}
