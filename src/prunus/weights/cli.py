"""``prunus prune``: train a model under a weight-sparsity policy and show what was kept;
``prunus oneshot``: prune a pretrained transformer from calibration data, block by block."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``prunus prune`` to the command line."""
    app.command("prune")(prune_command)
    app.command("evaluate")(evaluate_command)
    app.command("oneshot")(oneshot_command)


def prune_command(
    method: str | None = typer.Option(None, help="weight policy: random, magnitude (default), gmp, snip, grasp, synflow, gradient, imp, set, rigl, granet, nm; with --pattern channels the channel criterion: l1 (default), l2, taylor, random"),
    sparsity: float | None = typer.Option(None, help="fraction of prunable weights removed, in [0, 1) (default 0.9; an N:M pattern fixes it at 1 - N/M; channels: fraction of each layer's channels removed, default 0.5)"),
    pattern: str = typer.Option("unstructured", help="unstructured, N:M such as 2:4 (one-shot methods and nm), or channels (train dense, then remove whole channels and shrink the model; -s finetune=EPOCHS)"),
    dataset: str = typer.Option("mnist1d", help="dataset name or path"),
    model: str = typer.Option("cnn1d", help="model name or package.module:factory"),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(3e-3),
    optimizer: str = typer.Option("adamw", help="sgd, adam or adamw"),
    schedule: str = typer.Option("onecycle", help="constant, cosine, step, onecycle or linear"),
    seed: int = typer.Option(0, min=0),
    device: str = typer.Option("auto"),
    out: Path | None = typer.Option(None, help="write weights + masks here (.safetensors)"),
    setting: list[str] | None = typer.Option(None, "--setting", "-s", help="method setting name=value, e.g. -s every=50"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="dataset name=value"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable results"),
) -> None:
    """Train with a weight-sparsity policy; print accuracy, per-layer sparsity and FLOPs.

    With ``--pattern channels``: train dense, remove the lowest-scoring output channels of every
    layer (:func:`prunus.weights.prune_channels`), optionally fine-tune, and print the shapes,
    parameters, forward FLOPs and accuracy before and after."""
    from rich.table import Table

    from prunus.cli import console, err_console, parse_options
    from prunus.datasets import load
    from prunus.errors import PrunusError
    from prunus.files import check_writable
    from prunus.models import build_model, check_fit
    from prunus.train import Trainer
    from prunus.train.progress import RichProgress
    from prunus.weights import get_sparsifier, save, sparsity_report
    from prunus.weights.nm import parse_pattern, pattern_sparsity

    if out is not None and out.suffix != ".safetensors":
        raise PrunusError(f"--out must end in .safetensors (got {str(out)!r}).")
    if out is not None:
        check_writable(out)
    settings = parse_options(setting, "--setting")
    train = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
             "schedule": schedule, "seed": seed, "device": device}
    if pattern == "channels":
        _prune_channels(method or "l1", 0.5 if sparsity is None else sparsity, settings, dataset,
                        model, parse_options(option), train, out, as_json)
        return
    if ":" not in pattern and pattern != "unstructured":
        raise PrunusError(f"--pattern must be unstructured, N:M such as 2:4, or channels (got {pattern!r}).")
    method = method or "magnitude"
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
    check_fit(net, data, f"--model {model!r}")
    callbacks = [sparsifier] + ([] if as_json else [RichProgress(console=err_console, description=method)])
    final = Trainer(net, data, callbacks=callbacks, **train).fit().final
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


