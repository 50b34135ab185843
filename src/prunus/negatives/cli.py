"""Commands of the negatives family: ``prunus negatives mine`` and ``prunus negatives eval``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from prunus.errors import PrunusError
from prunus.files import check_writable

negatives_app = typer.Typer(
    help="Hard negatives for embedding training: mine them, evaluate retrieval.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``negatives`` command group to the ``prunus`` command (once)."""
    if getattr(app, "_prunus_negatives_commands", False):
        return
    app.add_typer(negatives_app, name="negatives")
    app._prunus_negatives_commands = True


@negatives_app.command("mine")
def mine_command(
    out: Path = typer.Option(..., "--out", help="where to write the mined rows (.parquet)"),
    dataset: str = typer.Option("pycode", help="'pycode' or a .parquet file with query, positive columns"),
    corpus: Path | None = typer.Option(None, help="with a file dataset: a .parquet file whose 'text' column adds documents"),
    split: str = typer.Option("train", help="pycode split whose queries are mined"),
    queries: int | None = typer.Option(None, min=1, help="mine this many queries (a seeded sample)"),
    corpus_size: int | None = typer.Option(None, min=2, help="pycode: documents of the split's modules searched (positives included)"),
    model: str = typer.Option("minilm", help="'minilm' or a saved sentence-transformers directory"),
    k: int = typer.Option(3, help="negatives per (query, positive)"),
    rank_range: str = typer.Option("0:", help="LO:HI ranks searched after removing positives (HI optional)"),
    margin: float | None = typer.Option(None, help="keep negatives below the positive's score by this margin"),
    margin_kind: str = typer.Option("absolute", help="absolute or relative"),
    sampling: str = typer.Option("top", help="top or random"),
    seed: int = typer.Option(0, min=0, help="seed of the query sample and of random sampling"),
    filter_false_negatives: bool = typer.Option(
        False, "--filter", help="drop negatives the model (as guide) or pycode's duplicate groups mark as positives"
    ),
    max_seq_length: int | None = typer.Option(None, help="truncate texts to this many tokens"),
    batch_size: int = typer.Option(32, min=1, help="texts per forward pass"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="dataset name=value"),
    as_json: bool = typer.Option(False, "--json", help="print the statistics as JSON"),
) -> None:
    """Mine hard negatives and write (query, positive, negative_1..k) rows to Parquet."""
    import numpy as np

    from prunus.cli import console, parse_options
    from prunus.negatives.filtering import filter_negatives
    from prunus.negatives.mining import check_settings, mine
    from prunus.negatives.model import load_model

    if not str(out).endswith(".parquet"):
        raise PrunusError(f"--out must be a .parquet path (got {str(out)!r}).")
    check_writable(out)
    span = parse_rank_range(rank_range)
    check_settings(k, span, margin, margin_kind, sampling)
    texts, docs, positives, groups = _mining_inputs(
        dataset, corpus, split, queries, corpus_size, seed, parse_options(option)
    )
    encoder = load_model(model, max_seq_length=max_seq_length)
    mined = mine(
        texts, docs, positives, encoder, k=k, rank_range=span, margin=margin,
        margin_kind=margin_kind, sampling=sampling, seed=seed, batch_size=batch_size,
    )
    if filter_false_negatives:
        aligned = None
        if groups is not None:
            row_of = {text: i for i, text in enumerate(docs)}
            aligned = np.asarray([groups[row_of[t]] if t in row_of else -1 for t in mined.corpus])
        mined, _ = filter_negatives(mined, guide=encoder, duplicate_groups=aligned)
    mined.to_parquet(out)
    stats = {**mined.stats, "out": str(out)}
    if as_json:
        print(json.dumps(stats, default=float))
        return
    table = Table("statistic", "value")
    for key, value in stats.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


