"""Label issues: find training examples whose given label is probably wrong.

:func:`find_label_issues` trains K-fold proxy models (:func:`out_of_fold_probs`), so that every
example is predicted by a model that never saw it, and applies confident learning
(:func:`confident_learning`, Northcutt, Jiang & Chuang 2021, *Confident Learning: Estimating
Uncertainty in Dataset Labels*) to those out-of-sample probabilities. The result is a
:class:`~prunus.data.table.ScoreTable` keyed by example id: ``label_issue`` (higher = more
likely mislabeled), ``is_issue`` (0/1) and ``suggested_label``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from prunus.data.table import HIGHER_IS_HARDER, ScoreTable
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, choice_error

LABEL_METHODS = ("confident_learning",)
RANK_BY = ("self_confidence", "normalized_margin")
# an example whose given label is (within this much) its predicted class is never an issue
_ARGMAX_SLACK = 1e-6


@dataclass
class LabelIssues:
    """What :func:`confident_learning` found, aligned to the rows it was given.

    Attributes:
        label_issue: per-example issue score, higher = more likely mislabeled (``1 − p̂_y`` for
            ``self_confidence``; ``(max_{k≠y} p̂_k − p̂_y + 1) / 2`` for ``normalized_margin``).
        is_issue: per-example flag (prune by noise rate, see :func:`confident_learning`).
        suggested_label: the predicted class where ``is_issue``, else the given label.
        thresholds: per-class thresholds ``t_j`` (mean ``p̂_j`` over examples labelled ``j``).
        confident_joint: raw counts ``C[i][j]`` (given label i, confidently class j).
        calibrated_joint: ``C̃`` as integer counts: row i sums to the number labelled i and the
            whole matrix to N.
        issues_per_class: ``n_i``, the off-diagonal total of row i of ``C̃`` (after leaving at
            least one example per class), the estimated number of issues among label i.
        rank_by: the ranking used for ``label_issue``.
    """

    label_issue: np.ndarray
    is_issue: np.ndarray
    suggested_label: np.ndarray
    thresholds: np.ndarray
    confident_joint: np.ndarray
    calibrated_joint: np.ndarray
    issues_per_class: np.ndarray
    rank_by: str

    @property
    def num_issues(self) -> int:
        """Number of flagged examples."""
        return int(self.is_issue.sum())

    def ranked(self) -> np.ndarray:
        """Row positions of the flagged examples, most likely mislabeled first."""
        rows = np.flatnonzero(self.is_issue)
        return rows[np.argsort(-self.label_issue[rows], kind="stable")]


def confident_learning(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    rank_by: str = "self_confidence",
    min_examples_per_class: int = 1,
) -> LabelIssues:
    """Confident learning (Northcutt et al. 2021) on out-of-sample predicted probabilities.

    With ``p̂`` the (N, C) out-of-sample probabilities and ``ỹ`` the given labels:

    1. thresholds ``t_j = mean{p̂_j(x) : ỹ(x) = j}`` (a class nobody is labelled with gets a
       threshold no probability reaches);
    2. confident joint: example x labelled i counts in ``C[i][j]`` where j is the argmax of
       ``p̂_k(x)`` over the classes k with ``p̂_k(x) ≥ t_k`` (x counts nowhere if no class
       qualifies); every diagonal entry is at least 1;
    3. calibration: ``C̃[i][j] = C[i][j] / Σ_k C[i][k] · |ỹ = i|``, rescaled to sum to N and
       rounded to integers keeping every row total (largest remainders);
    4. prune by noise rate: for each given label i and each class j ≠ i, flag the
       ``C̃[i][j]`` examples labelled i with the largest margin ``p̂_j − p̂_i`` (the union over
       j; so at most ``n_i = Σ_{j≠i} C̃[i][j]`` per class). Each class keeps at least
       ``min_examples_per_class`` unflagged: if ``C̃[i][i]`` is smaller it is raised to it and
       the difference taken evenly off row i's non-zero off-diagonal counts; a class with no more
       examples than that is not pruned;
    5. an example whose predicted class (argmax ``p̂``) is its given label is never flagged.

    These are the rules of ``cleanlab.filter.find_label_issues(filter_by="prune_by_noise_rate")``
    except in step 2 where two or more classes pass their thresholds: the paper (and prunus)
    takes the argmax among those classes, cleanlab the argmax over all classes; the two agree
    whenever the overall argmax passes its threshold.

    Args:
        labels: (N,) given labels in [0, C).
        pred_probs: (N, C) out-of-sample predicted probabilities, rows summing to 1.
        rank_by: ``"self_confidence"`` (default) or ``"normalized_margin"``: how ``label_issue``
            ranks examples (the flags do not depend on it).
        min_examples_per_class: examples of each given label left unflagged. Default 1.

    Returns:
        A :class:`LabelIssues`.

    Raises:
        PrunusError: ``pred_probs`` is not (N, C) with C ≥ 2 and rows summing to 1, ``labels``
            are outside [0, C), or ``rank_by`` is unknown.
    """
    labels, probs = _check_inputs(labels, pred_probs)
    if rank_by not in RANK_BY:
        raise choice_error("rank_by", rank_by, RANK_BY)
    n, num_classes = probs.shape
    counts = np.bincount(labels, minlength=num_classes)

    thresholds = confident_thresholds(labels, probs)
    joint = confident_joint(labels, probs, thresholds)
    calibrated = calibrate_joint(joint, counts)
    prune = _keep_per_class(calibrated, counts, min_examples_per_class)

    flagged = np.zeros(n, dtype=bool)
    for given in range(num_classes):
        rows = np.flatnonzero(labels == given)
        if len(rows) <= min_examples_per_class:
            continue
        for true in range(num_classes):
            take = int(prune[given, true])
            if true == given or take <= 0:
                continue
            margin = probs[rows, true] - probs[rows, given]
            flagged[rows[np.argsort(-margin, kind="stable")[:take]]] = True
    given_p = probs[np.arange(n), labels]
    adjusted = probs.copy()
    adjusted[np.arange(n), labels] += _ARGMAX_SLACK
    predicted = probs.argmax(axis=1)
    flagged &= adjusted.argmax(axis=1) != labels

    if rank_by == "self_confidence":
        score = 1.0 - given_p
    else:
        others = probs.copy()
        others[np.arange(n), labels] = -np.inf
        score = (others.max(axis=1) - given_p + 1.0) / 2.0
    issues_per_class = prune.sum(axis=1) - np.diag(prune)
    return LabelIssues(
        label_issue=score,
        is_issue=flagged,
        suggested_label=np.where(flagged, predicted, labels).astype(np.int64),
        thresholds=thresholds,
        confident_joint=joint,
        calibrated_joint=calibrated,
        issues_per_class=issues_per_class.astype(np.int64),
        rank_by=rank_by,
    )


def confident_thresholds(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Per-class thresholds ``t_j``: the mean of ``p̂_j`` over the examples labelled ``j``
    (2.0, which no probability reaches, for a class no example is labelled with)."""
    labels, probs = _check_inputs(labels, pred_probs)
    num_classes = probs.shape[1]
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.zeros(num_classes)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    return np.where(counts > 0, sums / np.maximum(counts, 1), 2.0)