def _prune_channels(
    criterion: str, sparsity: float, settings: dict, dataset: str, model: str, options: dict,
    train: dict, out: Path | None, as_json: bool,
) -> None:
    """``prunus prune --pattern channels``: dense training, channel removal, optional fine-tuning
    of the masked model (same function as the small one), report; ``--out`` writes the masked
    weights in the full shapes (removed channels are zeros) so ``prunus evaluate`` reads them."""
    import torch
    from rich.table import Table

    from prunus.cli import console, err_console
    from prunus.datasets import load
    from prunus.errors import PrunusError, choice_error
    from prunus.models import build_model, check_fit
    from prunus.train import Trainer
    from prunus.train.meter import measure_flops
    from prunus.train.progress import RichProgress
    from prunus.train.trainer import evaluate
    from prunus.weights import save
    from prunus.weights.masks import check_sparsity, plain_copy
    from prunus.weights.structured import (
        CHANNEL_CRITERIA,
        channel_masks,
        remove_channels,
        shrink_report,
    )

    if criterion not in CHANNEL_CRITERIA:
        raise choice_error("--method (with --pattern channels)", criterion, CHANNEL_CRITERIA)
    sparsity = check_sparsity(sparsity, "--sparsity")
    unknown = sorted(set(settings) - {"finetune"})
    if unknown:
        raise choice_error("--setting (with --pattern channels)", unknown[0], ["finetune"])
    finetune = settings.get("finetune", 0)
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 0:
        raise PrunusError(f"--setting finetune must be a whole number of epochs >= 0 (got {finetune!r}).")
    data = load(dataset, **options)
    net = build_model(model, data.input_shape, data.num_classes, seed=train["seed"])
    check_fit(net, data, f"--model {model!r}")
    progress = [] if as_json else [RichProgress(console=err_console, description="dense")]
    dense = Trainer(net, data, callbacks=progress, **train).fit().final
    masked = plain_copy(net)
    channel_masks(masked, sparsity, criterion, data, train["seed"])
    if finetune:
        progress = [] if as_json else [RichProgress(console=err_console, description="fine-tune")]
        Trainer(masked, data, callbacks=progress, **{**train, "epochs": finetune}).fit()
    small = remove_channels(masked)
    device = next(small.parameters()).device
    accuracy = evaluate(small, data.test, device=device)["accuracy"]
    sample = torch.from_numpy(data.x[:8]).to(device)
    flops = [measure_flops(m, sample)[0] for m in (net, small)]
    rows = shrink_report(net, small)
    if out is not None:
        save(plain_copy(masked), out, metadata={
            "method": criterion, "pattern": "channels", "sparsity": sparsity, "dataset": dataset,
            "model": model, "seed": train["seed"], "accuracy": accuracy,
            "dataset_options": json.dumps(options),
        })
    if as_json:
        print(json.dumps({
            "method": criterion, "pattern": "channels", "sparsity": sparsity, "finetune": finetune,
            "dense_accuracy": dense.get("accuracy"), "accuracy": accuracy,
            "params_dense": rows[-1]["params_before"], "params": rows[-1]["params_after"],
            "forward_flops_dense": flops[0], "forward_flops": flops[1], "layers": rows,
            "out": None if out is None else str(out),
        }, default=str))
        return
    table = Table("layer", "shape", "params", title=f"channels removed by {criterion} at {sparsity:g}")
    for r in rows:
        shape = "" if r["before"] is None else (
            "×".join(map(str, r["before"])) + " → " + "×".join(map(str, r["after"])))
        table.add_row(r["layer"], shape, f"{r['params_before']:,} → {r['params_after']:,}",
                      end_section=r is rows[-2])
    console.print(table)
    console.print(
        f"test accuracy {100 * dense.get('accuracy', float('nan')):.2f}% dense → "
        f"{100 * accuracy:.2f}% after removal"
        + (f" and {finetune} fine-tuning epochs" if finetune else "")
        + f"  ·  forward {flops[0] / 1e6:.2f} → {flops[1] / 1e6:.2f} MFLOPs per example",
        highlight=False,
    )
    if out is not None:
        console.print(f"weights written to {out} (removed channels as zeros, full shapes)")


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


