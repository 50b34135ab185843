"""The ``prunus`` command: thin — parses, calls the library, prints (Typer + Rich)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from prunus.errors import PrunusError

app = typer.Typer(
    name="prunus",
    help="Decide what to keep (examples, weights) and prove it against random and full data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="Bundled datasets and their options.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
console = Console()
err_console = Console(stderr=True)

# Each family adds its own commands from ``<family>/cli.py`` (``register(app)``), so the
# command line grows with the library without this file changing.
COMMAND_MODULES = (
    "prunus.data.cli",
    "prunus.weights.cli",
    "prunus.study.cli",
    "prunus.negatives.cli",
)


def parse_options(pairs: list[str] | None, field: str = "--option") -> dict[str, object]:
    """Turn ``["train_size=40000", "seed=1"]`` into ``{"train_size": 40000, "seed": 1}``."""
    options: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise PrunusError(f"{field} must look like name=value (got {pair!r}).")
        options[key.strip()] = _parse_value(raw.strip())
    return options


def _parse_value(raw: str) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


@datasets_app.command("list")
def datasets_list() -> None:
    """List the bundled datasets."""
    from prunus.datasets import list_datasets

    table = Table("name", "description", "extra")
    for entry in list_datasets():
        table.add_row(entry.name, entry.summary, entry.extra or "")
    console.print(table)


@datasets_app.command("show")
def datasets_show(
    name: str,
    option: list[str] | None = typer.Option(None, "--option", "-o", help="name=value"),
) -> None:
    """Load a dataset and show its sizes, classes, options and fingerprint."""
    from prunus.datasets import list_datasets, load
    from prunus.datasets.registry import get_entry

    options = parse_options(option)
    dataset = load(name, **options)
    table = Table("field", "value")
    for key, value in dataset.summary().items():
        table.add_row(key, str(value))
    if hasattr(dataset, "class_counts"):  # retrieval datasets (pycode) have no classes
        table.add_row("class counts", str(dataset.class_counts().tolist()))
    if name in {entry.name for entry in list_datasets()}:  # files and directories: no defaults
        defaults = {**get_entry(name).options(), **options}
        table.add_row("options", ", ".join(f"{k}={v}" for k, v in defaults.items()))
    console.print(table)


@app.command()
def train(
    dataset: str = typer.Option("mnist1d", help="dataset name or path"),
    model: str = typer.Option("cnn1d", help="model name or package.module:factory"),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(3e-3),
    optimizer: str = typer.Option("adamw", help="sgd, adam or adamw"),
    schedule: str = typer.Option("onecycle", help="constant, cosine, step, onecycle or linear"),
    seed: int = typer.Option(0, min=0),
    device: str = typer.Option("auto"),
    online: str | None = typer.Option(None, help="online data selection method (e.g. rs2)"),
    keep: float | None = typer.Option(None, help="fraction of data kept per epoch by --online"),
    subset: Path | None = typer.Option(None, help="train on the ids of a selection "
                                       "(.parquet written by 'prunus select --out')"),
    noise: float = typer.Option(0.0, help="label-noise rate"),
    noise_kind: str = typer.Option("symmetric", help="symmetric, pairs or instance"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="dataset name=value"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable results"),
) -> None:
    """Train one model and print accuracy and compute per epoch."""
    from prunus.config import TrainConfig, validated
    from prunus.datasets import load
    from prunus.models import build_model, check_fit
    from prunus.train import Trainer
    from prunus.train.progress import RichProgress

    config = validated(
        TrainConfig,
        {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
         "schedule": schedule, "seed": seed, "device": device},
        "train",
    )
    if keep is not None and not online:
        raise PrunusError("--keep applies only with --online (e.g. --online rs2 --keep 0.3); "
                          "to train on a fixed subset, pass --subset SELECTION.parquet.")
    data = load(dataset, noise=noise, noise_kind=noise_kind, **parse_options(option))
    if subset is not None:
        from prunus.data.table import read_selection

        data = data.subset(read_selection(subset, data))
    net = build_model(model, data.input_shape, data.num_classes, seed=seed)
    check_fit(net, data, f"--model {model!r}")
    callbacks = []
    if online:
        from prunus.data.online import get_online

        callbacks.append(get_online(online, keep=1.0 if keep is None else keep, seed=seed))
    if not as_json:
        callbacks.append(RichProgress(console=err_console))
    result = Trainer(net, data, callbacks=callbacks, config=config).fit()
    rows = [r for r in result.history if r["end_of_epoch"]]
    if as_json:
        summary = {"dataset": data.summary(), "model": model, "seed": seed, "epochs": rows}
        print(json.dumps(summary, default=float))
        return
    table = Table("epoch", "test acc", "test loss", "train s", "eval s", "fwd ex", "bwd ex", "GFLOPs")
    for r in rows:
        table.add_row(
            str(r["epoch"]), f"{100 * r['accuracy']:.2f}%", f"{r['loss']:.4f}",
            f"{r['train_seconds']:.1f}", f"{r['eval_seconds']:.1f}", f"{r['examples_forwarded']:,}",
            f"{r['examples_backpropagated']:,}", f"{r['flops'] / 1e9:.2f}",
        )
    console.print(table)


@app.command("methods")
def methods(
    family: str | None = typer.Argument(None, help="one family: datasets, models, scores, select, online, weights or negatives"),
    as_json: bool = typer.Option(False, "--json", help="print {family: {name: summary}}"),
) -> None:
    """List every registered method of every family, one line each."""
    from prunus.errors import choice_error
    from prunus.registry import FAMILIES

    if family is not None and family not in FAMILIES:
        raise choice_error("family", family, FAMILIES)
    chosen = [family] if family else list(FAMILIES)
    listing = {name: FAMILIES[name].describe() for name in chosen}
    if as_json:
        print(json.dumps(listing))
        return
    for name, described in listing.items():
        table = Table("name", "summary", title=f"{name} (prunus.registry, entry points prunus.{name})")
        for method, summary in described.items():
            table.add_row(method, summary)
        console.print(table)


def _register_families() -> None:
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that family has no commands yet
            raise
        module.register(app)


INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one sentence and exit with status 2."""
    _register_families()
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        if exc.code == INTERRUPTED and argv is None:  # a real process, not an in-process call
            # An interrupted study has stored every finished run and its report atomically.
            # Leave at once: after its workers were terminated, the process pool's manager
            # and queue threads can otherwise keep the interpreter from exiting.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED)
        raise
    except PrunusError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