@negatives_app.command("eval")
def eval_command(
    dataset: str = typer.Option("pycode", help="retrieval dataset"),
    split: str = typer.Option("test", help="split whose queries are evaluated (dev or test)"),
    model: str = typer.Option("minilm", help="'minilm' or a saved sentence-transformers directory"),
    queries: int | None = typer.Option(None, min=1, help="evaluate this many queries (a seeded sample)"),
    corpus_size: int | None = typer.Option(None, min=10, help="search this many documents (relevant ones included)"),
    policy: str | None = typer.Option(None, help="fine-tune under this negatives policy first (see NEGATIVE_POLICIES)"),
    setting: list[str] | None = typer.Option(None, "--set", "-s", help="policy setting name=value (e.g. train_pairs=256)"),
    seed: int = typer.Option(0, min=0, help="seed of the samples (and of training with --policy)"),
    max_seq_length: int | None = typer.Option(None, help="truncate texts to this many tokens"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="dataset name=value"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
) -> None:
    """Evaluate retrieval (nDCG@10, MRR@10, Recall@1/10/100); duplicates count as relevant."""
    from prunus.cli import console, parse_options

    if policy is not None:
        from prunus.negatives import NEGATIVE_POLICIES
        from prunus.negatives.policy import run_policy

        if policy not in NEGATIVE_POLICIES:
            from prunus.errors import choice_error

            raise choice_error("--policy", policy, NEGATIVE_POLICIES)
        config = {
            "policy": policy, "model": model, "eval_split": split, "eval_queries": queries,
            "eval_corpus": corpus_size, "dataset": dataset,
            "dataset_options": parse_options(option), "data_seed": seed,
        }
        if max_seq_length is not None:
            config["max_seq_length"] = max_seq_length
        config.update(parse_options(setting, "--set"))
        result = run_policy(config, seed=seed)
    else:
        result = _evaluate_model(
            dataset, split, model, queries, corpus_size, seed, max_seq_length, parse_options(option)
        )
    if as_json:
        print(json.dumps(result, default=float))
        return
    table = Table("metric", "value")
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def parse_rank_range(text: str) -> tuple[int, int | None]:
    """``"5:50"`` -> (5, 50); ``"0:"`` -> (0, None)."""
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(lo or 0), (int(hi) if hi.strip() else None)
    except ValueError:
        raise PrunusError(f"--rank-range must look like LO:HI or LO: (got {text!r}).") from None


def _load_retrieval(dataset: str, options: dict):
    from prunus.datasets import load
    from prunus.datasets.retrieval import RetrievalDataset

    data = load(dataset, **options)
    if not isinstance(data, RetrievalDataset):
        raise PrunusError(f"--dataset must be a retrieval dataset such as 'pycode' (got {dataset!r}).")
    return data


def _mining_inputs(dataset, corpus_file, split, n_queries, corpus_size, seed, options):
    """(queries, corpus, positives, duplicate groups per corpus text or None)."""
    import numpy as np

    from prunus.negatives.policy import fill_rows, take_rows

    if dataset.endswith(".parquet"):
        import pyarrow.parquet as pq

        path = Path(dataset)
        if not path.is_file():
            raise PrunusError(f"--dataset file {dataset!r} does not exist.")
        table = pq.read_table(path).to_pydict()
        if "query" not in table or "positive" not in table:
            raise PrunusError(f"--dataset file must have 'query' and 'positive' columns (has {sorted(table)}).")
        rows = take_rows(len(table["query"]), n_queries, np.random.default_rng(seed))
        docs = list(table["positive"])
        if corpus_file is not None:
            extra = pq.read_table(corpus_file).to_pydict()
            if "text" not in extra:
                raise PrunusError("--corpus file must have a 'text' column.")
            docs += list(extra["text"])
        return [table["query"][i] for i in rows], docs, [table["positive"][i] for i in rows], None
    data = _load_retrieval(dataset, options)
    part = data.split(split)
    rng = np.random.default_rng(seed)
    part = part.take(take_rows(len(part), n_queries, rng))
    positives = data.rows(part.positive_ids)
    pool = fill_rows(positives, data.corpus_rows(split), corpus_size, rng)
    local = {int(r): i for i, r in enumerate(pool)}
    docs = [data.corpus[r] for r in pool]
    return part.queries, docs, [local[int(r)] for r in positives], data.duplicate_group[pool]


def _evaluate_model(dataset, split, model_name, n_queries, corpus_size, seed, max_seq_length, options):
    import numpy as np

    from prunus.negatives.metrics import evaluate
    from prunus.negatives.model import load_model
    from prunus.negatives.policy import fill_rows, take_rows

    data = _load_retrieval(dataset, options)
    part = data.split(split)
    rng = np.random.default_rng(seed)
    rows = take_rows(len(part), n_queries, rng)
    corpus_rows = None
    if corpus_size is not None and corpus_size < len(data):
        relevant = data.rows(np.concatenate(data.relevant_ids(part.positive_ids[rows])))
        corpus_rows = fill_rows(relevant, np.arange(len(data)), corpus_size, rng)
    model = load_model(model_name, max_seq_length=max_seq_length)
    return evaluate(model, data, split, query_rows=rows, corpus_rows=corpus_rows)