def oneshot_command(
    model_dir: str = typer.Argument(..., metavar="MODEL_DIR", help="a Hugging Face model directory (causal LM or encoder), a sentence-transformers directory, or 'minilm'"),
    method: str = typer.Option("wanda", help="wanda, sparsegpt, magnitude or random"),
    sparsity: float | None = typer.Option(None, help="fraction of each pruned matrix set to zero, in [0, 1) (default 0.5; an N:M pattern fixes it at 1 - N/M)"),
    pattern: str = typer.Option("unstructured", help="unstructured or N:M such as 2:4"),
    layer_sparsity: str = typer.Option("uniform", help="uniform or owl (outlier-weighed block sparsities)"),
    scope: str = typer.Option("row", help="wanda/magnitude/random: compare within each row, layer, or global (magnitude)"),
    calibration: str = typer.Option("stdlib", help="stdlib, pycode, or a directory / .jsonl / .parquet of texts"),
    samples: int = typer.Option(128, help="calibration sequences (causal LM) or texts (encoder)"),
    seq_len: int = typer.Option(256, help="tokens per calibration sequence (encoders: truncation length)"),
    batch_size: int = typer.Option(8, help="calibration sequences per forward pass"),
    tokenizer: str | None = typer.Option(None, help="a tokenizer directory, or 'bpe' (trained on stdlib); default the model directory's"),
    blocks: list[str] | None = typer.Option(None, "--block", help="a repeated block's module name (repeat the flag); default: found"),
    seed: int = typer.Option(0, min=0, help="seed of the calibration draw and of random pruning"),
    out: Path | None = typer.Option(None, help="write the pruned model, masks.safetensors and oneshot.json to this new directory"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable results"),
) -> None:
    """Prune a pretrained transformer in one shot (Wanda, SparseGPT, magnitude, random) and
    print each layer's sparsity and reconstruction error ||WX - W'X|| / ||WX||."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from prunus.cli import console, err_console
    from prunus.errors import PrunusError
    from prunus.weights.pretrained import (
        check_out_dir,
        check_settings,
        find_blocks,
        load_pretrained,
        oneshot,
        save_pruned,
    )

    check_settings(method, sparsity, pattern, layer_sparsity, scope, 0.01, 128, 5.0, 0.08)
    for flag, value in (("--samples", samples), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if value < 1:
            raise PrunusError(f"{flag} must be a positive integer (got {value}).")
    if out is not None:
        check_out_dir(str(out))
    model, tok, kind = load_pretrained(model_dir)
    find_blocks(model, blocks or None)  # before the calibration work
    if tokenizer is not None:
        from prunus.text import load_stdlib, load_tokenizer

        if kind == "sentence-transformers":
            raise PrunusError("--tokenizer applies to Hugging Face model directories; a "
                              "sentence-transformers model brings its own.")
        vocab = getattr(getattr(model, "config", None), "vocab_size", 4096)
        tok = load_tokenizer(tokenizer, load_stdlib() if tokenizer == "bpe" else None,
                             vocab_size=min(int(vocab), 4096))
    batches = _calibration(model, tok, kind, calibration, samples, seq_len, batch_size, seed)
    if as_json:
        result = oneshot(model, batches, sparsity, method, pattern, layer_sparsity, blocks or None,
                         scope=scope, seed=seed)
    else:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(f"{method} one-shot", total=None)

            def advance(done: int, total: int, description: str) -> None:
                bar.update(task, completed=done, total=total, description=description)

            result = oneshot(model, batches, sparsity, method, pattern, layer_sparsity,
                             blocks or None, scope=scope, seed=seed, progress=advance)
    if out is not None:
        save_pruned(model, str(out), result, tok, kind)
    if as_json:
        print(json.dumps({**result.summary(), "out": None if out is None else str(out)}, default=str))
        return
    table = Table("layer", "shape", "sparsity", "error", "seconds",
                  title=f"{method} {pattern} at sparsity {result.sparsity:g} ({layer_sparsity})")
    for row in result.layers:
        table.add_row(row.name, "×".join(map(str, row.shape)), f"{100 * row.sparsity:.2f}%",
                      f"{row.error:.4f}", f"{row.seconds:.2f}")
    console.print(table)
    mean_error = sum(r.error for r in result.layers) / max(len(result.layers), 1)
    console.print(
        f"{len(result.layers)} matrices in {len(result.blocks)} blocks, sparsity "
        f"{100 * result.achieved_sparsity:.2f}%, mean reconstruction error {mean_error:.4f}, "
        f"{result.samples} calibration samples ({result.tokens:,} tokens), {result.seconds:.1f}s",
        highlight=False,
    )
    console.print(f"left dense: {', '.join(result.excluded + result.skipped) or 'nothing'}",
                  highlight=False)
    if out is not None:
        console.print(f"pruned model, masks.safetensors and oneshot.json written to {out}/")


def _calibration(model, tokenizer, kind: str, source: str, samples: int, seq_len: int,
                 batch_size: int, seed: int) -> list:
    """Calibration batches for ``prunus oneshot`` from ``--calibration``."""
    import types

    import numpy as np

    from prunus.errors import PrunusError
    from prunus.weights.calibration import encoder_calibration, pycode_texts, text_calibration

    if source == "stdlib":
        from prunus.text import load_stdlib

        corpus = load_stdlib()
        texts = corpus["train"].texts
        if kind == "causal" and tokenizer is None:
            from prunus.text import load_tokenizer

            vocab = getattr(getattr(model, "config", None), "vocab_size", 4096)
            tokenizer = load_tokenizer("bpe", corpus, vocab_size=min(int(vocab), 4096))
    elif source == "pycode":
        texts = pycode_texts("train")
    else:
        path = Path(source)
        if not path.exists():
            raise PrunusError(f"--calibration must be stdlib, pycode or an existing directory, "
                              f".jsonl or .parquet file of texts (got {source!r}).")
        from prunus.text import load_text

        texts = load_text(path=str(path), validation_fraction=0.0, test_fraction=0.0)["train"].texts
    if tokenizer is None:
        raise PrunusError("MODEL_DIR holds no tokenizer; pass --tokenizer (a tokenizer directory, "
                          "or bpe to train one on stdlib).")
    if kind != "causal":
        return encoder_calibration(texts, tokenizer, samples=samples, max_length=seq_len,
                                   seed=seed, batch_size=batch_size)
    config = getattr(model, "config", None)
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if positions is not None and seq_len > positions:
        raise PrunusError(f"--seq-len {seq_len} is longer than the model's {positions} positions; "
                          f"use --seq-len <= {positions}.")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise PrunusError(f"--tokenizer has {len(tokenizer)} tokens, more than the model's "
                          f"vocabulary of {vocab}; use the model's own tokenizer.")
    split = types.SimpleNamespace(ids=np.arange(len(texts)), texts=list(texts))
    try:
        return text_calibration(split, tokenizer, samples=samples, context_length=seq_len,
                                seed=seed, batch_size=batch_size)
    except PrunusError as exc:
        if "shorter than one sequence" in str(exc):
            raise PrunusError(f"--calibration {source!r} gives fewer tokens than one sequence of "
                              f"--seq-len {seq_len}; give more text or lower --seq-len.") from None
        raise
