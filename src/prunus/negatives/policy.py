"""A negatives policy end to end: subsample, mine or draw negatives, fine-tune, evaluate.

:func:`run_policy` is what a study runs for one (policy, seed): it returns a flat dict of
metrics and costs. Everything that does not depend on the seed (dataset, pre-trained model,
subsamples, pre-trained embeddings, mined negatives for ``sampling="top"``) is computed once per
process and reused, and the embeddings are also cached on disk by fingerprint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, Literal, get_args

import numpy as np
from pydantic import Field

from prunus.config import StrictModel, validated
from prunus.errors import PrunusError
from prunus.registry import NEGATIVES

PolicyName = Literal["pretrained", "in-batch", "random", "mined", "mined-margin", "mined-guided"]

_MODELS: dict[tuple, tuple[Any, str]] = {}
_DATASETS: dict[tuple, Any] = {}
_SAMPLES: dict[tuple, dict[str, np.ndarray]] = {}
_STATES: dict[tuple, dict] = {}


class PolicyConfig(StrictModel):
    """Settings of one negatives run (every key has a default; see :func:`run_policy`)."""

    policy: PolicyName = "in-batch"
    dataset: Literal["pycode"] = "pycode"
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    model: str = "minilm"
    max_seq_length: int = Field(128, ge=8, le=512)
    num_negatives: int = Field(1, ge=1)
    rank_range: tuple[int, int] = (0, 30)
    margin: float = Field(0.05, ge=0)
    margin_kind: Literal["absolute", "relative"] = "relative"
    sampling: Literal["top", "random"] = "top"
    guide_margin: float = Field(0.0, ge=0)
    train_pairs: int | None = Field(512, ge=2)
    mining_corpus: int | None = Field(2000, ge=2)
    eval_split: Literal["dev", "test"] = "test"
    eval_queries: int | None = Field(300, ge=1)
    eval_corpus: int | None = Field(2000, ge=10)
    data_seed: int = Field(0, ge=0)
    tune: Literal["query", "both"] = "query"
    train_layers: int | None = Field(2, ge=1)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-4, gt=0)
    warmup: float = Field(0.1, ge=0, lt=1)
    scale: float = Field(20.0, gt=0)
    encode_batch_size: int = Field(64, ge=1)


def check_config(config: dict[str, Any]) -> PolicyConfig:
    """Validate the settings of a negatives run (one-sentence :class:`PrunusError`)."""
    cfg: PolicyConfig = validated(PolicyConfig, dict(config), where="negatives")  # type: ignore[assignment]
    if cfg.rank_range[0] < 0 or cfg.rank_range[1] - cfg.rank_range[0] < cfg.num_negatives:
        raise PrunusError(
            f"negatives.rank_range must satisfy 0 <= lo and hi - lo >= num_negatives "
            f"(got {cfg.rank_range})."
        )
    return cfg


def run_policy(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Fine-tune the embedding model under one negatives policy and evaluate retrieval.

    Policies (the registry ``prunus.registry.NEGATIVES``), each adding to the previous:

    * ``pretrained``: no fine-tuning (the reference).
    * ``in-batch``: MultipleNegativesRankingLoss, the other rows' positives as negatives.
    * ``random``: + ``num_negatives`` random documents of the mining pool per pair.
    * ``mined``: + top-``num_negatives`` mined negatives in ``rank_range`` (no margin).
    * ``mined-margin``: mined under ``margin`` (``margin_kind``; default relative 0.05).
    * ``mined-guided``: ``mined-margin`` + static filtering by the guide and the known
      duplicate groups + GISTEmbed in-batch masking. The guide is the pre-trained model, frozen.

    Data (fixed by ``data_seed``, the same for every policy and seed): ``train_pairs`` queries
    of the train split, a mining pool of ``mining_corpus`` train-split documents holding their
    positives, ``eval_queries`` queries of ``eval_split`` and ``eval_corpus`` documents of the
    whole corpus holding every relevant one. ``tune="query"`` trains the query side only and
    keeps the pre-trained document embeddings (no re-indexing); ``"both"`` trains one encoder.
    The ``seed`` sets the row order, dropout and random negatives.

    Args:
        config: keys of :class:`PolicyConfig` (unknown keys are an error).
        seed: training seed. Default 0.

    Returns:
        ``ndcg@10, mrr@10, recall@1, recall@10, recall@100``, sizes, negatives statistics
        (``skipped_by_margin``, ``guide_flagged``, ``guide_flagged_true_duplicates``,
        ``dropped``) and seconds (``embed_seconds``, ``mine_seconds``, ``train_seconds``,
        ``eval_seconds``, ``seconds``).

    Raises:
        PrunusError: a bad setting (named, with allowed values); MissingExtraError without the
        ``text`` extra.
    """
    from prunus.negatives.embeddings import embed
    from prunus.negatives.filtering import flag_false_negatives
    from prunus.negatives.metrics import evaluate
    from prunus.negatives.mining import select_negatives
    from prunus.negatives.partial import TopLayers
    from prunus.negatives.train import TrainingPairs, fine_tune, random_negatives

    cfg = check_config(config)
    started = time.perf_counter()
    dataset = _dataset(cfg)
    pretrained, key = _pretrained(cfg)
    sample = _sample(cfg, dataset)
    groups = dataset.duplicate_group
    pool = sample["pool"]
    out: dict[str, Any] = {"policy": cfg.policy, "seed": seed}

    t = time.perf_counter()
    train_split = dataset.train.take(sample["train"])
    pool_texts = [dataset.corpus[r] for r in pool]
    eval_texts = [dataset.corpus[r] for r in sample["eval_corpus"]]
    bs = cfg.encode_batch_size
    pool_emb = embed(pretrained, pool_texts, "document", batch_size=bs, model_key=key)
    eval_emb = embed(pretrained, eval_texts, "document", batch_size=bs, model_key=key)
    query_emb = embed(pretrained, train_split.queries, "query", batch_size=bs, model_key=key)
    states = _states(cfg, pretrained, key, train_split.queries, pool_texts, eval_texts, sample)
    out["embed_seconds"] = time.perf_counter() - t

    local = {int(r): i for i, r in enumerate(pool)}
    positives = np.asarray([local[int(r)] for r in dataset.rows(train_split.positive_ids)])
    pool_groups = groups[pool]
    k = cfg.num_negatives
    negatives = np.zeros((len(positives), 0), dtype=np.int64)
    t = time.perf_counter()
    if cfg.policy == "random":
        negatives = random_negatives(positives, np.arange(len(pool)), k, seed, pool_groups)
    elif cfg.policy.startswith("mined"):
        margin = None if cfg.policy == "mined" else cfg.margin
        chosen = select_negatives(
            query_emb, pool_emb, [np.asarray([p]) for p in positives], k,
            tuple(cfg.rank_range), margin, cfg.margin_kind, cfg.sampling, seed,
        )
        negatives = chosen.rows
        out["mined_without_enough"] = chosen.stats["queries_without_enough_negatives"]
        out["skipped_by_margin"] = chosen.stats.get("skipped_by_margin", 0)
        by_guide, by_group = flag_false_negatives(
            positives, negatives, query_emb, pool_emb, cfg.guide_margin, "absolute", pool_groups
        )
        out["guide_flagged"] = int(by_guide.sum())
        out["guide_flagged_true_duplicates"] = int((by_guide & by_group).sum())
        out["duplicate_flagged"] = int(by_group.sum())
        if cfg.policy == "mined-guided":
            drop = by_guide | by_group
            out["dropped"] = int(drop.sum())
            negatives = np.where(drop, -1, negatives)
    out["mine_seconds"] = time.perf_counter() - t if len(negatives.T) else 0.0
    out["negatives_per_pair"] = float((negatives >= 0).sum() / max(len(positives), 1))

    def retrieval(model: Any) -> dict[str, Any]:
        """Retrieval metrics of ``model`` on the evaluation sample."""
        eval_q = doc_emb = None
        if cfg.policy == "pretrained" or cfg.tune == "query":
            doc_emb = eval_emb
        if cfg.policy != "pretrained" and cfg.train_layers is not None:
            top = TopLayers(model, cfg.train_layers, states)
            split = dataset.split(cfg.eval_split).take(sample["eval_queries"])
            eval_q = top.embed(split.queries, bs)
            if doc_emb is None:
                doc_emb = top.embed(eval_texts, bs)
        return evaluate(
            model, dataset, cfg.eval_split, query_rows=sample["eval_queries"],
            corpus_rows=sample["eval_corpus"], document_embeddings=doc_emb,
            query_embeddings=eval_q, batch_size=bs, cache=cfg.policy == "pretrained",
        )

    if cfg.policy == "pretrained":
        t = time.perf_counter()
        metrics = retrieval(pretrained)
        out["eval_seconds"] = time.perf_counter() - t
    else:
        pairs = TrainingPairs(train_split.queries, positives, negatives, pool_texts)
        guide = (query_emb, pool_emb) if cfg.policy == "mined-guided" else None
        trained = fine_tune(
            copy.deepcopy(pretrained), pairs,
            document_embeddings=pool_emb if cfg.tune == "query" else None,
            guide=guide, guide_margin=cfg.guide_margin, train_layers=cfg.train_layers,
            epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup,
            scale=cfg.scale, seed=seed, states=states, evaluation=retrieval,
        )
        metrics = trained["metrics"]
        out.update(
            steps=trained["steps"], train_seconds=trained["seconds"],
            eval_seconds=trained["eval_seconds"], loss_first=trained["loss_first"],
            loss_last=trained["loss_last"], masked_per_anchor=trained["masked_per_anchor"],
        )
    out.update(metrics)
    out.update(train_pairs=len(positives), pool=len(pool))
    out["seconds"] = time.perf_counter() - started
    return out



