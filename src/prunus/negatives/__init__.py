"""Negatives for contrastive / embedding training: mine hard negatives, filter false negatives.

- :func:`mine` retrieves hard negatives with a bi-encoder under a rank range and a margin
  (absolute or relative), top or random sampling; the rule is that of sentence-transformers'
  ``mine_hard_negatives`` and NV-Retriever, with a blocked top-k that keeps memory bounded.
- :func:`filter_negatives` drops mined negatives that a guide model or known duplicate groups
  mark as positives and counts them; :func:`gist_mask` / :func:`ranking_loss` mask in-batch
  false negatives the GISTEmbed way (:class:`GuidedMultipleNegativesRankingLoss` for
  sentence-transformers training).
- :func:`retrieval_metrics` / :func:`evaluate` give nDCG@10, MRR@10 and Recall@k.
- :func:`run_policy` fine-tunes and evaluates one negatives policy (``NEGATIVE_POLICIES``).
- :func:`load_pycode` builds the offline ``pycode`` retrieval dataset.

Importing this package is light; sentence-transformers loads on first use (``prunus[text]``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mine": "prunus.negatives.mining",
    "select_negatives": "prunus.negatives.mining",
    "search_topk": "prunus.negatives.mining",
    "MinedNegatives": "prunus.negatives.mining",
    "MARGIN_KINDS": "prunus.negatives.mining",
    "SAMPLINGS": "prunus.negatives.mining",
    "embed": "prunus.negatives.embeddings",
    "load_model": "prunus.negatives.model",
    "filter_negatives": "prunus.negatives.filtering",
    "gist_mask": "prunus.negatives.filtering",
    "ranking_loss": "prunus.negatives.filtering",
    "GuidedMultipleNegativesRankingLoss": "prunus.negatives.filtering",
    "retrieval_metrics": "prunus.negatives.metrics",
    "evaluate": "prunus.negatives.metrics",
    "fine_tune": "prunus.negatives.train",
    "random_negatives": "prunus.negatives.train",
    "run_policy": "prunus.negatives.policy",
    "PolicyConfig": "prunus.negatives.policy",
    "load_pycode": "prunus.datasets.pycode",
    "RetrievalDataset": "prunus.datasets.retrieval",
}


def __getattr__(name: str) -> Any:
    if name == "NEGATIVE_POLICIES":  # the registry's names (prunus.registry.NEGATIVES)
        from prunus.registry import NEGATIVES

        return NEGATIVES.names()
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prunus.negatives' has no attribute {name!r}")


__all__ = [
    "MARGIN_KINDS",
    "NEGATIVE_POLICIES",
    "SAMPLINGS",
    "GuidedMultipleNegativesRankingLoss",
    "MinedNegatives",
    "PolicyConfig",
    "RetrievalDataset",
    "embed",
    "evaluate",
    "filter_negatives",
    "fine_tune",
    "gist_mask",
    "load_model",
    "load_pycode",
    "mine",
    "random_negatives",
    "ranking_loss",
    "retrieval_metrics",
    "run_policy",
    "search_topk",
    "select_negatives",
]
