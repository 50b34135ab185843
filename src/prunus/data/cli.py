"""Commands of the static data family: ``prunus score``, ``prunus select``, ``prunus scores ...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from prunus.errors import PrunusError
from prunus.files import atomic_write, check_writable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

scores_app = typer.Typer(help="Inspect and compare score tables.", no_args_is_help=True)
labels_app = typer.Typer(help="Find mislabeled training examples.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``score``, ``select`` and the ``scores`` group to the ``prunus`` command (once)."""
    if getattr(app, "_prunus_data_commands", False):
        return
    app.command("score")(score_command)
    app.command("select")(select_command)
    app.add_typer(scores_app, name="scores")
    app.add_typer(labels_app, name="labels")
    app._prunus_data_commands = True


def score_command(
    out: Path = typer.Option(..., "--out", help="where to write the score table (.parquet)"),
    dataset: str = typer.Option("mnist1d", help="dataset name or path"),
    model: str = typer.Option("cnn1d", help="model name or package.module:factory"),
    method: str = typer.Option("el2n", help="score method (see prunus methods scores)"),
    seeds: int = typer.Option(1, min=1, help="number of proxy runs (seeds 0..N-1), averaged"),
    epochs: int | None = typer.Option(None, min=0, help="proxy epochs (default: proxy fraction of full epochs)"),
    full_epochs: int = typer.Option(10, min=1, help="length of the schedule the proxy run is a prefix of"),
    proxy_fraction: float = typer.Option(0.2, help="share of the full schedule trained when --epochs is not given"),
    batch_size: int = typer.Option(128, min=1),
    lr: float | None = typer.Option(None, help="learning rate (default: the trainer's)"),
    optimizer: str | None = typer.Option(None, help="sgd, adam or adamw"),
    schedule: str | None = typer.Option(None, help="constant, cosine, step, onecycle or linear"),
    device: str = typer.Option("auto"),
    kind: str = typer.Option("entropy", help="uncertainty: entropy, least_confidence or margin"),
    clusters: int | None = typer.Option(None, min=1, help="prototypes: k-means clusters (default: classes)"),
    window: int = typer.Option(10, min=2, help="dynamic_uncertainty: presentations per window"),
    method_option: list[str] | None = typer.Option(
        None, "--method-option", help="score method setting name=value (see prunus methods scores)"
    ),
    noise: float = typer.Option(0.0, help="symmetric label-noise rate"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="dataset name=value"),
    model_option: list[str] | None = typer.Option(
        None, "--model-option", "-m", help="model factory name=value (e.g. width=32)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the table's metadata as JSON"),
    executor: str = typer.Option("local", help="local or ray (proxies as Ray tasks, shards on Ray actors)"),
    address: str | None = typer.Option(None, help="ray: the cluster's host:port (default: RAY_ADDRESS, else Ray in this process)"),
    workers: int | None = typer.Option(None, min=1, help="ray: scoring actors (default: the cluster's CPUs)"),
) -> None:
    """Score every training example with short proxy runs and write a Parquet score table."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from prunus.cli import console, err_console, parse_options
    from prunus.data.scoring import score
    from prunus.datasets import load
    from prunus.errors import choice_error
    from prunus.registry import SCORES

    if method not in SCORES:
        raise choice_error("--method", method, SCORES.names())
    score_options, method_options = split_method_options(method, parse_options(method_option, "--method-option"))
    if out.suffix != ".parquet":
        raise PrunusError(f"--out must end in .parquet (got {str(out)!r}).")
    if executor not in ("local", "ray"):
        raise choice_error("--executor", executor, ("local", "ray"))
    if executor == "local" and (address is not None or workers is not None):
        raise PrunusError("--address and --workers need --executor ray.")
    check_writable(out)
    data = load(dataset, noise=noise, **parse_options(option))
    settings = {"device": device}
    for name, value in (("lr", lr), ("optimizer", optimizer), ("schedule", schedule)):
        if value is not None:
            settings[name] = value

    model_options = parse_options(model_option, "--model-option")
    if getattr(data, "num_classes", None):  # refused naming the flag, before any progress bar
        from prunus.models import build_model, check_fit

        check_fit(build_model(model, data.input_shape, data.num_classes, **model_options), data,
                  f"--model {model!r}")
    progress = None if as_json else Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
    )

    def report(done: int, total: int, description: str) -> None:
        progress.update(task, completed=done, total=total, description=description)

    if progress is not None:
        progress.start()
        task = progress.add_task(f"score {method}", total=None)
    try:
        table = score(
            data, model=model, method=method, epochs=epochs, full_epochs=full_epochs,
            proxy_fraction=proxy_fraction, seeds=list(range(seeds)), batch_size=batch_size,
            **{"kind": kind, "clusters": clusters, "window": window, **score_options},
            method_options=method_options or None,
            model_options=model_options,
            progress=None if progress is None else report, executor=executor,
            address=address, workers=workers, **settings,
        )
    finally:
        if progress is not None:
            progress.stop()
    table.write(out)
    if as_json:
        print(json.dumps(table.metadata, default=str))
        return
    console.print(_summary(table, title=f"{method} scores → {out}"))


# what score() passes to a method itself: never a --method-option
_SET_BY_SCORE = frozenset({"batch_size", "progress", "seed", "seeds", "epochs", "model_options"})


def split_method_options(method: str, options: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """``--method-option`` settings as (``score()`` arguments, further keywords of the method).

    A setting is a parameter with a default of the method's registered function (or class), or
    the ``score()`` option a parameter is mapped to (its spec's ``options``: ``uncertainty``
    ``kind``, ``prototypes`` ``k`` = ``clusters``, ``dynamic_uncertainty`` ``window``,
    ``label_issue`` ``folds``), which then goes to that ``score()`` argument; what ``score()``
    sets itself (batch size, progress, seeds, epochs) is not a setting.

    Raises:
        PrunusError: a name that is not a setting of ``method`` (naming the allowed ones).
    """
    from prunus.data.scoring import method_info
    from prunus.registry import SCORES

    info = method_info(method)
    mapped = dict(info.options)  # function keyword -> score() option
    own = set(SCORES.entry(method).options()) - _SET_BY_SCORE - set(info.kwargs) - set(mapped)
    allowed = own | set(mapped) | set(mapped.values())
    to_score: dict[str, object] = {}
    to_method: dict[str, object] = {}
    for key, value in options.items():
        if key not in allowed:
            raise PrunusError(
                f"--method-option {key!r} is not a setting of score method {method!r}; "
                f"allowed: {', '.join(sorted(allowed)) or 'none'}."
            )
        if key in own:
            to_method[key] = value
        else:
            to_score[mapped.get(key, key)] = value
    return to_score, to_method


def select_command(
    table_path: Path = typer.Argument(..., metavar="TABLE", help="score table (.parquet)"),
    keep: float = typer.Option(..., "--keep", help="fraction of examples kept, in (0, 1]"),
    policy: str = typer.Option("hardest", help="hardest, easiest, band, ccs or random"),
    out: Path | None = typer.Option(None, "--out", help="write the kept ids here (.parquet)"),
    stratify: bool = typer.Option(True, "--stratify/--no-stratify", help="keep each class's share"),
    seed: int = typer.Option(0, min=0),
    column: str | None = typer.Option(None, help="score column (default: the table's main score)"),
    beta: float = typer.Option(0.1, help="ccs: fraction of hardest examples dropped first"),
    bins: int = typer.Option(50, help="ccs: number of score bins"),
    skip_hardest: float | None = typer.Option(None, help="band: fraction of hardest skipped"),
    dataset: str | None = typer.Option(None, help="check the table against this dataset's fingerprint"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="dataset name=value"),
) -> None:
    """Keep an exact fraction of the examples of a score table and write their ids."""
    import numpy as np

    from prunus.cli import console, parse_options
    from prunus.data.select import select
    from prunus.data.table import ScoreTable

    if not 0.0 < keep <= 1.0:
        raise PrunusError(f"--keep (the fraction kept) must be in (0, 1] (got {keep!r}).")
    table = ScoreTable.read(table_path)
    if out is not None and out.suffix != ".parquet":
        raise PrunusError(f"--out must end in .parquet (got {str(out)!r}).")
    if out is not None:
        check_writable(out)
    data = None
    if dataset is not None:
        from prunus.datasets import load

        data = load(dataset, **parse_options(option))
    ids, weights = select(
        table, keep, policy, stratify=stratify, seed=seed, column=column, dataset=data,
        skip_hardest=skip_hardest, beta=beta, bins=bins, return_weights=True,
    )
    order = np.argsort(table.ids)
    rows = order[np.searchsorted(table.ids, ids, sorter=order)]
    if out is not None:
        selection = {
            "policy": policy, "fraction": keep, "stratify": stratify, "seed": seed,
            "column": column or table.column, "beta": beta, "bins": bins, "skip_hardest": skip_hardest,
            "source": {k: table.metadata.get(k) for k in ("method", "column", "model", "epochs", "seeds")},
            "dataset": table.metadata.get("dataset"),
        }
        _write_selection(out, ids, table.labels[rows], weights, selection)
    scores = table.scores(column)
    counts = np.bincount(table.labels[rows], minlength=table.num_classes)
    totals = np.bincount(table.labels, minlength=table.num_classes)
    summary = Table("field", "value", title=f"{policy} selection" + (f" → {out}" if out else ""))
    summary.add_row("kept", f"{len(ids):,} of {len(table):,} ({len(ids) / len(table):.1%})")
    summary.add_row("per class kept", " ".join(f"{c}/{t}" for c, t in zip(counts, totals)))
    summary.add_row(
        f"{column or table.column} kept (min / median / max)",
        f"{scores[rows].min():.4g} / {np.median(scores[rows]):.4g} / {scores[rows].max():.4g}",
    )
    summary.add_row(
        f"{column or table.column} all (min / median / max)",
        f"{scores.min():.4g} / {np.median(scores):.4g} / {scores.max():.4g}",
    )
    console.print(summary)


@scores_app.command("compare")
def compare_command(
    first: Path = typer.Argument(..., metavar="A", help="score table (.parquet)"),
    second: Path = typer.Argument(..., metavar="B", help="score table (.parquet)"),
    keep: list[float] | None = typer.Option(None, "--keep", help="fractions to compare kept sets at"),
    policy: str = typer.Option("hardest", help="policy whose kept sets are compared"),
) -> None:
    """Spearman rank correlation of two score tables and the overlap of their kept sets."""
    import numpy as np

    from prunus.cli import console
    from prunus.data.select import select
    from prunus.data.table import ScoreTable

    a, b = ScoreTable.read(first), ScoreTable.read(second)
    fractions = keep or [0.1, 0.3, 0.5, 0.7]
    common = np.intersect1d(a.ids, b.ids)
    table = Table("measure", "value", title=f"{a.metadata.get('method')} vs {b.metadata.get('method')}")
    table.add_row("same dataset fingerprint", "yes" if a.fingerprint == b.fingerprint else "no")
    table.add_row("examples in both", f"{len(common):,}")
    table.add_row("Spearman rank correlation", f"{a.rank_correlation(b):.4f}")
    for fraction in fractions:
        kept_a = select(a, fraction, policy, stratify=False)
        kept_b = select(b, fraction, policy, stratify=False)
        shared = len(np.intersect1d(kept_a, kept_b))
        table.add_row(
            f"overlap of {policy} {fraction:g}", f"{shared / max(len(kept_a), 1):.1%} ({shared:,} ids)"
        )
    console.print(table)


@scores_app.command("show")
def show_command(
    table_path: Path = typer.Argument(..., metavar="TABLE", help="score table (.parquet)"),
) -> None:
    """Show how a score table was made and the distribution of its scores."""
    from prunus.cli import console
    from prunus.data.table import ScoreTable

    console.print(_summary(ScoreTable.read(table_path), title=str(table_path)))


def _summary(table, title: str) -> Table:
    import numpy as np

    meta = table.metadata
    cost = meta.get("cost") or {}
    scores = table.scores()
    out = Table("field", "value", title=title)
    out.add_row("method", f"{meta.get('method')} (column {table.column}, {table.direction()})")
    if meta.get("approximation"):
        out.add_row("approximation", str(meta["approximation"]))
    dataset = meta.get("dataset") or {}
    out.add_row("dataset", f"{dataset.get('name')} ({len(table):,} examples, fingerprint {table.fingerprint})")
    out.add_row("model / epochs", f"{meta.get('model')} / {meta.get('epochs')} of {meta.get('full_epochs')}")
    out.add_row("seeds", str(meta.get("seeds")))
    if cost:
        out.add_row(
            "cost",
            f"{cost.get('seconds', 0):.1f} s (train {cost.get('train_seconds', 0):.1f} s, "
            f"scoring {cost.get('scoring_seconds', 0):.1f} s), {cost.get('flops', 0) / 1e9:.2f} GFLOPs",
        )
    q = np.quantile(scores, [0, 0.25, 0.5, 0.75, 1])
    out.add_row("min / q25 / median / q75 / max", " / ".join(f"{v:.4g}" for v in q))
    out.add_row("mean ± std", f"{scores.mean():.4g} ± {scores.std():.4g}")
    seed_columns = [c for c in table.columns if c.startswith(f"{table.column}_seed")]
    if len(seed_columns) > 1:
        from scipy.stats import spearmanr

        pairs = [
            spearmanr(table.columns[x], table.columns[y]).statistic
            for i, x in enumerate(seed_columns)
            for y in seed_columns[i + 1 :]
        ]
        out.add_row("seed-to-seed Spearman (mean)", f"{np.mean(pairs):.4f}")
    return out


def _write_selection(path: Path, ids, labels, weights, selection: dict) -> None:

    import pyarrow as pa
    import pyarrow.parquet as pq

    from prunus.data.table import SELECTION_KEY

    table = pa.table({"id": pa.array(ids), "label": pa.array(labels), "weight": pa.array(weights)})
    table = table.replace_schema_metadata({SELECTION_KEY: json.dumps(selection, default=str).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


@labels_app.command("find")
def labels_find_command(
    out: Path = typer.Option(..., "--out", help="where to write the label-issue table (.parquet)"),
    dataset: str = typer.Option("mnist1d", help="dataset name or path"),
    model: str = typer.Option("mlp", help="proxy model name or package.module:factory"),
    method: str = typer.Option("confident_learning", help="confident_learning, self_confidence, "
                               "aum, forgetting, el2n, loss_early or loss_late"),
    folds: int = typer.Option(5, min=2, help="K of the K-fold out-of-sample probabilities"),
    seeds: int = typer.Option(1, min=1, help="proxy seeds (0..N-1), results averaged"),
    epochs: int = typer.Option(10, min=1, help="epochs of each proxy model"),
    rank_by: str = typer.Option("self_confidence", help="self_confidence or normalized_margin"),
    pred_probs: Path | None = typer.Option(
        None, "--pred-probs", help="out-of-sample probabilities you already have (.npy, N x C, "
        "rows in the dataset's order); nothing is trained"),
    noise: float = typer.Option(0.0, help="inject label noise first (to measure the detector)"),
    noise_kind: str = typer.Option("symmetric", help="symmetric, pairs or instance"),
    noise_seed: int = typer.Option(0, min=0, help="seed of the injected noise"),
    device: str = typer.Option("auto"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="dataset name=value"),
    as_json: bool = typer.Option(False, "--json", help="print the table's metadata as JSON"),
) -> None:
    """Flag likely mislabeled training examples (confident learning on K-fold out-of-sample
    probabilities by default) with a suggested label; with injected noise, prints the detector's
    precision and recall against the labels that were really flipped."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from prunus.cli import console, err_console, parse_options
    from prunus.data.labels import LABEL_METHODS, find_label_issues
    from prunus.datasets import load
    from prunus.errors import choice_error

    if method not in LABEL_METHODS:
        raise choice_error("--method", method, LABEL_METHODS)
    if out.suffix != ".parquet":
        raise PrunusError(f"--out must end in .parquet (got {str(out)!r}).")
    check_writable(out)
    probs = None if pred_probs is None else _read_pred_probs(pred_probs)
    data = load(dataset, noise=noise, noise_kind=noise_kind, noise_seed=noise_seed,
                **parse_options(option))
    progress = None if as_json or probs is not None else Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
    )

    tasks: list = []

    def report(done: int, total: int, description: str) -> None:
        if not tasks:  # started on the first report, after the settings were checked
            progress.start()
            tasks.append(progress.add_task(f"labels {method}", total=None))
        progress.update(tasks[0], completed=done, total=total, description=description)

    try:
        table = find_label_issues(
            data, model, method, seeds=range(seeds), folds=folds, epochs=epochs,
            rank_by=rank_by, pred_probs=probs, device=device,
            progress=None if progress is None else report,
        )
    finally:
        if tasks:
            progress.stop()
    table.write(out)
    if as_json:
        print(json.dumps(table.metadata, default=str))
        return
    flagged = table.ids[table.columns["is_issue"].astype(bool)]
    console.print(f"{len(flagged):,} of {len(table):,} examples flagged as likely mislabeled "
                  f"({method}) → {out}", highlight=False)
    measured = _against_flips(table)
    if measured is not None:
        console.print(f"against the {measured['flipped']:,} labels flipped: precision "
                      f"{measured['precision']:.3f}, recall {measured['recall']:.3f}, "
                      f"F1 {measured['f1']:.3f}", highlight=False)


