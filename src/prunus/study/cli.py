"""Commands ``prunus study``, ``prunus report``, ``prunus query`` and ``prunus demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

DEMO_CONFIG = Path("examples") / "quickstart.toml"
DEMO_OUT = Path("studies") / "quickstart"


def register(app: typer.Typer) -> None:
    """Add the study commands to the ``prunus`` app."""
    app.command("study")(study)
    app.command("report")(report)
    app.command("recommend")(recommend)
    app.command("query")(query)
    app.command("demo")(demo)


def study(
    config: Annotated[Path, typer.Argument(help="study TOML file")],
    out: Annotated[Path | None, typer.Option(help="study directory (default: studies/<name>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the study in --out, skipping finished runs")] = False,
    executor: Annotated[str | None, typer.Option(help="local or ray (default: the config's)")] = None,
    workers: Annotated[int | None, typer.Option(help="runs at once (local: a process pool)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
    address: Annotated[str | None, typer.Option(
        help="ray: the cluster's host:port (default: the config's ray_address, else RAY_ADDRESS, "
             "else Ray in this process)")] = None,
    cpus_per_run: Annotated[float | None, typer.Option(help="ray: CPUs each run requests (default 1)")] = None,
    gpus_per_run: Annotated[float | None, typer.Option(help="ray: GPUs each run requests (default 0)")] = None,
) -> None:
    """Run a study: every policy against full data and random baselines, over seeds; writes
    runs.parquet, scores/ and report.html to --out, then prints the verdicts."""
    from prunus.study import load_config

    cfg = load_config(config)
    out = out or Path("studies") / safe_name(cfg.name)
    cluster = {"address": address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run}
    again = "".join(f" --{k.replace('_', '-')} {shell(str(v))}" for k, v in
                    {"executor": executor, **cluster}.items() if v is not None)
    run_and_print(cfg, out, resume, executor, workers, quiet,
                  resume_command=f"prunus study {shell(config)} --out {shell(out)} --resume{again}",
                  **cluster)


def report(
    study_dir: Annotated[Path, typer.Argument(help="study directory")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: DIR/report.html)")] = None,
) -> None:
    """Rebuild a study's report.html from its store and print the verdicts."""
    from prunus.cli import console
    from prunus.errors import PrunusError
    from prunus.study import StudyStore, write_report

    store = StudyStore(study_dir)
    if not store.exists():
        raise PrunusError(f"{str(study_dir)!r} is not a study directory (no config.toml).")
    built = write_report(store, out)
    print_verdicts(console, built.answers, built.verdicts)
    console.print(f"report: {built.path}", highlight=False, soft_wrap=True)


def recommend(
    study_dir: Annotated[Path, typer.Argument(help="study directory")],
    target: Annotated[str | None, typer.Option(
        help="margin below full data, as 'full-<N>pp' (default: the study's first such target, "
             "else full-1pp)")] = None,
) -> None:
    """Print the cheapest arm not worse than full data by more than the margin (a
    non-inferiority test with Holm's correction, ≥ 5 paired seeds), and the runner-up."""
    from prunus.cli import console
    from prunus.errors import PrunusError
    from prunus.study import StudyStore
    from prunus.study.report import load_rows
    from prunus.study.schema import TARGET_PATTERN
    from prunus.study.stats import recommend as choose
    from prunus.study.stats import summarize
    from prunus.study.verdicts import answer, study_margin

    if target is not None and not TARGET_PATTERN.match(target):
        raise PrunusError(f"--target must look like 'full-1pp' or 'full-0.5pp' (got {target!r}).")
    store = StudyStore(study_dir)
    if not store.exists():
        raise PrunusError(f"{str(study_dir)!r} is not a study directory (no config.toml).")
    config = store.read_config()
    margin = study_margin([target] if target else config.targets)
    summaries = summarize(load_rows(store), config.targets)
    for setting in dict.fromkeys(s.setting for s in summaries):
        console.print(answer(choose(summaries, setting, margin)), highlight=False,
                      soft_wrap=True)


