"""Label noise: how well does each detector find the flipped labels, side by side with cleanlab,
and does removing (or relabelling) what it flags make the trained model better?

Part 1, detection. For 10%, 20% and 40% noise of each kind (``symmetric``, ``pairs``,
``instance``) on MNIST-1D (20k training examples) and mnist5k, with several seeds (seed s draws
the noise and seeds the proxies), every detector flags examples at its own threshold:

- prunus ``confident_learning``, ``self_confidence`` (both on one set of 5-fold out-of-fold
  probabilities), ``aum`` (threshold examples, two runs), ``forgetting``, ``el2n``,
  ``loss_early``, ``loss_late`` (one in-sample proxy run, mixture split);
- cleanlab ``filter.find_label_issues`` with its defaults on the *same* out-of-fold
  probabilities (isolates the detector), and cleanlab ``CleanLearning()`` with its own defaults
  (its own 5-fold cross-validation of scikit-learn's ``LogisticRegression``).

Reported: precision, recall and F1 at the detector's threshold, AUROC of its score, precision at
k = the true number of flipped labels, and wall seconds (the shared out-of-fold training is
charged in full to each detector that reads it).

Part 2, the decision (the noise rates in ``--decide-rates``, ``--decide-seeds`` seeds): train on
(a) all data, (b) the examples prunus's confident learning flags removed, (c) the same number
removed at random, (d) the flagged examples relabelled to the suggested label. Test accuracy on
the clean test labels, paired by seed, with the paired t-intervals and the Holm-corrected
verdicts of ``prunus.study.stats`` (a verdict needs 5 paired seeds).

    python benchmarks/label_noise.py            # the full run (about 20 min on 2 cores)
    python benchmarks/label_noise.py --quick    # a small run to check it works (about 2 min)
"""

from __future__ import annotations

import os

# one BLAS/OpenMP thread per process (set before NumPy loads; spawned workers inherit it), so
# two workers on two cores do not oversubscribe them (scikit-learn's solvers included)
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import json
import math
import platform
import time
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context

import numpy as np

KINDS = ("symmetric", "pairs", "instance")
PRUNUS = ("confident_learning", "self_confidence", "aum", "forgetting", "el2n", "loss_early",
          "loss_late")
CLEANLAB = ("cleanlab (same probs)", "cleanlab (own defaults)")
DETECTORS = PRUNUS + CLEANLAB
ARMS = ("(a) all data", "(b) flagged removed", "(c) random removed", "(d) flagged relabelled")
COMPARISONS = (  # (arm, rival)
    ("(b) flagged removed", "(a) all data"),
    ("(b) flagged removed", "(c) random removed"),
    ("(d) flagged relabelled", "(a) all data"),
    ("(d) flagged relabelled", "(b) flagged removed"),
)


@dataclass(frozen=True)
class Cell:
    """One noisy dataset (name, kind, rate, seed) and what to run on it."""

    dataset: str
    options: tuple
    kind: str
    rate: float
    seed: int
    decide: bool
    model: str
    folds: int
    epochs: int
    train_model: str
    train_epochs: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 20%% noise, 2 seeds")
    parser.add_argument("--seeds", type=int, default=3, help="detection seeds per cell")
    parser.add_argument("--decide-seeds", type=int, default=5, help="seeds of the decision cells")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--decide-rates", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--datasets", nargs="+", default=["mnist1d", "mnist5k"])
    parser.add_argument("--train-size", type=int, default=20000, help="mnist1d training examples")
    parser.add_argument("--model", default="mlp", help="proxy model of every prunus detector")
    parser.add_argument("--epochs", type=int, default=10, help="proxy epochs")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--train-model", default="mlp", help="model trained in the decision arms")
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--save", help="write the raw per-seed results here (.json)")
    parser.add_argument("--load", help="print the tables of results saved with --save")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.decide_seeds = 2, 2
        args.rates, args.decide_rates = [0.2], [0.2]
        args.train_size, args.epochs, args.train_epochs = 3000, 5, 5

    if args.load:
        with open(args.load) as f:
            saved = json.load(f)
        results = [{**r, "cell": Cell(**{**r["cell"], "options": tuple(map(tuple, r["cell"]["options"]))})}
                   for r in saved["results"]]
        args.datasets = saved["datasets"]
        report_detection(results, args)
        report_decision(results)
        return

    from prunus.datasets import load

    options = {"mnist1d": {"train_size": args.train_size, "test_size": 5000}, "mnist5k": {}}
    for name in args.datasets:
        load(name, **options[name])  # fill the generated-data cache before the workers start
    cells = []
    for name in args.datasets:
        for kind in KINDS:
            for rate in args.rates:
                decide = rate in args.decide_rates
                for seed in range(max(args.seeds, args.decide_seeds if decide else 0)):
                    cells.append(Cell(name, tuple(sorted(options[name].items())), kind, rate,
                                      seed, decide, args.model, args.folds, args.epochs,
                                      args.train_model, args.train_epochs))
    start = time.perf_counter()
    print(f"{len(cells)} noisy datasets, {args.workers} workers, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; proxies {args.model} x {args.epochs} epochs, {args.folds} folds",
          flush=True)
    results = []
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"),
                                 initializer=_worker_init) as pool:
            for done, result in enumerate(pool.map(run_cell, cells), 1):
                results.append(result)
                _tick(done, len(cells), start)
    else:
        _worker_init()
        for done, cell in enumerate(cells, 1):
            results.append(run_cell(cell))
            _tick(done, len(cells), start)
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")
    if args.save:
        with open(args.save, "w") as f:
            json.dump({"datasets": args.datasets,
                       "results": [{**r, "cell": asdict(r["cell"])} for r in results]}, f)
    report_detection(results, args)
    report_decision(results)