@labels_app.command("show")
def labels_show_command(
    table_path: Path = typer.Argument(..., metavar="TABLE", help="label-issue table (.parquet)"),
    top: int = typer.Option(10, min=0, help="how many of the most likely issues to list"),
) -> None:
    """Show a label-issue table: how many were flagged (per class), the most likely issues with
    their given and suggested labels, and precision/recall where the dataset recorded its flips."""
    import numpy as np

    from prunus.cli import console
    from prunus.data.table import ScoreTable

    table = ScoreTable.read(table_path)
    missing = [c for c in ("label_issue", "is_issue", "suggested_label") if c not in table.columns]
    if missing:
        raise PrunusError(
            f"{table_path} is not a label-issue table (no {missing[0]!r} column); write one with "
            "prunus labels find."
        )
    meta = table.metadata
    flagged = table.columns["is_issue"].astype(bool)
    suggested = table.columns["suggested_label"].astype(np.int64)
    dataset = meta.get("dataset") or {}
    names = (dataset.get("options") or {}).get("classes")

    def named(label: int) -> str:  # "2 (cat)" when the dataset's labels were strings
        return f"{label} ({names[label]})" if names and 0 <= label < len(names) else str(label)

    summary = Table("field", "value", title=str(table_path))
    summary.add_row("method", f"{meta.get('method')} ({meta.get('description', '')})")
    summary.add_row("dataset", f"{dataset.get('name')} ({len(table):,} examples, fingerprint "
                    f"{table.fingerprint})")
    summary.add_row("flagged", f"{int(flagged.sum()):,} of {len(table):,} ({flagged.mean():.1%})")
    per_class = np.bincount(table.labels[flagged], minlength=table.num_classes)
    totals = np.bincount(table.labels, minlength=table.num_classes)
    summary.add_row("flagged per given label", " ".join(f"{named(c)}:{f}/{t}" for c, (f, t)
                                                        in enumerate(zip(per_class, totals))))
    if meta.get("threshold") is not None:
        summary.add_row("threshold", f"{meta['threshold']:.4g}")
    measured = _against_flips(table)
    if measured is not None:
        summary.add_row("against the recorded flips",
                        f"{measured['flipped']:,} flipped: precision {measured['precision']:.3f}, "
                        f"recall {measured['recall']:.3f}, F1 {measured['f1']:.3f}")
    console.print(summary)
    rows = np.flatnonzero(flagged)
    score = np.nan_to_num(table.columns["label_issue"][rows], nan=-np.inf)
    rows = rows[np.argsort(-score, kind="stable")][:top]
    if len(rows):
        flipped = set(dataset.get("flipped_ids") or [])
        listing = Table("id", "given", "suggested", "label_issue",
                        *(["flipped"] if flipped else []), title=f"top {len(rows)} flagged")
        for row in rows:
            cells = [str(table.ids[row]), named(int(table.labels[row])), named(int(suggested[row])),
                     f"{table.columns['label_issue'][row]:.4g}"]
            if flipped:
                cells.append("yes" if int(table.ids[row]) in flipped else "no")
            listing.add_row(*cells)
        console.print(listing)