def query(
    study_dir: Annotated[Path, typer.Argument(help="study directory")],
    sql: Annotated[str, typer.Argument(help="SQL over the views runs and scores, e.g. "
                                       "\"SELECT policy, avg(accuracy) FROM runs WHERE final "
                                       "GROUP BY 1\"")],
    as_json: Annotated[bool, typer.Option("--json", help="print rows as JSON lines")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print rows as CSV")] = False,
) -> None:
    """Run DuckDB SQL over a study's Parquet files (views: runs, scores)."""
    from rich.table import Table

    from prunus.cli import console
    from prunus.study import query as run_query

    result = run_query(study_dir, sql)
    if as_json:
        for row in result.to_pylist():
            print(json.dumps(row, default=str))
        return
    if as_csv:
        import sys

        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
        return
    table = Table(*result.column_names)
    for row in result.to_pylist():
        table.add_row(*(fmt_cell(v) for v in row.values()))
    console.print(table)


def demo(
    out: Annotated[Path, typer.Option(help="study directory")] = DEMO_OUT,
    workers: Annotated[int | None, typer.Option(help="runs at once (default: the config's)")] = None,
) -> None:
    """Run the quickstart study (examples/quickstart.toml): full data vs same compute vs
    random vs RS2 vs EL2N on mnist1d, 5 seeds; resumes if it was run before with the same
    config."""
    from prunus.errors import PrunusError
    from prunus.study import load_config

    path = find_demo_config()
    if path is None:
        raise PrunusError(
            f"{DEMO_CONFIG} was not found here; run from the repository root, or use "
            "'prunus study CONFIG'."
        )
    run_and_print(load_config(path), out, True, None, workers, False,
                  resume_command=f"prunus demo --out {shell(out)}")


def run_and_print(cfg, out: Path, resume: bool, executor: str | None, workers: int | None,
                  quiet: bool, resume_command: str = "", **cluster) -> None:
    """Run the study and print its answer; exit 1 when it answers nothing (every run, or
    every score table, failed) and 130 when interrupted (saying how to resume)."""
    from rich.markup import escape

    from prunus.cli import console, err_console
    from prunus.study import run_study
    from prunus.study.harness import StudyInterrupted

    try:
        result = run_study(cfg, out, resume=resume, executor=executor, workers=workers,
                           progress=not quiet, console=err_console, **cluster)
    except StudyInterrupted as stop:
        where = (f"; the report ({stop.report}) covers only those" if stop.report else "")
        err_console.print(
            f"[bold yellow]interrupted:[/] {stop.finished} of {stop.runs} runs finished and "
            f"are stored{escape(where)}. Resume with: {escape(resume_command)}",
            highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    print_verdicts(console, result.answers, result.verdicts)
    note = f"{result.ran} of {result.runs} runs ran now"
    if result.failed:
        note += f", {result.failed} failed (see the report)"
    console.print(f"{note}; {result.seconds:.0f} s.", highlight=False)
    console.print(f"report: {result.report}", highlight=False, soft_wrap=True)
    failure = result.failure_sentence()
    if failure:
        err_console.print(f"[bold red]error:[/] {escape(failure)}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(1)


def shell(path: Path | str) -> str:
    """A path as one shell word."""
    import shlex

    return shlex.quote(str(path))


def print_verdicts(console, answers: list[str], verdicts: list[str]) -> None:
    from rich.markup import escape

    for line in answers:
        console.print(f"[bold]{escape(line)}[/]", highlight=False, soft_wrap=True)
    for line in verdicts:
        console.print(f"• {escape(line)}", highlight=False, soft_wrap=True)


def find_demo_config() -> Path | None:
    """examples/quickstart.toml in the working directory or in the source checkout."""
    import prunus

    candidates = [Path.cwd() / DEMO_CONFIG, Path(prunus.__file__).resolve().parents[2] / DEMO_CONFIG]
    return next((p for p in candidates if p.is_file()), None)


def safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-")
    return cleaned or "study"


def fmt_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)
