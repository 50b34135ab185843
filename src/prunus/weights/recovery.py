"""Recovery after pruning: a short fine-tune of a few parameters, masks held fixed, on a
recovery set chosen by a prunus data policy.

This is where the two halves of prunus meet in one decision: *which weights* were pruned
(any mask of :mod:`prunus.weights`) and *which examples* repair the damage.

What is trained (``params``):

- ``"norm+bias"`` — PERP (Zimmer et al. 2023, *PERP: Rethinking the Prune-Retrain Paradigm
  in the Era of LLMs*): only the parameters of normalisation layers (LayerNorm, RMSNorm, …)
  and every bias; well under 1% of a transformer's parameters, and no mask can be touched.
- ``"lora"`` — LoRA adapters (Hu et al. 2021) via ``peft`` on the masked linear layers:
  ``ΔW = (α/r)·B·A``, merged back at the end **through the mask**, ``W' = (W + ΔW) ⊙ M``, so
  pruned positions stay exactly zero and the model has no adapter left. By default
  (``lora_delta="masked"``) the forward pass also uses ``(W + ΔW) ⊙ M``, so the model trained
  is the model merged. With ``lora_delta="dense"`` training uses peft's own dense side path
  ``W⊙M·x + ΔW·x`` and the masked merge then drops part of what was learnt; pass ``eval_sets``
  to see both (``result.train.perplexity`` is before the merge, ``result.perplexity`` after).
- ``"all"`` — every parameter; masked weights stay masked (their parametrization makes the
  gradient at pruned positions exactly zero, and :func:`prunus.weights.zero_pruned` holds
  the underlying values at zero).

Which data (``policy``):

- ``"random"`` — a seeded uniform subset of the documents (the baseline).
- ``"loss_increase"`` — in the spirit of PASER (2025, *Post-Training Data Selection for
  Efficient Pruned LLM Recovery*): ``score(x) = ℓ_pruned(x) − ℓ_dense(x)``, the increase of
  the document's mean token loss caused by pruning; keep the highest. Needs the ``dense``
  model. (PASER also spreads the set over semantic clusters; that part is not done here.)
- any :class:`~prunus.data.table.ScoreTable` keyed by document id, kept with
  :func:`prunus.data.select` (its ``metadata["keep"]`` policy, else ``"hardest"``).

Models: causal LMs on documents (:class:`~prunus.text.tokenizer.DocumentSequences`; the
fine-tune is :func:`prunus.text.train.train_lm`) and sentence-embedding models on
query/positive pairs (:class:`~prunus.negatives.train.TrainingPairs`; the multiple-negatives
ranking loss of :mod:`prunus.negatives`).

Compute is charged honestly: what was forwarded to score the examples (the pruned and the
dense model for ``loss_increase``) and to train — tokens for an LM, with theoretical FLOPs
(``2·N`` per scoring token, ``6·N`` per training token, as in :mod:`prunus.text.train`; the
frozen weights of ``norm+bias``/``lora`` still cost their backward pass through activations,
so 6·N overstates those a little), texts encoded for an embedding model.

Example::

    prunus.weights.prune(model, 0.5, include_last=False)
    result = prunus.weights.recover(model, sequences, budget=50_000, params="norm+bias",
                                    policy="loss_increase", dense=dense_model)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunus.data.table import HIGHER_IS_HARDER, ScoreTable
from prunus.errors import PrunusError, choice_error, require
from prunus.weights.masks import masked_targets, zero_pruned
from prunus.weights.pretrained import is_conv1d, original_weight

PARAMS = ("norm+bias", "lora", "all")
POLICIES = ("random", "loss_increase")
UNITS = ("tokens", "steps")
PAIR_UNITS = ("examples", "steps")
LORA_DELTAS = ("masked", "dense")
# Default peak learning rates: a few parameters move further per step than all of them.
DEFAULT_LR = {"norm+bias": 1e-3, "lora": 1e-3, "all": 1e-4}
ADAPTER = "default"

__all__ = [
    "DEFAULT_LR",
    "LORA_DELTAS",
    "PAIR_UNITS",
    "PARAMS",
    "POLICIES",
    "UNITS",
    "RecoveryResult",
    "loss_increase_scores",
    "norm_and_bias_parameters",
    "pair_loss_increase_scores",
    "pair_losses",
    "recover",
    "recovery_set",
]


@dataclass
class RecoveryResult:
    """What :func:`recover` did and what it cost.

    Attributes:
        model: the recovered model (the same object, changed in place; no adapter left).
        params: the ``params`` mode.
        trainable: names of the parameters trained (LoRA: the adapter matrices).
        n_trainable: how many values they hold.
        ids: the example ids of the recovery set (document ids, or pair rows), ascending.
        scores: the score table the set was chosen by (None for ``random``).
        train: the :class:`~prunus.text.train.LMResult` of the fine-tune (its perplexities
            are the trained model's, before a LoRA merge); for pairs a dict (``steps``,
            ``examples``, ``texts``, ``train_loss``).
        perplexity: ``eval_sets`` perplexities of the returned model (after the merge).
        compute: ``unit`` (``"tokens"`` or ``"texts"``), what was forwarded for scoring and
            for training (``scoring_tokens``, ``training_tokens`` and their sum ``tokens``;
            pairs: ``scoring_texts``, ``training_texts``, ``texts``, ``training_examples``),
            theoretical ``flops`` (LM) and wall ``seconds`` by phase, and
            ``score_table_cost`` (a given table's own recorded cost, charged to its maker).
    """

    model: nn.Module
    params: str
    trainable: list[str]
    n_trainable: int
    ids: np.ndarray
    scores: ScoreTable | None
    train: Any
    perplexity: dict[str, float] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)


def recover(
    model: nn.Module,
    data: Any,
    budget: int,
    params: str = "norm+bias",
    *,
    policy: str | ScoreTable = "random",
    dense: nn.Module | None = None,
    fraction: float = 0.25,
    unit: str | None = None,
    select_policy: str | None = None,
    column: str | None = None,
    batch_size: int = 16,
    lr: float | None = None,
    seed: int = 0,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_targets: list[str] | None = None,
    lora_delta: str = "masked",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    warmup: float = 0.05,
    grad_clip: float | None = 1.0,
    eval_sets: Mapping[str, Any] | None = None,
    eval_at_start: bool = True,
    scoring_batch_size: int = 32,
    scale: float = 20.0,
) -> RecoveryResult:
    """Fine-tune a pruned model briefly on a chosen recovery set, masks held fixed.

    The recovery set is ``⌊fraction·D⌋`` of the ``D`` examples of ``data`` chosen by
    ``policy`` (:func:`recovery_set`). For a causal LM (``data`` = documents) the fine-tune is
    :func:`prunus.text.train.train_lm` (AdamW, warmup + cosine, seeded order) over the chosen
    documents' windows for exactly ``budget`` training tokens or steps, cycling through the
    set as often as needed. For a sentence-embedding model (``data`` = query/positive pairs)
    it is the multiple-negatives ranking loss of :mod:`prunus.negatives` (in-batch positives
    plus each row's own negatives, scale 20) for exactly ``budget`` pairs or steps.

    Args:
        model: the pruned model (masks from :mod:`prunus.weights`; an unmasked model works
            too). Changed in place.
        data: a :class:`~prunus.text.tokenizer.DocumentSequences` of candidate documents
            (``document_sequences(split, tokenizer, context_length, max_windows=None)``
            scores and trains on whole documents), or
            :class:`~prunus.negatives.train.TrainingPairs` for a sentence-transformers model
            (examples are the pair rows, ids 0…n−1).
        budget: training tokens / pairs, or optimizer steps (see ``unit``), a positive integer.
        params: ``"norm+bias"`` (default, PERP), ``"lora"`` or ``"all"``.
        policy: ``"random"`` (default), ``"loss_increase"`` or a ScoreTable keyed by example id.
        dense: the unpruned model, needed by ``"loss_increase"``.
        fraction: share of the examples in the recovery set, in (0, 1]. Default 0.25.
        unit: ``"tokens"`` (LM default) or ``"steps"`` for documents; ``"examples"`` (pairs
            default) or ``"steps"`` for pairs.
        select_policy: :func:`prunus.data.select` policy for a ScoreTable (default: its
            ``metadata["keep"]``, else ``"hardest"``).
        column: score column of a ScoreTable (default: its main score).
        batch_size: windows (or pairs) per step. Default 16.
        lr: peak learning rate (default :data:`DEFAULT_LR` of ``params``: 1e-3, 1e-3, 1e-4).
        seed: seed of the random recovery set, of tie-breaking and of the training order.
        lora_rank, lora_alpha: LoRA's ``r`` and ``α``. Defaults 8 and 16.
        lora_targets: module names given LoRA adapters (default: the modules whose weight is
            masked, else every linear layer that is not tied to an embedding).
        lora_delta: ``"masked"`` (default): the adapter's delta passes through the mask in the
            forward pass too, ``W⊙M + ΔW⊙M``, so the model trained is exactly the model merged;
            ``"dense"``: peft's own forward (``W⊙M·x + ΔW·x``), masked only at the merge.
        weight_decay: AdamW decay on matrices. Default 0 (a short repair, not a new training).
        schedule, warmup, grad_clip: as in :func:`~prunus.text.train.train_lm`.
        eval_sets: LM only: name -> sequences evaluated (perplexity) before (``eval_at_start``,
            default True) and after training, and again after a LoRA merge.
        scoring_batch_size: windows (pairs) per scoring forward pass. Default 32.
        scale: pairs only: inverse temperature of the ranking loss. Default 20.

    Returns:
        A :class:`RecoveryResult`.

    Raises:
        PrunusError: unknown ``params``, ``policy`` or ``unit``; ``budget`` not a positive
            integer; ``fraction`` outside (0, 1]; ``loss_increase`` without ``dense``; a score
            table with ids that are not examples of ``data``; no parameter to train for
            ``params`` on this model; ``peft`` missing for ``lora``.
    """
    if params not in PARAMS:
        raise choice_error("params", params, PARAMS)
    if lora_delta not in LORA_DELTAS:
        raise choice_error("lora_delta", lora_delta, LORA_DELTAS)
    kind = _data_kind(data)
    units = UNITS if kind == "documents" else PAIR_UNITS
    unit = units[0] if unit is None else unit
    if unit not in units:
        raise choice_error("unit", unit, units)
    budget = _check_budget(budget, unit)
    if int(batch_size) != batch_size or batch_size < 1:
        raise PrunusError(f"batch_size must be a positive integer (got {batch_size!r}).")
    lr = DEFAULT_LR[params] if lr is None else lr
    if not lr > 0:
        raise PrunusError(f"lr must be positive (got {lr!r}).")
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise PrunusError(f"fraction must be a share of the examples in (0, 1] (got {fraction!r}).")
    settings = {
        "policy": policy, "dense": dense, "fraction": fraction, "select_policy": select_policy,
        "column": column, "batch_size": int(batch_size), "lr": lr, "seed": seed,
        "weight_decay": weight_decay, "schedule": schedule, "warmup": warmup,
        "grad_clip": grad_clip, "scoring_batch_size": scoring_batch_size,
        "lora": (lora_rank, lora_alpha, lora_targets, lora_delta),
    }
    if kind == "documents":
        return _recover_lm(model, data, budget, params, unit, settings, eval_sets, eval_at_start)
    return _recover_pairs(model, data, budget, params, unit, settings, scale)


def _recover_lm(model, data, budget, params, unit, settings, eval_sets, eval_at_start):
    """:func:`recover` for a causal LM on DocumentSequences."""
    from prunus.text.train import LMMeter, evaluate_lm, non_embedding_parameters, train_lm

    meter = LMMeter()
    policy, seed, batch_size = settings["policy"], settings["seed"], settings["batch_size"]
    ids, table = recovery_set(
        model, data, policy, settings["fraction"], dense=settings["dense"], seed=seed,
        select_policy=settings["select_policy"], column=settings["column"],
        batch_size=settings["scoring_batch_size"], meter=meter,
    )
    blocks = _rows_of(data, ids)
    tokens = budget if unit == "tokens" else _tokens_for_steps(blocks, budget, batch_size, seed)
    zero_pruned(model)
    session = _Trainable(model, params, *settings["lora"])
    try:
        train = train_lm(
            model, blocks, tokens=tokens, batch_size=batch_size, lr=settings["lr"], seed=seed,
            eval_sets=eval_sets, eval_at_start=eval_at_start,
            weight_decay=settings["weight_decay"], schedule=settings["schedule"],
            warmup=settings["warmup"], grad_clip=settings["grad_clip"], meter=meter,
        )
        session.finish(merge=True)
    except BaseException:
        session.finish(merge=False)
        raise
    zero_pruned(model)
    perplexity = dict(train.perplexity)
    if params == "lora" and eval_sets:
        meter.n_params = non_embedding_parameters(model)
        with meter.timing("eval"):
            for name, sequences in eval_sets.items():
                perplexity[name] = evaluate_lm(model, sequences, meter=meter)[0]
    scoring = int(meter.tokens_forwarded.get("scoring", 0))
    training = int(meter.tokens_forwarded["train"])
    compute = {
        "unit": "tokens",
        "scoring_tokens": scoring,
        "training_tokens": training,
        "tokens": scoring + training,
        "eval_tokens": int(meter.tokens_forwarded["eval"]),
        "flops": dict(meter.flops),
        "flops_theoretical": True,
        "seconds": dict(meter.seconds),
        "score_table_cost": _table_cost(policy),
    }
    return RecoveryResult(
        model=model, params=params, trainable=session.names, n_trainable=session.count,
        ids=ids, scores=None if _is_random(policy) else table, train=train,
        perplexity=perplexity, compute=compute,
    )


def _recover_pairs(model, pairs, budget, params, unit, settings, scale):
    """:func:`recover` for a sentence-embedding model on TrainingPairs."""
    meter = {"scoring": 0, "training": 0, "seconds": {"scoring": 0.0, "train": 0.0}}
    policy, seed = settings["policy"], settings["seed"]
    ids, table = recovery_set(
        model, pairs, policy, settings["fraction"], dense=settings["dense"], seed=seed,
        select_policy=settings["select_policy"], column=settings["column"],
        batch_size=settings["scoring_batch_size"], meter=meter, scale=scale,
    )
    examples = budget if unit == "examples" else None
    steps = budget if unit == "steps" else None
    zero_pruned(model)
    session = _Trainable(model, params, *settings["lora"])
    try:
        start = time.perf_counter()
        train = _train_pairs(model, pairs, ids, examples=examples, steps=steps, settings=settings,
                             scale=scale)
        meter["seconds"]["train"] += time.perf_counter() - start
        meter["training"] += train["texts"]
        session.finish(merge=True)
    except BaseException:
        session.finish(merge=False)
        raise
    zero_pruned(model)
    model.eval()
    compute = {
        "unit": "texts",
        "scoring_texts": meter["scoring"],
        "training_texts": meter["training"],
        "texts": meter["scoring"] + meter["training"],
        "training_examples": train["examples"],
        "seconds": dict(meter["seconds"]),
        "score_table_cost": _table_cost(policy),
    }
    return RecoveryResult(
        model=model, params=params, trainable=session.names, n_trainable=session.count,
        ids=ids, scores=None if _is_random(policy) else table, train=train, compute=compute,
    )


def _is_random(policy: Any) -> bool:
    return isinstance(policy, str) and policy == "random"


def _table_cost(policy: Any) -> dict:
    return dict(policy.metadata.get("cost") or {}) if isinstance(policy, ScoreTable) else {}


# --------------------------------------------------------------------------- recovery data


def recovery_set(
    model: nn.Module,
    data: Any,
    policy: str | ScoreTable = "random",
    fraction: float = 0.25,
    *,
    dense: nn.Module | None = None,
    seed: int = 0,
    select_policy: str | None = None,
    column: str | None = None,
    batch_size: int = 32,
    meter: Any = None,
    scale: float = 20.0,
) -> tuple[np.ndarray, ScoreTable]:
    """The example ids of a recovery set and the table they were chosen from.

    ``random``: :func:`prunus.data.select` with policy ``"random"`` (seeded). ``loss_increase``:
    :func:`loss_increase_scores` (documents) or :func:`pair_loss_increase_scores` (pairs), keep
    the highest. A ScoreTable: ``select`` with ``select_policy`` (default its
    ``metadata["keep"]``, else ``"hardest"``). Exactly ``⌊fraction·D⌋`` examples of the table
    are kept; they carry no class (``stratify=False``). Scoring cost is charged to ``meter``.

    Raises:
        PrunusError: unknown policy, ``loss_increase`` without ``dense``, a table whose ids are
            not examples of ``data``, ``fraction`` outside (0, 1].
    """
    from prunus.data.select import select

    kind = _data_kind(data)
    example_ids = _document_ids(data) if kind == "documents" else np.arange(len(data.queries))
    if isinstance(policy, ScoreTable):
        table = policy
        unknown = np.setdiff1d(table.ids, example_ids)
        if len(unknown):
            raise PrunusError(
                f"policy: the score table's ids must be {kind} ids of data; "
                f"{len(unknown)} are not (e.g. {int(unknown[0])})."
            )
        keep = select_policy or table.metadata.get("keep") or "hardest"
    elif _is_random(policy):
        zeros = np.zeros(len(example_ids))
        table = ScoreTable(example_ids, zeros, {"random": zeros}, {"method": "random", "keep": "random"})
        keep = "random"
    elif isinstance(policy, str) and policy == "loss_increase":
        if dense is None:
            raise PrunusError(
                "dense must be the unpruned model when policy is 'loss_increase' "
                "(the score is the pruned model's loss minus the dense model's)."
            )
        if kind == "documents":
            table = loss_increase_scores(model, dense, data, batch_size=batch_size, meter=meter)
        else:
            table = pair_loss_increase_scores(model, dense, data, batch_size=batch_size,
                                              scale=scale, meter=meter)
        keep = "hardest"
    else:
        raise choice_error("policy", policy, [*POLICIES, "a ScoreTable"])
    ids = select(table, fraction, keep, stratify=False, seed=seed, column=column)
    return np.asarray(ids, dtype=np.int64), table


def loss_increase_scores(
    pruned: nn.Module,
    dense: nn.Module,
    sequences: Any,
    *,
    batch_size: int = 32,
    meter: Any = None,
) -> ScoreTable:
    """Loss increase from pruning, per document (in the spirit of PASER, 2025).

    ``score(x) = ℓ_pruned(x) − ℓ_dense(x)`` with ``ℓ(x)`` the document's mean next-token loss
    over all its windows (:func:`prunus.text.lm.document_losses`). Higher means pruning hurt
    this document more; a recovery set keeps the highest (``metadata["keep"] = "hardest"``).
    Columns ``loss_increase``, ``pruned_loss``, ``dense_loss``, ``tokens``; ``metadata["cost"]``
    has the seconds and the theoretical FLOPs (``2·N`` per token forwarded, both models).

    Args:
        pruned: the pruned model.
        dense: the same model before pruning.
        sequences: :class:`~prunus.text.tokenizer.DocumentSequences` of the candidates.
        batch_size: windows per forward pass. Default 32.
        meter: an :class:`~prunus.text.train.LMMeter` charged with the scoring tokens.
    """
    from prunus.text.lm import document_losses
    from prunus.text.train import non_embedding_parameters

    _check_sequences(sequences)
    start = time.perf_counter()
    context = meter.timing("scoring") if meter is not None else _nothing()
    with context:
        after = document_losses(pruned, sequences, batch_size=batch_size)
        before = document_losses(dense, sequences, batch_size=batch_size)
    seconds = time.perf_counter() - start
    forwarded = int(np.asarray(sequences.attention_mask).sum())
    flops = 0.0
    for net in (pruned, dense):
        n = non_embedding_parameters(net)
        flops += 2.0 * n * forwarded
        if meter is not None:
            meter.charge_forward("scoring", forwarded, n)
    increase = after["loss"] - before["loss"]
    columns = {
        "loss_increase": increase,
        "pruned_loss": after["loss"],
        "dense_loss": before["loss"],
        "tokens": after["tokens"].astype(np.float64),
    }
    return ScoreTable(
        after["id"],
        np.zeros(len(increase), dtype=np.int64),
        columns,
        {
            "method": "loss_increase",
            "column": "loss_increase",
            "directions": dict.fromkeys(columns, HIGHER_IS_HARDER),
            "keep": "hardest",
            "cost": {"seconds": seconds, "flops": flops, "flops_theoretical": True,
                     "tokens": 2 * forwarded},
        },
    )


def pair_loss_increase_scores(
    pruned: nn.Module,
    dense: nn.Module,
    pairs: Any,
    *,
    batch_size: int = 32,
    scale: float = 20.0,
    meter: dict | None = None,
) -> ScoreTable:
    """Loss increase from pruning per query/positive pair of a sentence-embedding model.

    ``score(i) = ℓ_pruned(i) − ℓ_dense(i)`` with ``ℓ`` the pair's ranking loss under a fixed
    batching (:func:`pair_losses`). Ids are the pair rows 0…n−1; keep the highest. Columns
    ``loss_increase``, ``pruned_loss``, ``dense_loss``; ``metadata["cost"]`` the seconds and
    ``texts`` encoded (both models).
    """
    start = time.perf_counter()
    after, texts = pair_losses(pruned, pairs, batch_size=batch_size, scale=scale)
    before, _ = pair_losses(dense, pairs, batch_size=batch_size, scale=scale)
    seconds = time.perf_counter() - start
    if meter is not None:
        meter["scoring"] += 2 * texts
        meter["seconds"]["scoring"] += seconds
    columns = {"loss_increase": after - before, "pruned_loss": after, "dense_loss": before}
    n = len(after)
    return ScoreTable(
        np.arange(n), np.zeros(n, dtype=np.int64), columns,
        {"method": "loss_increase", "column": "loss_increase",
         "directions": dict.fromkeys(columns, HIGHER_IS_HARDER), "keep": "hardest",
         "cost": {"seconds": seconds, "texts": 2 * texts}},
    )


@torch.no_grad()
def pair_losses(
    model: nn.Module, pairs: Any, *, batch_size: int = 32, scale: float = 20.0
) -> tuple[np.ndarray, int]:
    """Per-pair multiple-negatives ranking loss (Henderson et al. 2017) under a fixed batching.

    Rows are taken in order in chunks of ``batch_size``; each chunk's loss is
    :meth:`prunus.negatives.train.Contrastive.losses` (candidates: the chunk's positives then
    its rows' own negatives, ``-1`` = none; ``ℓ(i) = −log softmax_j(scale · cos(q_i, c_j))[pos(i)]``
    with the other copies of the row's positive removed), the same loss the fine-tune trains.
    Returns the losses and the number of texts encoded.
    """
    from prunus.negatives.train import Contrastive

    task = Contrastive(model, pairs, train_layers=None, scale=scale)
    x, y = task.tensors(pairs, torch.device("cpu"))
    was_training = model.training
    model.eval()
    out, texts = [], 0
    try:
        for begin in range(0, len(pairs.queries), batch_size):
            rows = slice(begin, begin + batch_size)
            out.append(task.losses(model, x[rows], y[rows], None).double().cpu().numpy())
            texts += 2 * len(x[rows]) + int((y[rows, 1:] >= 0).sum())
    finally:
        model.train(was_training)
    return np.concatenate(out), texts


def _pair_examples(n: int, steps: int, batch_size: int) -> int:
    """The pairs that make the Trainer take exactly ``steps`` steps over ``n`` rows (each
    pass ``⌈n / batch_size⌉`` batches, its last one short)."""
    passes, rest = divmod(steps, math.ceil(n / batch_size))
    return passes * n + rest * batch_size


def _train_pairs(model, pairs, ids, *, examples, steps, settings, scale) -> dict[str, Any]:
    """The multiple-negatives ranking loss (:class:`~prunus.negatives.train.Contrastive`) on
    the one :class:`~prunus.train.Trainer` over the chosen pair rows (AdamW, seeded order, a
    fresh permutation each pass) for exactly ``examples`` pairs or ``steps`` steps; only the
    parameters left trainable by :class:`_Trainable` are optimised."""
    from prunus.negatives.train import Contrastive, TrainingPairs
    from prunus.train.events import Callback
    from prunus.train.trainer import Trainer

    class Recovery(Contrastive):
        def parameter_groups(self, model, weight_decay):
            """The trainable parameters in the LM task's groups: no decay on biases, norms
            and embeddings."""
            from prunus.text.task import CausalLM

            return CausalLM().parameter_groups(model, weight_decay)

        def train_mode(self, model):
            model.train()

    class Steps(Callback):
        def __init__(self):
            self.losses, self.texts = [], 0

        def on_after_step(self, state):
            self.losses.append(float(state.loss.detach()))
            self.texts += 2 * len(state.batch) + int((state.batch.y[:, 1:] >= 0).sum())

    chosen = TrainingPairs([pairs.queries[i] for i in ids], pairs.positive_rows[ids],
                           pairs.negative_rows[ids], pairs.corpus)
    batch_size = settings["batch_size"]
    if examples is None:
        examples = _pair_examples(len(ids), steps, batch_size)
    record = Steps()
    device = getattr(model, "device", None) or next(model.parameters()).device
    with torch.random.fork_rng():
        Trainer(
            model, chosen, [record], task=Recovery(model, chosen, train_layers=None, scale=scale),
            examples=examples, batch_size=batch_size, optimizer="adamw", lr=settings["lr"],
            betas=[0.9, 0.95], weight_decay=settings["weight_decay"],
            schedule=settings["schedule"], warmup=settings["warmup"],
            grad_clip=settings["grad_clip"], seed=settings["seed"], device=str(device),
            eval_each_epoch=False,
        ).fit()
    model.eval()
    return {"steps": len(record.losses), "examples": int(examples), "texts": record.texts,
            "train_loss": record.losses}


# --------------------------------------------------------------------------- parameters


def norm_and_bias_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """PERP's trainable set: every parameter of a normalisation module (``LayerNorm``,
    ``RMSNorm``, ``GroupNorm``, ``BatchNorm*`` or any module whose class name ends in
    ``Norm``) and every parameter named ``bias``. Masked weights are never in it."""
    out, seen = [], set()
    for module_name, module in model.named_modules():
        norm = isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not (norm or name == "bias"):
                continue
            seen.add(id(p))
            out.append((f"{module_name}.{name}" if module_name else name, p))
    return out


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
)


class _Trainable:
    """Freeze everything but the chosen parameters (injecting LoRA adapters for ``lora``);
    :meth:`finish` merges the adapters through the masks and restores ``requires_grad``."""

    def __init__(self, model: nn.Module, params: str, rank: int, alpha: float,
                 targets: list[str] | None, delta: str = "masked") -> None:
        self.model = model
        self.params = params
        self.delta = delta
        self.flags = {id(p): (p, p.requires_grad) for p in model.parameters()}
        self.lora_modules: list[str] = []
        if params == "lora":
            self._inject(rank, alpha, targets)
        chosen = self._chosen()
        if not chosen:
            raise PrunusError(
                f"params {params!r} finds nothing to train on this model "
                f"({_missing_reason(params)}); use one of: {', '.join(PARAMS)}."
            )
        for p in model.parameters():
            p.requires_grad_(False)
        for _, p in chosen:
            p.requires_grad_(True)
        self.names = [name for name, _ in chosen]
        self.count = sum(p.numel() for _, p in chosen)

    def _chosen(self) -> list[tuple[str, nn.Parameter]]:
        if self.params == "norm+bias":
            return norm_and_bias_parameters(self.model)
        if self.params == "lora":
            return [(n, p) for n, p in self.model.named_parameters() if "lora_" in n]
        return list(self.model.named_parameters())

    def _inject(self, rank: int, alpha: float, targets: list[str] | None) -> None:
        if int(rank) != rank or rank < 1:
            raise PrunusError(f"lora_rank must be a positive integer (got {rank!r}).")
        if not alpha > 0:
            raise PrunusError(f"lora_alpha must be positive (got {alpha!r}).")
        names = lora_target_modules(self.model) if targets is None else list(targets)
        known = set(lora_target_modules(self.model, masked_only=False))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise PrunusError(
                f"lora_targets must name linear layers of the model, e.g. "
                f"{', '.join(sorted(known)[:4]) or 'none found'} (got {unknown[0]!r})."
            )
        if not names:
            return
        peft = require("peft", "lm")
        modules = dict(self.model.named_modules())
        conv1d = {n for n in names if not isinstance(modules[n], nn.Linear)}
        if conv1d and len(conv1d) != len(names):
            raise PrunusError(
                "lora_targets must be all nn.Linear or all GPT-2 Conv1D layers, not a mix."
            )
        config = peft.LoraConfig(
            r=int(rank), lora_alpha=alpha, lora_dropout=0.0, bias="none",
            target_modules=names, fan_in_fan_out=bool(conv1d),
        )
        peft.inject_adapter_in_model(config, self.model, adapter_name=ADAPTER)
        self.lora_modules = names
        if self.delta == "masked":
            modules = dict(self.model.named_modules())
            for name in names:
                _mask_delta_in_forward(modules[name])

    @torch.no_grad()
    def finish(self, merge: bool) -> None:
        if self.lora_modules:
            _merge_lora(self.model, self.lora_modules, merge)
            self.lora_modules = []
        for p, flag in self.flags.values():
            p.requires_grad_(flag)


def lora_target_modules(model: nn.Module, masked_only: bool = True) -> list[str]:
    """Names of the layers LoRA adapts by default: those whose weight carries a mask (when
    any does and ``masked_only``), else every ``nn.Linear`` / GPT-2 ``Conv1D`` whose weight is
    not tied to an embedding (the output head)."""
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    linear = []
    for name, module in model.named_modules():
        if not (isinstance(module, nn.Linear) or is_conv1d(module)):
            continue
        if not name or id(original_weight(module)) in embedding:
            continue
        linear.append(name)
    if masked_only:
        masked = {t.name.rpartition(".")[0] for t in masked_targets(model)}
        chosen = [n for n in linear if n in masked]
        if chosen:
            return chosen
    return linear


class _MaskedDelta(nn.Module):
    """Parametrization appended after a :class:`~prunus.weights.masks.Mask`:
    ``W⊙M ↦ W⊙M + ΔW⊙M`` with ``ΔW = (α/r)·B·A`` read from a peft LoRA layer, so that the
    forward pass trains exactly the weight that the merge will produce."""

    def __init__(self, layer: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self._layer = [layer]  # a list: not a submodule (the layer holds this module)
        self.mask = mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self._layer[0].get_delta_weight(ADAPTER).to(weight.dtype) * self.mask


def _mask_delta_in_forward(layer: nn.Module) -> None:
    """Turn peft's dense side path ``x ↦ (α/r)·B·A·x`` off on a masked layer and add the
    masked delta to its weight instead (:class:`_MaskedDelta`). Unmasked layers keep peft's
    own forward (their delta is exact already)."""
    from torch.nn.utils import parametrize

    base = layer.base_layer
    if not parametrize.is_parametrized(base, "weight"):
        return
    mask = next(p.mask for p in base.parametrizations.weight if hasattr(p, "mask"))
    layer.enable_adapters(False)  # peft's forward: base layer only (grads are set again later)
    parametrize.register_parametrization(base, "weight", _MaskedDelta(layer, mask))


def _merge_lora(model: nn.Module, names: list[str], merge: bool) -> None:
    """Replace every adapted layer by its base layer; with ``merge``, first add the adapter's
    delta to the base weight through its mask: ``original += ΔW ⊙ M`` (so ``W' = (W + ΔW) ⊙ M``
    and pruned positions stay exactly zero)."""
    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        base = layer.base_layer
        if hasattr(base, "parametrizations"):  # drop a _MaskedDelta, keep the Mask
            plist = base.parametrizations.weight
            for i in reversed(range(len(plist))):
                if isinstance(plist[i], _MaskedDelta):
                    del plist[i]
        if merge:
            delta = layer.get_delta_weight(ADAPTER).to(original_weight(base).dtype)
            from torch.nn.utils import parametrize

            if parametrize.is_parametrized(base, "weight"):
                mask = next(p.mask for p in base.parametrizations.weight if hasattr(p, "mask"))
                base.parametrizations.weight.original.add_(delta * mask)
            else:
                base.weight.add_(delta)
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, base)


def _missing_reason(params: str) -> str:
    return {
        "norm+bias": "no normalisation layer and no bias",
        "lora": "no linear layer to adapt",
        "all": "no parameters",
    }[params]


# --------------------------------------------------------------------------- helpers


def _check_budget(budget: Any, unit: str) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer, float)) or (
        not math.isfinite(budget) or int(budget) != budget or budget < 1
    ):
        raise PrunusError(
            f"budget must be a positive integer number of {unit} (got {budget!r})."
        )
    return int(budget)


def _data_kind(data: Any) -> str:
    """``"documents"`` (DocumentSequences) or ``"pairs"`` (TrainingPairs); else an error."""
    if all(hasattr(data, a) for a in ("queries", "positive_rows", "negative_rows", "corpus")):
        if len(data.queries) == 0:
            raise PrunusError("data holds no pairs to recover on.")
        return "pairs"
    _check_sequences(data)
    return "documents"


def _check_sequences(data: Any) -> None:
    if not all(hasattr(data, a) for a in ("doc_ids", "input_ids", "attention_mask")):
        raise PrunusError(
            "data must be DocumentSequences (prunus.text.document_sequences) or TrainingPairs "
            f"(prunus.negatives.train) (got {type(data).__name__})."
        )
    if len(data.doc_ids) == 0:
        raise PrunusError("data holds no documents to recover on.")


def _document_ids(data: Any) -> np.ndarray:
    doc = np.asarray(data.doc_ids, dtype=np.int64)
    _, first = np.unique(doc, return_index=True)
    return doc[np.sort(first)]


def _rows_of(data: Any, ids: np.ndarray):
    """The windows of the chosen documents as training blocks (padding stays padding)."""
    from prunus.text.tokenizer import PackedBlocks

    rows = np.flatnonzero(np.isin(np.asarray(data.doc_ids), ids))
    input_ids = np.asarray(data.input_ids)[rows]
    mask = np.asarray(data.attention_mask)[rows]
    owner = np.where(mask > 0, np.asarray(data.doc_ids)[rows][:, None], -1)
    return PackedBlocks(input_ids, mask, owner.astype(np.int64))


def _tokens_for_steps(blocks: Any, steps: int, batch_size: int, seed: int) -> int:
    """The token budget that makes :func:`~prunus.text.train.train_lm` take exactly ``steps``
    steps: the real tokens of the first ``steps`` batches of its seeded plan."""
    from prunus.text.train import tokens_for_steps

    if int(np.asarray(blocks.attention_mask).sum()) == 0:
        raise PrunusError("the recovery set holds no tokens.")
    return tokens_for_steps(blocks, steps, batch_size, seed)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