def run_cell(cell: Cell) -> dict:
    """Every detector on one noisy dataset, then (``cell.decide``) the four training arms."""
    from prunus.data.labels import (
        _out_of_fold,
        aum_issues,
        confident_learning,
        self_confidence,
        training_dynamics,
        two_component_split,
    )
    from prunus.datasets import load

    data = load(cell.dataset, noise=cell.rate, noise_kind=cell.kind, noise_seed=cell.seed,
                **dict(cell.options))
    flipped = np.isin(data.ids, data.flipped_ids)
    settings = {"epochs": cell.epochs, "device": "cpu"}
    found: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}  # flags, score, seconds

    start = time.perf_counter()
    probs, _ = _out_of_fold(data, cell.model, cell.folds, [cell.seed], cell.epochs, 128, None,
                            {"device": "cpu"})
    oof_seconds = time.perf_counter() - start
    for name, detector in (("confident_learning", confident_learning),
                           ("self_confidence", self_confidence)):
        start = time.perf_counter()
        issues = detector(data.y, probs)
        found[name] = (issues.is_issue, issues.label_issue,
                       oof_seconds + time.perf_counter() - start)
        if name == "confident_learning":
            cl_issues = issues

    start = time.perf_counter()
    issues, _ = aum_issues(data, cell.model, seeds=[cell.seed], **settings)
    found["aum"] = (issues.is_issue, issues.label_issue, time.perf_counter() - start)

    start = time.perf_counter()
    scores, _, _ = training_dynamics(data, cell.model, seeds=[cell.seed], **settings)
    shared = time.perf_counter() - start
    for name, values in scores.items():
        begin = time.perf_counter()
        flags, _ = two_component_split(values)
        found[name] = (flags, values, shared + time.perf_counter() - begin)

    found.update(_cleanlab(data, probs, oof_seconds, cell.seed))
    rows = [{"detector": name, **_measure(flags, score, flipped), "seconds": seconds}
            for name, (flags, score, seconds) in found.items()]
    result = {"cell": cell, "rows": rows, "flipped": int(flipped.sum())}
    if cell.decide:
        result["decision"] = _decision(data, cl_issues, cell)
    return result


def _cleanlab(data, probs, oof_seconds: float, seed: int) -> dict:
    """cleanlab's detector on the same probabilities, and CleanLearning with its own defaults."""
    from cleanlab.classification import CleanLearning
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = {}
    start = time.perf_counter()
    flags = find_label_issues(data.y, probs, n_jobs=1)
    score = 1.0 - get_label_quality_scores(data.y, probs)
    out[CLEANLAB[0]] = (flags, score, oof_seconds + time.perf_counter() - start)
    start = time.perf_counter()
    np.random.seed(seed)  # CleanLearning's cross-validation folds draw from NumPy's global state
    learner = CleanLearning(seed=seed, verbose=False, find_label_issues_kwargs={"n_jobs": 1})
    issues = learner.find_label_issues(data.x.reshape(len(data), -1), data.y)
    out[CLEANLAB[1]] = (issues["is_label_issue"].to_numpy(), 1.0 - issues["label_quality"].to_numpy(),
                        time.perf_counter() - start)
    return out