def _against_flips(table) -> dict | None:
    """Precision, recall and F1 of the flags against the ids the dataset recorded as flipped."""
    import numpy as np

    flipped = np.asarray((table.metadata.get("dataset") or {}).get("flipped_ids") or [], dtype=np.int64)
    if not len(flipped):
        return None
    flagged = table.ids[table.columns["is_issue"].astype(bool)]
    hits = int(np.isin(flagged, flipped).sum())
    precision = hits / len(flagged) if len(flagged) else float("nan")
    recall = hits / len(flipped)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"flipped": len(flipped), "precision": precision, "recall": recall, "f1": f1}


def _read_pred_probs(path: Path) -> np.ndarray:
    """A (N, C) float array from a .npy file (no pickle)."""
    import numpy as np

    from prunus.errors import reading

    if path.suffix != ".npy":
        raise PrunusError(f"--pred-probs must be a .npy file (got {str(path)!r}).")
    if not path.is_file():
        raise PrunusError(f"--pred-probs: file {str(path)!r} does not exist.")
    with reading(path, "--pred-probs", "a NumPy .npy array of probabilities"):
        probs = np.load(path, allow_pickle=False)
    if not np.issubdtype(probs.dtype, np.number):
        raise PrunusError(f"--pred-probs must hold numbers (got dtype {probs.dtype}).")
    return probs.astype(np.float64)