# One line per policy for ``prunus methods negatives`` (the details are in :func:`run_policy`).
_SUMMARIES = {
    "pretrained": "no fine-tuning (the reference)",
    "in-batch": "MultipleNegativesRankingLoss: the other rows' positives as negatives",
    "random": "in-batch + num_negatives random documents of the mining pool per pair",
    "mined": "in-batch + the top mined negatives in rank_range (no margin)",
    "mined-margin": "mined under a margin (margin_kind; default relative 0.05)",
    "mined-guided": "mined-margin + guide/duplicate filtering + GISTEmbed in-batch masking",
}


def _runner(policy: str) -> Callable[..., dict[str, Any]]:
    def run(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
        return run_policy({**config, "policy": policy}, seed=seed)

    run.__doc__ = f"run_policy(config, seed) under the {policy!r} negatives policy."
    return run


# The registry ``prunus.registry.NEGATIVES``: ``runner(config, seed=0) -> metrics``.
for _policy in get_args(PolicyName):
    NEGATIVES.register(_policy, summary=_SUMMARIES[_policy])(_runner(_policy))

def _states(cfg, pretrained, key, train_queries, pool_texts, eval_texts, sample) -> dict | None:
    """The frozen bottom's outputs for every text this sample can train or evaluate on,
    computed once in one canonical order (so results never depend on which policy ran first)."""
    from prunus.negatives.partial import TopLayers

    if cfg.train_layers is None:
        return None
    store_key = (key, cfg.train_layers, cfg.tune, id(sample))
    if store_key not in _STATES:
        store: dict = {}
        texts = list(train_queries)
        texts += _eval_queries(cfg, sample)
        if cfg.tune == "both":
            texts += list(pool_texts) + list(eval_texts)
        TopLayers(pretrained, cfg.train_layers, store).precompute(texts, cfg.encode_batch_size)
        _STATES[store_key] = store
    return _STATES[store_key]


def _eval_queries(cfg: PolicyConfig, sample: dict) -> list[str]:
    """The evaluated query texts of a sample."""
    data = _dataset(cfg)
    return data.split(cfg.eval_split).take(sample["eval_queries"]).queries


def _dataset(cfg: PolicyConfig):
    from prunus.datasets import load

    key = (cfg.dataset, tuple(sorted((k, repr(v)) for k, v in cfg.dataset_options.items())))
    if key not in _DATASETS:
        _DATASETS[key] = load(cfg.dataset, **cfg.dataset_options)
    return _DATASETS[key]


def _pretrained(cfg: PolicyConfig) -> tuple[Any, str]:
    from prunus.negatives.model import load_model, model_fingerprint

    key = (cfg.model, cfg.max_seq_length)
    if key not in _MODELS:
        model = load_model(cfg.model, max_seq_length=cfg.max_seq_length)
        model.eval()
        _MODELS[key] = (model, model_fingerprint(model))
    return _MODELS[key]


def _sample(cfg: PolicyConfig, dataset) -> dict[str, np.ndarray]:
    key = (
        dataset.fingerprint, cfg.data_seed, cfg.train_pairs, cfg.mining_corpus,
        cfg.eval_split, cfg.eval_queries, cfg.eval_corpus,
    )
    if key in _SAMPLES:
        return _SAMPLES[key]

    def rng(tag: int) -> np.random.Generator:
        return np.random.default_rng([cfg.data_seed, tag])

    train = take_rows(len(dataset.train), cfg.train_pairs, rng(1))
    positives = dataset.rows(dataset.train.positive_ids[train])
    pool = fill_rows(positives, dataset.corpus_rows("train"), cfg.mining_corpus, rng(2))
    split = dataset.split(cfg.eval_split)
    eval_queries = take_rows(len(split), cfg.eval_queries, rng(3))
    relevant = np.concatenate(dataset.relevant_ids(split.positive_ids[eval_queries]))
    eval_corpus = fill_rows(dataset.rows(relevant), dataset.corpus_rows(None), cfg.eval_corpus,
                            rng(4))
    _SAMPLES[key] = {
        "train": train, "pool": pool, "eval_queries": eval_queries, "eval_corpus": eval_corpus,
    }
    return _SAMPLES[key]


def take_rows(n_all: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``range(n_all)`` drawn without replacement, sorted (all of them if ``n`` is None
    or not smaller)."""
    if n is None or n >= n_all:
        return np.arange(n_all)
    return np.sort(rng.choice(n_all, size=n, replace=False))


def fill_rows(required: np.ndarray, candidates: np.ndarray, size: int | None,
              rng: np.random.Generator) -> np.ndarray:
    """Every ``required`` row plus random ``candidates`` up to ``size`` rows in all, sorted
    (every candidate if ``size`` is None)."""
    required = np.unique(required)
    others = np.setdiff1d(candidates, required)
    room = len(others) if size is None else max(0, min(len(others), size - len(required)))
    extra = rng.choice(others, size=room, replace=False) if room else others[:0]
    return np.sort(np.concatenate([required, extra]))