def _measure(flags: np.ndarray, score: np.ndarray, flipped: np.ndarray) -> dict:
    """Precision, recall, F1 of the flags; AUROC of the score; precision at k = #flipped."""
    from sklearn.metrics import roc_auc_score

    flags = np.asarray(flags, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    score = np.where(np.isnan(score), np.nanmin(score), score)
    hits = int((flags & flipped).sum())
    precision = hits / flags.sum() if flags.sum() else math.nan
    recall = hits / flipped.sum()
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    k = int(flipped.sum())
    top = np.argsort(-score, kind="stable")[:k]
    return {"precision": precision, "recall": recall, "f1": f1,
            "auroc": float(roc_auc_score(flipped, score)), "p_at_k": float(flipped[top].mean()),
            "flagged": int(flags.sum())}


def _decision(data, issues, cell: Cell) -> dict:
    """Clean-test accuracy of the four arms (one training run each, seed = the cell's seed)."""
    from prunus.models import build_model
    from prunus.train import Trainer

    flags = issues.is_issue
    rng = np.random.default_rng(10_000 + cell.seed)
    removed = rng.choice(len(data), size=int(flags.sum()), replace=False)
    keep_random = np.ones(len(data), dtype=bool)
    keep_random[removed] = False
    arms = {
        ARMS[0]: data,
        ARMS[1]: data.subset(data.ids[~flags]),
        ARMS[2]: data.subset(data.ids[keep_random]),
        ARMS[3]: replace(data, y=np.where(flags, issues.suggested_label, data.y), _fingerprint=None),
    }
    clean = data.clean_y
    wrong = {ARMS[0]: np.mean(data.y != clean), ARMS[1]: np.mean(data.y[~flags] != clean[~flags]),
             ARMS[2]: np.mean(data.y[keep_random] != clean[keep_random]),
             ARMS[3]: np.mean(arms[ARMS[3]].y != clean)}
    out = {}
    for arm, train in arms.items():
        net = build_model(cell.train_model, train.input_shape, train.num_classes, seed=cell.seed)
        result = Trainer(net, train, epochs=cell.train_epochs, device="cpu", seed=cell.seed,
                         eval_every_examples=10**12).fit()
        out[arm] = {"accuracy": float(result.final["accuracy"]), "size": len(train),
                    "wrong_labels": float(wrong[arm])}
    return out


# -- reporting ---------------------------------------------------------------------------------


def report_detection(results: list[dict], args) -> None:
    """Markdown tables: F1, AUROC, P@k per detector and cell; best prunus vs cleanlab."""
    by = defaultdict(list)  # (dataset, kind, rate, detector) -> rows over seeds
    for result in results:
        c = result["cell"]
        for row in result["rows"]:
            by[(c.dataset, c.kind, c.rate, row["detector"])].append(row)
    settings = sorted({(r["cell"].dataset, r["cell"].kind, r["cell"].rate) for r in results},
                      key=lambda s: (args.datasets.index(s[0]), KINDS.index(s[1]), s[2]))
    datasets = [d for d in args.datasets if any(s[0] == d for s in settings)]
    for metric, title in (("f1", "F1 at the detector's own threshold"),
                          ("precision", "precision at the detector's own threshold"),
                          ("recall", "recall at the detector's own threshold"),
                          ("auroc", "AUROC of the detector's score"),
                          ("p_at_k", "precision at k = number of flipped labels")):
        for dataset in datasets:
            cols = [s for s in settings if s[0] == dataset]
            seeds = sorted({len(by[(*s, DETECTORS[0])]) for s in cols})
            print(f"**{dataset}: {title}** (mean over {'/'.join(map(str, seeds))} seeds)\n")
            print("| detector | " + " | ".join(f"{k} {r:.0%}" for _, k, r in cols) + " | mean s |")
            print("|---|" + "---:|" * (len(cols) + 1))
            for det in DETECTORS:
                cells = [_mean([row[metric] for row in by[(*s, det)]]) for s in cols]
                best = [max(_mean([row[metric] for row in by[(*s, d)]]) for d in DETECTORS) for s in cols]
                text = [f"**{v:.3f}**" if v == b else f"{v:.3f}" for v, b in zip(cells, best)]
                secs = _mean([row["seconds"] for s in cols for row in by[(*s, det)]])
                print(f"| {det} | " + " | ".join(text) + f" | {secs:.1f} |")
            print()
    from prunus.study.stats import paired_difference

    print("**best prunus detector vs cleanlab, F1** (per setting: the prunus detector with the "
          "highest mean F1; paired difference over seeds, mean [95% t-interval])\n")
    print("| setting | best prunus | F1 | cleanlab same probs | diff | cleanlab own defaults | diff |")
    print("|---|---|---:|---:|---:|---:|---:|")
    shortfalls = []
    for s in settings:
        f1 = {d: {i: row["f1"] for i, row in enumerate(by[(*s, d)])} for d in DETECTORS}
        best = max(PRUNUS, key=lambda d: _mean(list(f1[d].values())))
        line = f"| {s[0]} {s[1]} {s[2]:.0%} | {best} | {_mean(list(f1[best].values())):.3f} |"
        for other in CLEANLAB:
            diff = paired_difference(f1[best], f1[other])
            line += f" {_mean(list(f1[other].values())):.3f} | {_interval(diff)} |"
            if diff.mean < 0:
                shortfalls.append(f"{s[0]} {s[1]} {s[2]:.0%} vs {other}: {diff.mean:+.3f}")
        print(line)
    print("\nwhere prunus's best is below cleanlab: " + ("; ".join(shortfalls) or "nowhere") + "\n")


def report_decision(results: list[dict]) -> None:
    """Clean-test accuracy of the four arms and the paired verdicts, per decision setting."""
    from prunus.study.stats import (
        Comparison,
        decide,
        mean_ci,
        paired_difference,
        paired_values,
        t_test,
    )

    by = defaultdict(dict)  # setting -> seed -> decision
    for result in results:
        if "decision" in result:
            c = result["cell"]
            by[(c.dataset, c.kind, c.rate)][c.seed] = result["decision"]
    if not by:
        return
    print("**the decision: clean-test accuracy after training on each arm** (confident learning's "
          "flags; mean [95% t-interval] over seeds; share of wrong training labels)\n")
    print("| setting | " + " | ".join(ARMS) + " |")
    print("|---|" + "---:|" * len(ARMS))
    verdicts = []
    for setting, seeds in by.items():
        acc = {arm: {s: d[arm]["accuracy"] for s, d in seeds.items()} for arm in ARMS}
        line = f"| {setting[0]} {setting[1]} {setting[2]:.0%} |"
        for arm in ARMS:
            est = mean_ci(acc[arm].values())
            wrong = np.mean([d[arm]["wrong_labels"] for d in seeds.values()])
            size = np.mean([d[arm]["size"] for d in seeds.values()])
            line += f" {_interval(est, percent=True)} ({wrong:.1%} wrong, n {size:,.0f}) |"
        print(line)
        comparisons = []
        for arm, rival in COMPARISONS:
            diff = paired_difference(acc[arm], acc[rival])
            comparisons.append(Comparison("label", f"{arm} vs {rival}", diff,
                                          t_test(paired_values(acc[arm], acc[rival]))))
        decide(comparisons)
        verdicts.append((setting, comparisons))
    print("\n**paired differences in clean-test accuracy (percentage points) and verdicts** "
          "(Holm over the four comparisons of a setting; a verdict needs 5 paired seeds)\n")
    print("| setting | " + " | ".join(f"{a[:3]} - {r[:3]}" for a, r in COMPARISONS) + " |")
    print("|---|" + "---|" * len(COMPARISONS))
    for setting, comparisons in verdicts:
        cells = [f"{_interval(c.difference, percent=True, signed=True)} {c.verdict}"
                 for c in comparisons]
        print(f"| {setting[0]} {setting[1]} {setting[2]:.0%} | " + " | ".join(cells) + " |")
    print()


def _interval(est, percent: bool = False, signed: bool = False) -> str:
    scale = 100 if percent else 1
    digits = 1 if percent else 3
    sign = "+" if signed else ""
    if not est.has_interval:
        return f"{est.mean * scale:{sign}.{digits}f}"
    return (f"{est.mean * scale:{sign}.{digits}f} [{est.low * scale:{sign}.{digits}f}, "
            f"{est.high * scale:{sign}.{digits}f}]")


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _tick(done: int, total: int, start: float) -> None:
    elapsed = time.perf_counter() - start
    print(f"\r{done}/{total} datasets, {elapsed:.0f} s elapsed, "
          f"~{elapsed / done * (total - done):.0f} s left", end="", flush=True)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


if __name__ == "__main__":
    main()
