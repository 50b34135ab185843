"""``prunus prune``: train a model under a weight-sparsity policy and show what was kept."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``prunus prune`` to the command line."""
    app.command("prune")(prune_command)
    app.command("evaluate")(evaluate_command)


def prune_command(
    method: str = typer.Option("magnitude", help="weight policy: random, magnitude, gmp, snip, grasp, synflow, gradient, imp, set, rigl, granet, nm"),
    sparsity: float | None = typer.Option(None, help="fraction of prunable weights removed, in [0, 1) (default 0.9; an N:M pattern fixes it at 1 - N/M)"),
    pattern: str = typer.Option("unstructured", help="unstructured or N:M such as 2:4 (one-shot methods and nm)"),
    dataset: str = typer.Option("mnist1d", help="dataset name or path"),
    model: str = typer.Option("cnn1d", help="model name or package.module:factory"),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(3e-3),
    optimizer: str = typer.Option("adamw", help="sgd, adam or adamw"),
    schedule: str = typer.Option("onecycle", help="constant, cosine, step or onecycle"),
    seed: int = typer.Option(0, min=0),
    device: str = typer.Option("auto"),
    out: Path | None = typer.Option(None, help="write weights + masks here (.safetensors)"),
    setting: list[str] | None = typer.Option(None, "--setting", "-s", help="method setting name=value, e.g. -s every=50"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="dataset name=value"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable results"),
) -> None:
    """Train with a weight-sparsity policy; print accuracy, per-layer sparsity and FLOPs."""
    from rich.table import Table

    from prunus.cli import console, err_console, parse_options
    from prunus.datasets import load
    from prunus.errors import PrunusError
    from prunus.files import check_writable
    from prunus.models import build_model
    from prunus.train import Trainer
    from prunus.train.progress import RichProgress
    from prunus.weights import get_sparsifier, save, sparsity_report
    from prunus.weights.nm import parse_pattern, pattern_sparsity

    if out is not None and out.suffix != ".safetensors":
        raise PrunusError(f"--out must end in .safetensors (got {str(out)!r}).")
    if out is not None:
        check_writable(out)
    settings = parse_options(setting, "--setting")
    nm = parse_pattern(pattern)
    if nm is not None:
        sparsity = pattern_sparsity(pattern, sparsity)  # refuses a contradicting --sparsity
        if method == "nm":
            if settings.setdefault("m", nm[1]) != nm[1]:
                raise PrunusError(f"--pattern {pattern} contradicts the setting m={settings['m']}.")
        else:
            settings["pattern"] = pattern
    elif sparsity is None:
        sparsity = 0.5 if method == "nm" else 0.9
    sparsifier = get_sparsifier(method, sparsity=sparsity, seed=seed, **settings)
    data = load(dataset, **parse_options(option))
    net = build_model(model, data.input_shape, data.num_classes, seed=seed)
    callbacks = [sparsifier] + ([] if as_json else [RichProgress(console=err_console, description=method)])
    result = Trainer(
        net, data, callbacks=callbacks, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, schedule=schedule, seed=seed, device=device,
    ).fit()
    final = result.final
    rows = sparsity_report(net, sparsifier.targets)
    if out is not None:
        save(net, out, metadata={
            "method": method, "sparsity": sparsity, "dataset": dataset, "model": model,
            "seed": seed, "accuracy": final.get("accuracy"),
            "dataset_options": json.dumps(parse_options(option)),
        })
    if as_json:
        summary = {
            "method": method, "sparsity": sparsity, "achieved_sparsity": rows[-1]["sparsity"],
            "accuracy": final.get("accuracy"), "loss": final.get("loss"),
            "theoretical_flops": final.get("flops"), "layers": rows,
            "out": None if out is None else str(out),
        }
        print(json.dumps(summary, default=str))
        return
    table = Table("layer", "shape", "params", "kept", "sparsity", title=f"{method} at sparsity {sparsity}")
    for r in rows:
        table.add_row(
            r["layer"], "×".join(map(str, r["shape"])), f"{r['params']:,}",
            f"{r['params'] - (r['pruned'] if r['masked'] else r['zeros']):,}", f"{100 * r['sparsity']:.2f}%",
            end_section=r is rows[-2],
        )
    console.print(table)
    console.print(
        f"test accuracy {100 * final.get('accuracy', float('nan')):.2f}%  ·  "
        f"train {final.get('train_seconds', 0):.1f}s  ·  "
        f"{final.get('flops', 0) / 1e9:.2f} GFLOPs (theoretical, scaled by density)"
    )
    if out is not None:
        console.print(f"weights and masks written to {out}")


def evaluate_command(
    path: Path = typer.Argument(..., help="weights + masks written by prunus prune --out"),
    dataset: str | None = typer.Option(None, help="dataset name or path (default: the file's)"),
    model: str | None = typer.Option(None, help="model name (default: the file's)"),
    option: list[str] | None = typer.Option(None, "--option", "-o",
                                            help="dataset name=value (default: the file's)"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable results"),
) -> None:
    """Test accuracy and per-layer sparsity of a saved sparse model, on the data it was
    trained for (or another dataset of the same shape)."""
    from prunus.cli import console, parse_options
    from prunus.datasets import load
    from prunus.errors import PrunusError, reading
    from prunus.models import build_model
    from prunus.train.trainer import evaluate
    from prunus.weights import load as load_weights
    from prunus.weights import sparsity_report

    if not path.is_file():
        raise PrunusError(f"path must be an existing safetensors file (got {str(path)!r}).")
    from safetensors import safe_open

    with reading(path, "weights file", "a readable safetensors file"), \
            safe_open(str(path), "pt") as handle:
        info = handle.metadata() or {}
    dataset = dataset or info.get("dataset")
    model = model or info.get("model")
    if not dataset or not model:
        raise PrunusError(f"{str(path)!r} does not record its dataset and model; pass "
                          "--dataset and --model.")
    options = parse_options(option) if option else json.loads(info.get("dataset_options", "{}"))
    data = load(dataset, **options)
    net = build_model(model, data.input_shape, data.num_classes, seed=0)
    load_weights(net, path)
    result = evaluate(net, data.test)
    rows = sparsity_report(net)
    if as_json:
        print(json.dumps({"dataset": dataset, "model": model, **result,
                          "sparsity": rows[-1]["sparsity"], "layers": rows}, default=str))
        return
    console.print(f"{model} on {dataset}: test accuracy {100 * result['accuracy']:.2f}%, "
                  f"loss {result['loss']:.4f}, sparsity {100 * rows[-1]['sparsity']:.2f}%",
                  highlight=False)
