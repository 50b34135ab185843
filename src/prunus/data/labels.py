"""Label issues: find training examples whose given label is probably wrong.

Every detector is one function of out-of-sample probabilities or of a training trajectory, and
:func:`find_label_issues` runs any of them on a dataset (``method=``), returning a
:class:`~prunus.data.table.ScoreTable` keyed by example id: ``label_issue`` (higher = more
likely mislabeled), ``is_issue`` (0/1, at the method's own threshold) and ``suggested_label``.

- ``confident_learning`` (:func:`confident_learning`; Northcutt, Jiang & Chuang 2021): per-class
  thresholds, the confident joint and prune-by-noise-rate on K-fold out-of-sample
  probabilities (:func:`out_of_fold_probs`).
- ``self_confidence`` (:func:`self_confidence`): ``1 − p̂_y`` on the same probabilities, flagged
  where another class is predicted.
- ``aum`` (:func:`aum_with_threshold_examples`, :func:`aum_issues`; Pleiss et al. 2020): area
  under the margin, thresholded by examples moved to a fake extra class.
- ``forgetting``, ``el2n``, ``loss_early``, ``loss_late`` (:func:`training_dynamics`): rankers
  from one in-sample proxy run each seed, flagged by a two-component mixture
  (:func:`two_component_split`).

:func:`label_issue_scores` is confident learning registered as the score method ``label_issue``
(``prunus score --method label_issue``, a study's ``score = "label_issue"`` policies).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from prunus.data.table import HIGHER_IS_HARDER, ScoreTable
from prunus.datasets.base import Dataset
from prunus.errors import PrunusError, choice_error
from prunus.registry import SCORES

PROBABILITY_METHODS = ("confident_learning", "self_confidence")
DYNAMICS_METHODS = ("forgetting", "el2n", "loss_early", "loss_late")
LABEL_METHODS = (*PROBABILITY_METHODS, "aum", *DYNAMICS_METHODS)
RANK_BY = ("self_confidence", "normalized_margin")
# an example whose given label is (within this much) its predicted class is never an issue
_ARGMAX_SLACK = 1e-6
# progress(completed, total, description): units are training examples processed
ProgressCallback = Callable[[int, int, str], None]


@dataclass
class LabelIssues:
    """What a detector found, aligned to the rows it was given (the confident-learning fields
    are None for the other detectors).

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
        rank_by: the ranking used for ``label_issue`` (confident learning), else the method.
        threshold: the single score threshold of the flags, where the method has one (AUM: the
            99th percentile of the threshold examples' AUM; the mixture split of the rankers).
    """

    label_issue: np.ndarray
    is_issue: np.ndarray
    suggested_label: np.ndarray
    rank_by: str = "self_confidence"
    thresholds: np.ndarray | None = None
    confident_joint: np.ndarray | None = None
    calibrated_joint: np.ndarray | None = None
    issues_per_class: np.ndarray | None = None
    threshold: float | None = None

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


def self_confidence(labels: np.ndarray, pred_probs: np.ndarray) -> LabelIssues:
    """Self-confidence ranking with the argmax rule (the plain baseline of Northcutt et al. 2021).

    ``label_issue = 1 − p̂_y(x)`` on out-of-sample probabilities; an example is flagged where
    some other class has a higher probability than its given label (``argmax p̂ ≠ ỹ``, ties
    going to the given label), and its suggested label is that argmax.

    Raises:
        PrunusError: bad ``pred_probs`` or ``labels`` (see :func:`confident_learning`).
    """
    labels, probs = _check_inputs(labels, pred_probs)
    n = len(labels)
    adjusted = probs.copy()
    adjusted[np.arange(n), labels] += _ARGMAX_SLACK
    predicted = adjusted.argmax(axis=1)
    flagged = predicted != labels
    return LabelIssues(
        label_issue=1.0 - probs[np.arange(n), labels],
        is_issue=flagged,
        suggested_label=predicted.astype(np.int64),
        rank_by="self_confidence",
    )


def aum_with_threshold_examples(
    logits: np.ndarray, labels: np.ndarray, fake: np.ndarray, percentile: float = 99.0
) -> LabelIssues:
    """AUM with threshold examples (Pleiss, Zhang, Elenberg & Weinberger 2020, *Identifying
    Mislabeled Data using the Area Under the Margin Ranking*), on one recorded trajectory.

    ``logits[t, i, :]`` are example i's C + 1 logits at its t-th presentation, ``labels[i]`` the
    label it was trained with (the extra class C for the threshold examples, ``fake[i]`` True).
    ``AUM(i) = mean_t (z_{labels[i]} − max_{k ≠ labels[i]} z_k)`` (:func:`area_under_margin`);
    the threshold ``α`` is the ``percentile``-th percentile (default 99, linear interpolation)
    of the threshold examples' AUM: a real example whose AUM is below ``α`` is less separable
    from the rest than 99% of examples known to be mislabeled, and is flagged.

    Returns:
        :class:`LabelIssues` with ``label_issue = α − AUM`` (positive where flagged; NaN for the
        threshold examples, which are not judged), ``suggested_label`` the real class with the
        largest mean logit other than the label, and ``threshold = α``.

    Raises:
        PrunusError: shapes disagree, no threshold example, or ``percentile`` outside [0, 100].
    """
    from prunus.data.scores.trajectory import area_under_margin

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    fake = np.asarray(fake, dtype=bool)
    if logits.ndim != 3 or logits.shape[1:2] != labels.shape or fake.shape != labels.shape:
        raise PrunusError(
            f"logits must have shape (presentations, N, C + 1) with N = len(labels) = len(fake) "
            f"(got {logits.shape}, {labels.shape}, {fake.shape})."
        )
    aum = area_under_margin(logits, labels)
    mean_logits = logits.mean(axis=0)
    return _threshold_by_fake(aum, mean_logits, labels, fake, percentile)


def aum_issues(
    dataset: Dataset,
    model: Any = "mlp",
    *,
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    runs: int = 2,
    percentile: float = 99.0,
    batch_size: int = 128,
    model_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    **train_settings: Any,
) -> tuple[LabelIssues, dict[str, Any]]:
    """AUM with threshold examples on a dataset (Pleiss et al. 2020; see
    :func:`aum_with_threshold_examples` for the rule).

    For each seed, ``runs`` disjoint random sets of ``⌊N / (C + 1)⌋`` examples are drawn; in
    run r the examples of set r are relabelled to a fake class C, a fresh ``model`` with C + 1
    outputs is trained for ``epochs`` epochs, and the margins of every example are recorded
    from the training forward passes (:class:`~prunus.data.scores.trajectory.AreaUnderMargin`).
    A real example's score in run r is ``α_r − AUM_r``; its ``label_issue`` is the mean over the
    runs (and seeds) in which it kept its label, and it is flagged where that mean is positive.
    With the default two runs every example is judged with its own label at least once.

    Args:
        dataset: the dataset whose training labels are checked.
        model: proxy model (name, ``"package.module:factory"`` or ``nn.Module`` with C + 1
            outputs, copied for every run). Default ``"mlp"``.
        seeds: proxy seeds. Default ``(0,)``.
        epochs: epochs of each run. Default 10.
        runs: runs per seed, each with its own threshold set (1 ≤ runs ≤ C + 1). Default 2.
        percentile: percentile of the threshold examples' AUM. Default 99.
        batch_size, model_options, **train_settings: proxy training.
        progress: optional ``progress(completed, total, description)``.

    Returns:
        ``(issues, cost)``: a :class:`LabelIssues` (``threshold`` the mean of the ``α_r``) and
        the cost (seconds, train_seconds, flops). With ``runs = 1`` the threshold examples are
        not judged (``label_issue`` 0, not flagged).

    Raises:
        PrunusError: bad ``runs``, ``percentile``, ``seeds``, ``epochs`` or training settings.
    """
    from prunus.data.scores.trajectory import AreaUnderMargin

    seeds = _check_seeds(seeds)
    num_classes = dataset.num_classes
    if isinstance(runs, bool) or int(runs) != runs or not 1 <= runs <= num_classes + 1:
        raise PrunusError(f"runs must be an integer from 1 to {num_classes + 1} (got {runs!r}).")
    _check_percentile(percentile)
    config = _train_config(epochs, batch_size, train_settings)
    n = len(dataset)
    share = n // (num_classes + 1)
    tracker = _tracker(progress, len(seeds) * runs * epochs * n)
    total = np.zeros(n)
    judged = np.zeros(n)
    logits_sum = np.zeros((n, num_classes + 1))
    alphas, seconds, flops = [], 0.0, 0.0
    start = time.perf_counter()

    class Recorder(AreaUnderMargin):
        def reset(self, size: int) -> None:
            super().reset(size)
            self.logits = np.zeros((size, num_classes + 1))

        def record(self, rows, logits, labels) -> None:
            super().record(rows, logits, labels)
            np.add.at(self.logits, rows, logits.double().cpu().numpy())

    for seed in seeds:
        order = np.random.default_rng(seed).permutation(n)
        for run in range(runs):
            fake = np.zeros(n, dtype=bool)
            fake[order[run * share : (run + 1) * share]] = True
            train = replace(dataset, y=np.where(fake, num_classes, dataset.y),
                            num_classes=num_classes + 1, test=None, clean_y=None,
                            flipped_ids=np.zeros(0, dtype=np.int64), _fingerprint=None)
            recorder = Recorder()
            run_seed = seed * runs + run
            result = _fit(model, train, config, run_seed, model_options, [recorder],
                          tracker, f"aum seed {seed} run {run + 1}/{runs}")
            seconds += result.meter.seconds.get("train", 0.0)
            flops += result.meter.flops
            seen = np.maximum(recorder.seen, 1)[:, None]
            found = _threshold_by_fake(recorder.scores(), recorder.logits / seen,
                                       train.y, fake, percentile)
            alphas.append(found.threshold)
            real = ~fake
            total[real] += found.label_issue[real]
            judged[real] += 1
            logits_sum[real] += (recorder.logits / seen)[real]
    score = np.where(judged > 0, total / np.maximum(judged, 1), 0.0)
    flagged = (score > 0) & (judged > 0)
    mean_logits = logits_sum[:, :num_classes] / np.maximum(judged, 1)[:, None]
    issues = LabelIssues(
        label_issue=score,
        is_issue=flagged,
        suggested_label=np.where(flagged, _best_other(mean_logits, dataset.y), dataset.y),
        rank_by="aum",
        threshold=float(np.mean(alphas)),
    )
    cost = {"seconds": time.perf_counter() - start, "train_seconds": seconds, "flops": flops}
    return issues, cost


def training_dynamics(
    dataset: Dataset,
    model: Any = "mlp",
    *,
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    early_epochs: int | None = None,
    batch_size: int = 128,
    model_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    **train_settings: Any,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Four rankers from one in-sample proxy run per seed (averaged over seeds), higher = more
    likely mislabeled:

    - ``forgetting``: forgetting events over the run (Toneva et al. 2019; never-learned
      examples get the number of presentations; :class:`ForgettingEvents`);
    - ``el2n``: ``‖softmax(f(x)) − onehot(y)‖₂`` after ``early_epochs`` epochs (Paul et al. 2021);
    - ``loss_early``: cross-entropy after ``early_epochs`` epochs (before the network memorises
      the wrong labels, Arpit et al. 2017);
    - ``loss_late``: cross-entropy at the end of the run.

    ``early_epochs`` defaults to ``round(0.2 · epochs)`` (at least 1), as in
    :func:`prunus.data.score`. The scores are read in eval mode with
    :func:`~prunus.data.scores.loss.loss_scores` / :func:`~prunus.data.scores.loss.el2n_scores`.

    Returns:
        ``(scores, mean_probs, cost)``: the four score arrays aligned to the dataset's rows, the
        final models' softmax averaged over seeds (for suggested labels), and the cost.

    Raises:
        PrunusError: bad ``seeds``, ``epochs``, ``early_epochs`` or training settings.
    """
    from prunus.data.scores.loss import el2n_scores, loss_scores
    from prunus.data.scores.trajectory import ForgettingEvents
    from prunus.train.events import Callback

    seeds = _check_seeds(seeds)
    config = _train_config(epochs, batch_size, train_settings)
    if early_epochs is None:
        early_epochs = max(1, round(0.2 * epochs))
    if isinstance(early_epochs, bool) or int(early_epochs) != early_epochs or not 1 <= early_epochs <= epochs:
        raise PrunusError(f"early_epochs must be an integer from 1 to epochs = {epochs} (got {early_epochs!r}).")
    train = replace(dataset, test=None)
    n = len(dataset)
    tracker = _tracker(progress, len(seeds) * epochs * n)
    sums = {name: np.zeros(n) for name in DYNAMICS_METHODS}
    probs = np.zeros((n, dataset.num_classes))
    seconds = flops = 0.0
    start = time.perf_counter()

    class Early(Callback):
        def on_epoch_end(self, state) -> None:
            if state.epoch + 1 == early_epochs:
                self.el2n = el2n_scores(state.model, train)
                self.loss = loss_scores(state.model, train)

    for seed in seeds:
        forgetting, early = ForgettingEvents(), Early()
        result = _fit(model, train, config, seed, model_options, [forgetting, early], tracker,
                      f"dynamics seed {seed}")
        seconds += result.meter.seconds.get("train", 0.0)
        flops += result.meter.flops
        sums["forgetting"] += np.nan_to_num(forgetting.scores(), nan=0.0)
        sums["el2n"] += early.el2n
        sums["loss_early"] += early.loss
        sums["loss_late"] += loss_scores(result.model, train)
        probs += _predict(result.model, train, config.eval_batch_size)
    scores = {name: values / len(seeds) for name, values in sums.items()}
    cost = {"seconds": time.perf_counter() - start, "train_seconds": seconds, "flops": flops}
    return scores, probs / len(seeds), cost


def two_component_split(scores: np.ndarray, iterations: int = 200) -> tuple[np.ndarray, float]:
    """Flag the high component of a two-component 1-D Gaussian mixture fitted to ``scores``
    (the split DivideMix, Li, Socher & Hoi 2020, applies to per-example losses).

    EM from the 25th/75th percentiles as means and the overall variance, each variance floored
    at 1e-6 of the overall variance (plus 1e-12) so tied scores cannot collapse a component.
    An example is flagged where its posterior of the component with the larger mean exceeds
    0.5; the threshold returned is the smallest flagged score (inf when none is flagged).
    Deterministic. Default ``iterations`` 200.
    """
    x = np.asarray(scores, dtype=np.float64)
    var = float(x.var())
    if len(x) < 2 or var == 0:
        return np.zeros(len(x), dtype=bool), float("inf")
    floor = 1e-6 * var + 1e-12
    means = np.quantile(x, [0.25, 0.75]).astype(np.float64)
    if means[0] == means[1]:
        means = np.array([x.min(), x.max()])
    variances = np.array([var, var])
    weights = np.array([0.5, 0.5])
    for _ in range(iterations):
        log_density = (-0.5 * (x[:, None] - means) ** 2 / variances
                       - 0.5 * np.log(2 * np.pi * variances) + np.log(weights))
        log_density -= log_density.max(axis=1, keepdims=True)
        resp = np.exp(log_density)
        resp /= resp.sum(axis=1, keepdims=True)
        mass = resp.sum(axis=0) + 1e-12
        weights = mass / len(x)
        means = (resp * x[:, None]).sum(axis=0) / mass
        variances = np.maximum((resp * (x[:, None] - means) ** 2).sum(axis=0) / mass, floor)
    high = int(np.argmax(means))
    flagged = resp[:, high] > 0.5
    # the posterior of the high component need not be monotone in the score (unequal
    # variances): keep the flags a threshold on the score itself
    threshold = float(x[flagged].min()) if flagged.any() else float("inf")
    return x >= threshold, threshold


def out_of_fold_probs(
    dataset: Dataset,
    model: Any = "mlp",
    folds: int = 5,
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    *,
    batch_size: int = 128,
    model_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
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
        progress: optional ``progress(completed, total, description)``, units are examples.
        **train_settings: any other :class:`prunus.config.TrainConfig` field (``lr``, ``device``...).

    Returns:
        (N, C) float64 array aligned to the rows of ``dataset``; rows sum to 1.

    Raises:
        PrunusError: bad ``folds`` (fewer than 2, or more than the smallest class count), bad
            ``seeds`` or ``epochs``, a one-class dataset, or bad training settings.
    """
    return _out_of_fold(dataset, model, folds, seeds, epochs, batch_size, model_options,
                        train_settings, progress)[0]


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
    runs: int = 2,
    percentile: float = 99.0,
    early_epochs: int | None = None,
    batch_size: int = 128,
    model_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    **train_settings: Any,
) -> ScoreTable:
    """Score every training example of ``dataset`` by how likely its label is wrong.

    ``method`` (each flags at its own threshold):

    - ``"confident_learning"`` (default): :func:`confident_learning` on out-of-sample
      probabilities from :func:`out_of_fold_probs` (``folds`` proxy models per seed, ``epochs``
      each), or on ``pred_probs`` when given (then nothing is trained);
    - ``"self_confidence"``: :func:`self_confidence` on the same probabilities;
    - ``"aum"``: :func:`aum_issues` (``runs`` runs per seed with threshold examples);
    - ``"forgetting"``, ``"el2n"``, ``"loss_early"``, ``"loss_late"``: :func:`training_dynamics`
      (one in-sample run per seed), flagged by :func:`two_component_split`.

    Args:
        dataset: the dataset whose training labels are checked.
        model: proxy model (see :func:`out_of_fold_probs`). Default ``"mlp"``.
        method: one of ``LABEL_METHODS`` (above). Default ``"confident_learning"``.
        seeds: proxy seeds. Default ``(0,)``.
        folds: K of the K-fold proxy training. Default 5.
        epochs: epochs of each proxy model. Default 10.
        pred_probs: (N, C) out-of-sample probabilities aligned to the dataset's rows, to skip
            the proxy training (``confident_learning`` and ``self_confidence`` only). Default None.
        rank_by: confident learning's ``label_issue``: ``"self_confidence"`` or
            ``"normalized_margin"``.
        runs, percentile: ``aum`` only (see :func:`aum_issues`). Defaults 2 and 99.
        early_epochs: ``el2n`` / ``loss_early`` only (see :func:`training_dynamics`).
        batch_size, model_options, **train_settings: proxy training (see :func:`out_of_fold_probs`).
        progress: optional ``progress(completed, total, description)``, units are examples.

    Returns:
        A :class:`ScoreTable` keyed by id with columns ``label_issue`` (main; higher = more
        likely mislabeled), ``is_issue`` (1.0 / 0.0) and ``suggested_label``; metadata holds the
        method and its settings, the number flagged, the threshold(s), the cost, the dataset
        fingerprint and the ids the dataset records as flipped (``dataset.flipped_ids``).

    Raises:
        PrunusError: unknown ``method`` or ``rank_by``, a one-class dataset, bad ``pred_probs``
            (shape, rows not summing to 1) or ``pred_probs`` with a method that trains its own
            proxies, bad ``folds`` (more than the smallest class count), or bad training settings.
    """
    if method not in LABEL_METHODS:
        raise choice_error("label method", method, LABEL_METHODS)
    if rank_by not in RANK_BY:
        raise choice_error("rank_by", rank_by, RANK_BY)
    _check_classes(dataset)
    if pred_probs is not None and method not in PROBABILITY_METHODS:
        raise PrunusError(
            f"pred_probs is used by the methods {', '.join(PROBABILITY_METHODS)} only; "
            f"method {method!r} trains its own proxy models."
        )
    cost: dict[str, Any] = {"seconds": 0.0, "train_seconds": 0.0, "flops": 0.0}
    settings: dict[str, Any] = {"model": model if isinstance(model, str) else type(model).__name__,
                                "model_options": model_options or {}, "epochs": int(epochs),
                                "seeds": _check_seeds(seeds)}
    extra: dict[str, Any] = {}
    train = dict(batch_size=batch_size, model_options=model_options, progress=progress,
                 **train_settings)
    if method in PROBABILITY_METHODS:
        if pred_probs is None:
            probs, cost = _out_of_fold(dataset, model, folds, seeds, epochs, batch_size,
                                       model_options, train_settings, progress)
            settings["folds"] = int(folds)
            source = "out_of_fold"
        else:
            probs = _check_pred_probs(dataset, pred_probs)
            settings = {"model": None, "model_options": {}, "epochs": None, "seeds": None}
            source = "given"
        settings["pred_probs"] = source
        if method == "confident_learning":
            result = confident_learning(dataset.y, probs, rank_by=rank_by)
            settings["rank_by"] = rank_by
            extra = {"issues_per_class": result.issues_per_class.tolist(),
                     "thresholds": result.thresholds.tolist()}
            description = "confident learning (Northcutt et al. 2021), prune by noise rate"
        else:
            result = self_confidence(dataset.y, probs)
            description = "self-confidence 1 - p_y on out-of-sample probabilities, argmax rule"
    elif method == "aum":
        result, cost = aum_issues(dataset, model, seeds=seeds, epochs=epochs, runs=runs,
                                  percentile=percentile, **train)
        settings.update(runs=int(runs), percentile=float(percentile))
        extra = {"threshold": result.threshold}
        description = "area under the margin with threshold examples (Pleiss et al. 2020)"
    else:
        scores, probs, cost = training_dynamics(dataset, model, seeds=seeds, epochs=epochs,
                                                early_epochs=early_epochs, **train)
        result = _ranker_issues(scores[method], probs, dataset.y, method)
        settings["early_epochs"] = early_epochs or max(1, round(0.2 * epochs))
        extra = {"threshold": result.threshold}
        description = f"{method} of an in-sample proxy run, two-component mixture split"
    columns = {
        "label_issue": result.label_issue,
        "is_issue": result.is_issue.astype(np.float64),
        "suggested_label": result.suggested_label.astype(np.float64),
    }
    metadata = {
        "method": method,
        "column": "label_issue",
        "directions": dict.fromkeys(columns, HIGHER_IS_HARDER),
        "description": description,
        **settings,
        "folds": settings.get("folds"),
        "num_issues": result.num_issues,
        **extra,
        "dataset": {
            "name": dataset.name,
            "options": dataset.options,
            "size": len(dataset),
            "num_classes": dataset.num_classes,
            "flipped": len(dataset.flipped_ids),
            "flipped_ids": dataset.flipped_ids.tolist(),
            "fingerprint": dataset.fingerprint,
        },
        "prunus_version": _version(),
        "cost": cost,
    }
    return ScoreTable(dataset.ids.copy(), dataset.y.copy(), columns, metadata)


@SCORES.register(
    "label_issue", needs="proxies", options={"folds": "folds"},
    summary="confident learning on K-fold out-of-sample probabilities (is_issue, suggested_label)",
)
def label_issue_scores(
    model: Any,
    dataset: Dataset,
    *,
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    folds: int = 5,
    progress: ProgressCallback | None = None,
    **train_settings: Any,
) -> ScoreTable:
    """Confident learning (Northcutt et al. 2021) as the score method ``label_issue``, for
    :func:`prunus.data.score` and the study harness: exactly :func:`find_label_issues` with
    ``method="confident_learning"`` (``folds`` K-fold proxy models per seed, ``epochs`` epochs
    each, out-of-fold probabilities averaged over ``seeds``), so the table has ``label_issue``
    (``1 − p̂_y``, higher = more likely mislabeled), ``is_issue`` (prune by noise rate) and
    ``suggested_label``. Defaults: 5 folds, 10 epochs.

    ``score()`` trains no proxy of its own for this method (``needs="proxies"``): ``model`` is
    the proxy model (name or ``nn.Module``, copied per fold) and ``**train_settings`` the
    proxies' training settings (``batch_size``, ``lr``, ``model_options``...).
    """
    return find_label_issues(dataset, model, "confident_learning", seeds=seeds, folds=folds,
                             epochs=epochs, progress=progress, **train_settings)


# -- helpers -----------------------------------------------------------------------------------


def _ranker_issues(score: np.ndarray, probs: np.ndarray, labels: np.ndarray, method: str) -> LabelIssues:
    """A ranker's flags (mixture split) and suggestions (best other class of the final model)."""
    flagged, threshold = two_component_split(score)
    return LabelIssues(
        label_issue=np.asarray(score, dtype=np.float64),
        is_issue=flagged,
        suggested_label=np.where(flagged, _best_other(probs, labels), labels).astype(np.int64),
        rank_by=method,
        threshold=threshold,
    )


def _threshold_by_fake(aum, mean_logits, labels, fake, percentile) -> LabelIssues:
    _check_percentile(percentile)
    if not fake.any():
        raise PrunusError("aum needs at least one threshold example (fake has no True entry).")
    alpha = float(np.percentile(aum[fake], percentile))
    score = np.where(fake, np.nan, alpha - aum)
    flagged = ~fake & (aum < alpha)
    real_logits = mean_logits[:, : mean_logits.shape[1] - 1]
    given = np.where(fake, 0, labels)
    suggested = np.where(flagged, _best_other(real_logits, given), labels)
    return LabelIssues(label_issue=score, is_issue=flagged, suggested_label=suggested.astype(np.int64),
                       rank_by="aum", threshold=alpha)


def _best_other(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, the column with the largest value other than the row's label."""
    others = np.array(values, dtype=np.float64, copy=True)
    others[np.arange(len(labels)), labels] = -np.inf
    return others.argmax(axis=1)


def _check_percentile(percentile: float) -> None:
    if isinstance(percentile, bool) or not 0.0 <= float(percentile) <= 100.0:
        raise PrunusError(f"percentile must be a number in [0, 100] (got {percentile!r}).")


def _check_classes(dataset: Dataset) -> None:
    present = int((dataset.class_counts() > 0).sum())
    if present < 2:
        raise PrunusError(
            f"dataset {dataset.name!r} has a single class in its training split; finding label "
            "issues needs at least two."
        )


def _check_pred_probs(dataset: Dataset, pred_probs: Any) -> np.ndarray:
    probs = np.asarray(pred_probs)
    if probs.ndim != 2 or probs.shape[0] != len(dataset) or probs.shape[1] != dataset.num_classes:
        raise PrunusError(
            f"pred_probs must have shape ({len(dataset)}, {dataset.num_classes}), one row per "
            f"training example and one column per class (got {probs.shape})."
        )
    return _check_inputs(dataset.y, probs)[1]


def _train_config(epochs: int, batch_size: int, train_settings: dict[str, Any]):
    from prunus.config import TrainConfig, validated

    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise PrunusError(f"epochs must be a positive integer (got {epochs!r}).")
    for name in ("seed", "epochs"):
        if name in train_settings:
            raise PrunusError(f"{name} is set by the label-issue method itself; use seeds= and epochs=.")
    return validated(
        TrainConfig, {**train_settings, "epochs": int(epochs), "batch_size": batch_size}, "train"
    )


def _tracker(progress: ProgressCallback | None, total: int):
    from prunus.data.scoring import _Tracker

    return _Tracker(progress, total)


def _fit(model, train: Dataset, config, seed: int, model_options, callbacks, tracker, label: str):
    """Train a fresh copy of ``model`` on ``train`` with the callbacks and progress."""
    from torch import nn

    from prunus.models import build_model
    from prunus.train import Trainer
    from prunus.train.events import Callback

    class Advance(Callback):
        def on_epoch_start(self, state) -> None:
            tracker.describe(f"{label}, epoch {state.epoch + 1}/{config.epochs}")

        def on_batch_end(self, state) -> None:
            tracker.advance(len(state.batch))

    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
    else:
        net = build_model(model, train.input_shape, train.num_classes, seed=seed,
                          **(model_options or {}))
    return Trainer(net, train, callbacks=[*callbacks, Advance()], config=config, seed=seed).fit()


def _predict(net, dataset: Dataset, batch_size: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Softmax probabilities (float64) of ``net`` in eval mode for the given rows (default all)."""
    import torch

    net = net.eval()
    device = next(net.parameters()).device
    rows = np.arange(len(dataset)) if rows is None else rows
    out = np.zeros((len(rows), dataset.num_classes))
    with torch.no_grad():
        for begin in range(0, len(rows), batch_size):
            part = rows[begin : begin + batch_size]
            x = torch.from_numpy(dataset.x[part]).to(device)
            out[begin : begin + len(part)] = torch.softmax(net(x).double(), dim=1).cpu().numpy()
    return out


def _out_of_fold(dataset, model, folds, seeds, epochs, batch_size, model_options, train_settings,
                 progress=None):
    seeds = _check_seeds(seeds)
    config = _train_config(epochs, batch_size, train_settings)
    _check_classes(dataset)
    _check_folds(dataset, folds)
    tracker = _tracker(progress, len(seeds) * (folds - 1) * len(dataset) * int(epochs))
    probs = np.zeros((len(dataset), dataset.num_classes))
    seconds = flops = 0.0
    start = time.perf_counter()
    for seed in seeds:
        fold = fold_assignment(dataset, folds, seed)
        for k in range(folds):
            train = replace(dataset.subset(dataset.ids[fold != k]), test=None)
            held = np.flatnonzero(fold == k)
            result = _fit(model, train, config, seed * folds + k, model_options, [], tracker,
                          f"fold {k + 1}/{folds} seed {seed}")
            seconds += result.meter.seconds.get("train", 0.0)
            flops += result.meter.flops
            probs[held] += _predict(result.model, dataset, config.eval_batch_size, held)
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
    """Round to integers so the total equals the rounded total (largest remainders move).

    Deliberately not :func:`prunus.counts.apportion`: this is the rounding confident learning's
    reference implementation applies to the calibrated joint (nearest integers, then the
    largest remainders adjusted), kept so that the flagged set matches it exactly."""
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