def confident_joint(
    labels: np.ndarray, pred_probs: np.ndarray, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """The confident joint ``C[i][j]`` (integer counts, diagonal at least 1): examples labelled i
    whose highest probability among the classes passing their threshold is class j."""
    labels, probs = _check_inputs(labels, pred_probs)
    num_classes = probs.shape[1]
    if thresholds is None:
        thresholds = confident_thresholds(labels, probs)
    passing = probs >= np.asarray(thresholds)[None, :]
    counted = passing.any(axis=1)
    guess = np.where(passing, probs, -np.inf).argmax(axis=1)
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    np.fill_diagonal(joint, np.maximum(np.diag(joint), 1))
    return joint


def calibrate_joint(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """``C̃``: rows scaled to the label counts, the whole to N, rounded keeping row totals."""
    joint = np.asarray(joint, dtype=np.float64)
    counts = np.asarray(label_counts, dtype=np.float64)
    rows = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-100) * counts[:, None]
    rows = rows / max(rows.sum(), 1e-100) * counts.sum()
    return np.stack([_round_keeping_sum(row) for row in rows])


def out_of_fold_probs(
    dataset: Dataset,
    model: Any = "mlp",
    folds: int = 5,
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    *,
    batch_size: int = 128,
    model_options: dict[str, Any] | None = None,
    **train_settings: Any,
) -> np.ndarray:
    """Out-of-sample predicted probabilities from K-fold proxy training.

    For each seed the training split is cut into ``folds`` class-stratified folds
    (:func:`fold_assignment`); for each fold a fresh ``model`` is trained with
    :class:`prunus.train.Trainer` for ``epochs`` epochs on the other folds only, and predicts
    softmax probabilities for the held-out fold. The result is the mean over seeds, so no
    example's probabilities ever come from a model that trained on it.

    Args:
        dataset: the dataset whose training split is predicted.
        model: a registered model name, ``"package.module:factory"`` or an ``nn.Module``
            (copied for every fold). Default ``"mlp"``.
        folds: number of folds K (≥ 2, at most the smallest class count). Default 5.
        seeds: one K-fold round per seed (fold split and initialisation). Default ``(0,)``.
        epochs: training epochs of each fold's model. Default 10.
        batch_size: training batch size. Default 128.
        model_options: keyword options of the model factory.
        **train_settings: any other :class:`prunus.config.TrainConfig` field (``lr``, ``device``...).

    Returns:
        (N, C) float64 array aligned to the rows of ``dataset``; rows sum to 1.

    Raises:
        PrunusError: bad ``folds`` (fewer than 2, or more than the smallest class count), bad
            ``seeds`` or ``epochs``, or bad training settings.
    """
    return _out_of_fold(dataset, model, folds, seeds, epochs, batch_size, model_options,
                        train_settings)[0]


def fold_assignment(dataset: Dataset, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..K−1) of every training row: within each class the rows are shuffled
    (seeded) and dealt to the folds in turn, so every fold holds each class's share.

    Raises:
        PrunusError: ``folds`` is not an integer in [2, smallest class count].
    """
    _check_folds(dataset, folds)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(dataset), dtype=np.int64)
    for label in range(dataset.num_classes):
        rows = np.flatnonzero(dataset.y == label)
        fold[rows[rng.permutation(len(rows))]] = np.arange(len(rows)) % folds
    return fold


def find_label_issues(
    dataset: Dataset,
    model: Any = "mlp",
    method: str = "confident_learning",
    *,
    seeds: Sequence[int] = (0,),
    folds: int = 5,
    epochs: int = 10,
    pred_probs: np.ndarray | None = None,
    rank_by: str = "self_confidence",
    batch_size: int = 128,
    model_options: dict[str, Any] | None = None,
    **train_settings: Any,
) -> ScoreTable:
    """Score every training example of ``dataset`` by how likely its label is wrong.

    Out-of-sample probabilities come from :func:`out_of_fold_probs` (``folds`` proxy models
    per seed, ``epochs`` each), or from ``pred_probs`` when given (then nothing is trained);
    ``method`` turns them into flags (``"confident_learning"``: :func:`confident_learning`).

    Args:
        dataset: the dataset whose training labels are checked.
        model: proxy model (see :func:`out_of_fold_probs`). Default ``"mlp"``.
        method: ``"confident_learning"`` (default; the only one so far).
        seeds: proxy seeds. Default ``(0,)``.
        folds: K of the K-fold proxy training. Default 5.
        epochs: epochs of each proxy model. Default 10.
        pred_probs: (N, C) out-of-sample probabilities aligned to the dataset's rows, to skip
            the proxy training. Default None.
        rank_by: ``"self_confidence"`` or ``"normalized_margin"`` (the ``label_issue`` score).
        batch_size, model_options, **train_settings: proxy training (see :func:`out_of_fold_probs`).

    Returns:
        A :class:`ScoreTable` keyed by id with columns ``label_issue`` (main; higher = more
        likely mislabeled), ``is_issue`` (1.0 / 0.0) and ``suggested_label``; metadata holds the
        method, rank_by, folds, seeds, epochs, model, the number flagged, the per-class
        thresholds and estimated issue counts, the cost, and the dataset fingerprint.

    Raises:
        PrunusError: unknown ``method`` or ``rank_by``, bad ``pred_probs``, bad ``folds``
            (more than the smallest class count), or bad training settings.
    """
    if method not in LABEL_METHODS:
        raise choice_error("label method", method, LABEL_METHODS)
    if rank_by not in RANK_BY:
        raise choice_error("rank_by", rank_by, RANK_BY)
    cost: dict[str, Any] = {"seconds": 0.0, "train_seconds": 0.0, "flops": 0.0}
    if pred_probs is None:
        probs, cost = _out_of_fold(dataset, model, folds, seeds, epochs, batch_size,
                                   model_options, train_settings)
        source = "out_of_fold"
    else:
        probs = np.asarray(pred_probs)
        if probs.ndim != 2 or probs.shape[0] != len(dataset) or probs.shape[1] != dataset.num_classes:
            raise PrunusError(
                f"pred_probs must have shape ({len(dataset)}, {dataset.num_classes}), one row per "
                f"training example and one column per class (got {probs.shape})."
            )
        source = "given"
    result = confident_learning(dataset.y, probs, rank_by=rank_by)
    columns = {
        "label_issue": result.label_issue,
        "is_issue": result.is_issue.astype(np.float64),
        "suggested_label": result.suggested_label.astype(np.float64),
    }
    metadata = {
        "method": method,
        "column": "label_issue",
        "directions": dict.fromkeys(columns, HIGHER_IS_HARDER),
        "description": "confident learning (Northcutt et al. 2021), prune by noise rate",
        "rank_by": rank_by,
        "pred_probs": source,
        "model": None if source == "given" else (model if isinstance(model, str) else type(model).__name__),
        "model_options": model_options or {},
        "folds": None if source == "given" else int(folds),
        "epochs": None if source == "given" else int(epochs),
        "seeds": None if source == "given" else _check_seeds(seeds),
        "num_issues": result.num_issues,
        "issues_per_class": result.issues_per_class.tolist(),
        "thresholds": result.thresholds.tolist(),
        "dataset": {
            "name": dataset.name,
            "options": dataset.options,
            "size": len(dataset),
            "num_classes": dataset.num_classes,
            "flipped": len(dataset.flipped_ids),
            "fingerprint": dataset.fingerprint,
        },
        "prunus_version": _version(),
        "cost": cost,
    }
    return ScoreTable(dataset.ids.copy(), dataset.y.copy(), columns, metadata)


# -- helpers -----------------------------------------------------------------------------------


def _out_of_fold(dataset, model, folds, seeds, epochs, batch_size, model_options, train_settings):
    import torch
    from torch import nn

    from prunus.config import TrainConfig, validated
    from prunus.models import build_model
    from prunus.train import Trainer

    seeds = _check_seeds(seeds)
    if int(epochs) != epochs or epochs < 1:
        raise PrunusError(f"epochs must be a positive integer (got {epochs!r}).")
    for name in ("seed", "epochs"):
        if name in train_settings:
            raise PrunusError(f"{name} is set by out_of_fold_probs itself; use seeds= and epochs=.")
    config = validated(
        TrainConfig, {**train_settings, "epochs": int(epochs), "batch_size": batch_size}, "train"
    )
    _check_folds(dataset, folds)
    probs = np.zeros((len(dataset), dataset.num_classes))
    seconds = flops = 0.0
    start = time.perf_counter()
    for seed in seeds:
        fold = fold_assignment(dataset, folds, seed)
        for k in range(folds):
            train = replace(dataset.subset(dataset.ids[fold != k]), test=None)
            held = np.flatnonzero(fold == k)
            if isinstance(model, nn.Module):
                net = copy.deepcopy(model)
            else:
                net = build_model(model, dataset.input_shape, dataset.num_classes,
                                  seed=seed * folds + k, **(model_options or {}))
            result = Trainer(net, train, config=config, seed=seed * folds + k).fit()
            seconds += result.meter.seconds.get("train", 0.0)
            flops += result.meter.flops
            net = result.model.eval()
            device = next(net.parameters()).device
            with torch.no_grad():
                for begin in range(0, len(held), config.eval_batch_size):
                    rows = held[begin : begin + config.eval_batch_size]
                    x = torch.from_numpy(dataset.x[rows]).to(device)
                    probs[rows] += torch.softmax(net(x).double(), dim=1).cpu().numpy()
    probs /= len(seeds)
    cost = {"seconds": time.perf_counter() - start, "train_seconds": seconds, "flops": flops}
    return probs, cost


def _check_folds(dataset: Dataset, folds: int) -> None:
    counts = dataset.class_counts()
    smallest = int(counts[counts > 0].min())
    if isinstance(folds, bool) or int(folds) != folds or not 2 <= folds <= smallest:
        raise PrunusError(
            f"folds must be an integer from 2 to {smallest} (the smallest class count, so every "
            f"fold holds every class) (got {folds!r})."
        )


def _check_inputs(labels: Any, pred_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(pred_probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise PrunusError(
            f"pred_probs must be a 2-D array (N, C) with C >= 2 classes (got shape {probs.shape})."
        )
    if labels.ndim != 1 or len(labels) != len(probs):
        raise PrunusError(
            f"pred_probs must have one row per label: labels has shape {labels.shape}, "
            f"pred_probs {probs.shape}."
        )
    if not np.isfinite(probs).all() or (probs < 0).any() or not np.allclose(
        probs.sum(axis=1), 1.0, rtol=0.0, atol=1e-4
    ):
        raise PrunusError(
            "pred_probs must hold probabilities: finite, non-negative, each row summing to 1 "
            "(within 1e-4)."
        )
    if len(labels) and (not np.issubdtype(labels.dtype, np.integer)
                        or labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise PrunusError(
            f"labels must be integers in [0, {probs.shape[1] - 1}], one per pred_probs row."
        )
    return labels.astype(np.int64), probs


def _keep_per_class(calibrated: np.ndarray, counts: np.ndarray, keep: int) -> np.ndarray:
    """Raise each diagonal to ``keep``, taking the difference evenly off that row's non-zero
    off-diagonal counts (floored at 0, truncated to integers)."""
    prune = calibrated.astype(np.float64).copy()
    for i in range(len(prune)):
        lack = keep - prune[i, i]
        if lack <= 0:
            continue
        off = [j for j in range(len(prune)) if j != i and prune[i, j] > 0]
        for j in off:
            prune[i, j] = max(prune[i, j] - lack / len(off), 0.0)
        prune[i, i] = keep
    return np.floor(prune + 1e-9).astype(np.int64)


def _round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers so the total equals the rounded total (largest remainders move)."""
    ints = np.round(values)
    missing = int(round(values.sum()) - ints.sum())
    if missing:
        step = 1 if missing > 0 else -1
        order = np.argsort(-(values - ints) * step, kind="stable")[: abs(missing)]
        ints[order] += step
    return ints.astype(np.int64)


def _check_seeds(seeds: Sequence[int] | int) -> list[int]:
    from prunus.data.scoring import _check_seeds as check

    return check(seeds)


def _version() -> str:
    import prunus

    return prunus.__version__
