"""Text for causal language models: corpora with stable document ids, tokenizers, small LMs.

* :mod:`prunus.text.corpus` — the bundled ``stdlib`` corpus (this interpreter's standard-library
  source, split by module, with a target-domain option) and ``text`` (your own files).
* :mod:`prunus.text.tokenizer` — byte-level BPE trained locally and cached, per-document padded
  sequences (for scoring) and packed blocks (for training), both keyed by document id.
* :mod:`prunus.text.lm` — ``gpt_tiny``, ``gpt_small``, ``llama_tiny`` (Hugging Face
  ``transformers`` models built from a config with a seed), per-token and per-document losses.

Nothing heavy is imported here: ``transformers`` and ``tokenizers`` load on first use.
"""

from __future__ import annotations

from prunus.lazy import lazy_getattr

_EXPORTS = {
    "TextCorpus": "corpus",
    "TextSplit": "corpus",
    "load_stdlib": "corpus",
    "load_text": "corpus",
    "train_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "tokenizer_cache_path": "tokenizer",
    "document_sequences": "tokenizer",
    "pack_blocks": "tokenizer",
    "DocumentSequences": "tokenizer",
    "PackedBlocks": "tokenizer",
    "build_lm": "lm",
    "check_lm_fits": "lm",
    "token_losses": "lm",
    "mean_token_loss": "lm",
    "document_losses": "lm",
    "train_lm": "train",
    "evaluate_lm": "train",
    "lm_loss": "train",
    "LMResult": "train",
    "LMMeter": "train",
    "non_embedding_parameters": "train",
    "perplexity_scores": "scores",
    "dsir_scores": "scores",
    "dsir_resample": "scores",
    "dsir_features": "scores",
    "color_filter_scores": "scores",
    "color_filter_models": "scores",
    "embedding_similarity_scores": "scores",
    "document_embeddings": "scores",
    "quality_classifier_scores": "scores",
    "Rho1": "rho1",
    "rho1_mask": "rho1",
    "rho1_loss": "rho1",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS)


__all__ = [
    "DocumentSequences",
    "LMMeter",
    "LMResult",
    "PackedBlocks",
    "Rho1",
    "TextCorpus",
    "TextSplit",
    "build_lm",
    "check_lm_fits",
    "color_filter_models",
    "color_filter_scores",
    "document_embeddings",
    "document_losses",
    "document_sequences",
    "dsir_features",
    "dsir_resample",
    "dsir_scores",
    "embedding_similarity_scores",
    "evaluate_lm",
    "lm_loss",
    "load_stdlib",
    "load_text",
    "load_tokenizer",
    "mean_token_loss",
    "non_embedding_parameters",
    "pack_blocks",
    "perplexity_scores",
    "quality_classifier_scores",
    "rho1_loss",
    "rho1_mask",
    "token_losses",
    "tokenizer_cache_path",
    "train_lm",
    "train_tokenizer",
]
