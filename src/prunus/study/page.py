"""The study report's HTML: the page from ``templates/report.html`` (inline CSS, the guide to
reading it and a small sortable-table script; nothing fetched from the network) filled with the
answer, the verdicts, each setting's figures and tables, the score tables and the failed runs.
Every string that came from the user (names, labels, targets, errors) is HTML-escaped here.
"""

from __future__ import annotations

import functools
import html
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

from prunus.study.figures import figures
from prunus.study.formatting import interval, is_fraction, metric_name, pct, pp, ratio_text
from prunus.study.stats import ArmSummary, Comparison, Estimate
from prunus.study.verdicts import verdict_word, wins_text

if TYPE_CHECKING:
    from prunus.study.schema import StudyConfig


@functools.cache
def page_template() -> Template:
    """The page skeleton shipped with the package (``$title``, ``$top``, ``$targets``,
    ``$sections``)."""
    path = resources.files("prunus.study").joinpath("templates", "report.html")
    return Template(path.read_text(encoding="utf-8"))


def render(config: StudyConfig, rows: Sequence[dict], summaries: list[ArmSummary], verdicts: list[str],
           answers: list[str], score_metas: dict[str, dict], versions: dict[str, str],
           planned: int | None = None) -> str:
    """The whole HTML page as a string (``planned``: the grid's run count, when known)."""
    e = html.escape
    settings = list(dict.fromkeys(s.setting for s in summaries))
    finals = [r for r in rows if r["final"]]
    failed = [r for r in finals if r["status"] != "ok"]
    by_setting: dict[str, list[tuple[ArmSummary, str]]] = defaultdict(list)
    for s, line in zip(summaries, verdicts):
        by_setting[s.setting].append((s, line))
    top = header(config, finals, failed, settings, versions, planned)
    top.append("<h2>Answer</h2><ul class=answer>")
    top += [f"<li>{e(line)}</li>" for line in answers]
    top.append("</ul>")
    top.append("<h2>Verdicts</h2>")
    for setting in settings:
        if len(settings) > 1:
            top.append(f"<h3>{e(setting)}</h3>")
        top.append("<ul class=verdicts>")
        for s, line in by_setting[setting]:
            cls = " class=failed" if s.failures else ""
            top.append(f"<li{cls}>{e(line)}</li>")
        top.append("</ul>")
    sections = []
    for setting in settings:
        if len(settings) > 1:
            sections.append(f"<h2>{e(setting)}</h2>")
        sections += setting_section([s for s, _ in by_setting[setting]],
                                    [r for r in rows if r["setting"] == setting])
    sections += ["<h2>Score tables</h2>", score_table(score_metas),
                 "<h2>Failed runs</h2>", failed_table(failed),
                 "<h2>All runs</h2><details><summary>final row of every run</summary>",
                 runs_table(finals), "</details>"]
    return page_template().substitute(
        title=e(f"prunus study: {config.name}"), top="\n".join(top),
        targets=e(", ".join(map(str, config.targets))), sections="\n".join(sections))


def header(config: StudyConfig, finals: list[dict], failed: list[dict], settings: list[str],
           versions: dict[str, str], planned: int | None) -> list[str]:
    """The title, one line of what the study ran (with the package versions), and a warning
    when fewer runs finished than the grid planned."""
    e = html.escape
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>Study {e(config.name)}</h1>"]
    parts.append(
        f"<p class=meta>{len(finals)} runs ({len(failed)} failed) · seeds "
        f"{e(', '.join(map(str, config.seeds)))} · {e(', '.join(settings))} · "
        + (f"{config.train.epochs} epochs · " if config.datasets else "")
        + f"built {stamp} · "
        + " · ".join(f"{e(k)} {e(str(v))}" for k, v in versions.items()) + "</p>"
    )
    if planned is not None and len(finals) < planned:
        parts.append(f"<p class=failed><b>This study is incomplete: {len(finals)} of {planned} "
                     "runs finished.</b> Verdicts below use only those; resume it with "
                     "<code>prunus study CONFIG --out DIR --resume</code>.</p>")
    return parts


def setting_section(arms: list[ArmSummary], rows: list[dict]) -> list[str]:
    """One setting's figures, summary table, metric table (retrieval or language-model
    settings) and time-to-target table."""
    e = html.escape
    parts = ["<h2>Figures</h2><div class=figs>"]
    if any(r["status"] == "ok" for r in rows):
        for title, image in figures(arms, rows):
            parts.append(f"<figure><img alt=\"{e(title)}\" src=\"data:image/png;base64,"
                         f"{image}\"><figcaption>{e(title)}</figcaption></figure>")
    else:
        parts.append("<p>No figures: no run of this setting finished (see Failed runs).</p>")
    parts.append("</div>")
    parts.append("<h2>Summary</h2>")
    parts.append(summary_table(arms))
    if arms and arms[0].metric != "accuracy" and is_fraction(arms[0].metric):
        parts.append("<h2>Retrieval metrics and negatives</h2>")
        parts.append(retrieval_table(arms))
    elif arms and not is_fraction(arms[0].metric):
        parts.append("<h2>Language-model metrics</h2>")
        parts.append(lm_table(arms))
    parts.append(f"<h2>Time to target {e(metric_name(arms[0].metric if arms else 'accuracy'))}</h2>")
    parts.append(target_table(arms))
    return parts
def summary_table(arms: list[ArmSummary]) -> str:
    """One row per arm: keep/sparsity, seeds, the metric with its CI, each comparison (difference, CI,
    verdict), wins vs random, cost ratios (headline and amortised), examples, FLOPs, frontier."""
    metric = metric_name(arms[0].metric) if arms else "accuracy"
    retrieval = bool(arms) and arms[0].metric != "accuracy"
    shown = arms[0].metric if arms else "accuracy"
    keeps = not retrieval and any(s.data_kind not in ("full", "negatives") for s in arms)
    sparsities = not retrieval and any(s.weight_policy != "dense" for s in arms)
    head = ["policy"] + (["keep"] if keeps else []) + (["sparsity"] if sparsities else [])
    head += ["seeds", metric, "95% CI", "Δ vs full", "95% CI", "verdict"]
    if not retrieval:
        head += ["Δ vs same compute", "95% CI", "verdict"]
    head += ["Δ vs random", "95% CI", "verdict", "wins vs random", "cost s",
             "× full cost [95% CI]", "× full cost, score tables amortised"]
    if not retrieval:
        head += ["× full examples backpropagated", "× full examples forwarded"]
    head += ["× full FLOPs", "on frontier"]
    body = []
    for s in arms:
        wins = wins_text(s.wins_vs_random).removeprefix("better in ")
        row = [text(s.policy)]
        if keeps:
            row.append(num(s.keep, f"{100 * s.keep:g}%"))
        if sparsities:
            row.append(num(s.sparsity, f"{100 * s.sparsity:g}%"))
        row += [
            num(len(s.seeds), f"{len(s.seeds)}" + (f" ({len(s.failures)} failed)" if s.failures else "")),
            num(s.accuracy.mean, pct(s.accuracy.mean, shown)),
            text(interval(s.accuracy, pct_bounds=True, metric=shown)),
            *comparison_cells(s.comparison("full"), shown),
        ]
        if not retrieval:
            row += comparison_cells(s.comparison("compute"), shown)
        row += [*comparison_cells(s.comparison("random"), shown), text(wins),
                num(s.cost_seconds.mean, fmt(s.cost_seconds.mean, ".1f")),
                ratio_cell(s.time_ratio), ratio_cell(s.time_ratio_amortised)]
        if not retrieval:
            row += [ratio_cell(s.backpropagated, bare=True), ratio_cell(s.forwarded, bare=True)]
        row += [ratio_cell(s.flops_ratio, " (theoretical)" if s.flops_theoretical else ""),
                text("yes" if s.on_frontier else "")]
        body.append(row)
    return table(head, body)


def comparison_cells(c: Comparison | None, metric: str = "accuracy") -> list[str]:
    """Difference, its 95% CI and the verdict word of one comparison (blank cells if none)."""
    if c is None:
        return [text(""), text(""), text("")]
    word = verdict_word(c).split(" (")[0]
    return [num(c.difference.mean, pp(c.difference.mean, metric)),
            text(interval(c.difference, metric=metric)), text(word)]


LM_COLUMNS = [("general perplexity", "general perplexity", True),
              ("selected tokens", "selected tokens", False),
              ("tokens with gradient", "tokens with gradient", False)]


def lm_table(arms: list[ArmSummary]) -> str:
    """General held-out perplexity beside the target's, and what each arm trained on."""
    return extra_table(arms, LM_COLUMNS, ",.0f") + (
        "<p>Every arm trains the same model for the same number of tokens; a selection "
        "holds about its keep share of the pool's tokens and is revisited as the budget needs. "
        "<em>General perplexity</em> is on the pool's held-out modules: what a targeted "
        "selection gives up elsewhere. Scoring (auxiliary models trained, pool forwarded) is "
        "charged in full to every run of the arm.</p>")


RETRIEVAL_COLUMNS = [
    ("ndcg@10", "nDCG@10", True), ("mrr@10", "MRR@10", True), ("recall@1", "Recall@1", True),
    ("recall@10", "Recall@10", True), ("negatives_per_pair", "negatives per pair", False),
    ("skipped_by_margin", "skipped by margin", False), ("guide_flagged", "guide flagged", False),
    ("guide_flagged_true_duplicates", "of which true duplicates", False),
    ("dropped", "dropped", False), ("masked_per_anchor", "in-batch masked per anchor", False),
]


def retrieval_table(arms: list[ArmSummary]) -> str:
    """Every retrieval metric (mean and 95% CI over seeds) and the negatives statistics."""
    return extra_table(arms, RETRIEVAL_COLUMNS, ",.2f") + (
        "<p>Metrics on the test queries, with every known duplicate of a positive counted as "
        "relevant. Negatives statistics are per training set, averaged over seeds: "
        "<em>guide flagged</em> mined negatives the pre-trained guide scores above the "
        "query's positive, <em>of which true duplicates</em> those that are known duplicates "
        "of the positive, <em>dropped</em> negatives removed before training.</p>")


def extra_table(arms: list[ArmSummary], columns: list[tuple[str, str, bool]],
                count_spec: str) -> str:
    """One row per arm of the runs' other metrics (``ArmSummary.extra``): ``(name, label,
    with an interval)`` columns, each with its 95% CI, counts formatted with ``count_spec``."""
    head = ["policy", "seeds"]
    for _, label, with_ci in columns:
        head += [label, "95% CI"] if with_ci else [label]
    body = []
    for s in arms:
        cells = [text(s.policy), num(len(s.seeds), str(len(s.seeds)))]
        for name, _, with_ci in columns:
            e = s.extra.get(name)
            if e is None:
                cells += [num(None, ""), text("")] if with_ci else [num(None, "")]
            elif with_ci:
                cells += [num(e.mean, pct(e.mean, name)),
                          text(interval(e, pct_bounds=True, metric=name))]
            else:
                cells.append(num(e.mean, format(e.mean, count_spec)))
        body.append(cells)
    return table(head, body)


def target_table(arms: list[ArmSummary]) -> str:
    """Time to each target; a target no arm reaches is one line, not a row per arm."""
    raw = arms[0].metric if arms else "accuracy"
    metric = metric_name(raw)
    head = ["policy", "target", metric, "reached", "seconds", "95% CI", "GFLOPs", "95% CI",
            "× full-data seconds [95% CI]"]
    body, unreached = [], []
    labels = [t.target for t in arms[0].targets] if arms else []
    for i, label in enumerate(labels):
        results = [(s, s.targets[i]) for s in arms if len(s.targets) > i]
        if not any(t.reached for _, t in results):
            t = results[0][1]
            unreached.append(f"{label} ({pct(t.accuracy, raw)})")
            continue
        for s, t in results:
            body.append([
                text(s.policy), text(t.target), num(t.accuracy, pct(t.accuracy, raw)),
                num(t.reached, f"{t.reached}/{t.seeds}" if t.reached else f"not reached (0/{t.seeds})"),
                num(t.seconds.mean, fmt(t.seconds.mean, ".1f")), text(ci_plain(t.seconds, 1)),
                num(t.flops.mean, fmt(t.flops.mean / 1e9, ".2f")), text(ci_plain(t.flops, 1e-9, ".2f")),
                ratio_cell(t.ratio_to_full),
            ])
    out = table(head, body) if body else ""
    if unreached:
        out += (f"<p>Not reached by any arm in any seed: {html.escape(', '.join(unreached))}."
                "</p>")
    return out + (
        "<p>Seeds that never reach a target are <em>censored</em>: they ran their whole budget "
        "without getting there, so their time is only known to exceed their total cost. Times "
        "and intervals are over the seeds that reached it (<em>reached</em> says how many); "
        "the ratio to full data pairs seeds where both reached it. Every arm is evaluated at "
        "the same compute cadence (every fixed number of examples backpropagated), so arms are "
        "checked equally often per unit of compute.</p>")


def score_table(metas: dict[str, dict]) -> str:
    """Each score table: how it was computed, what it cost, and how that is charged to runs."""
    if not metas:
        return "<p>No score tables: this study has no static data policy.</p>"
    head = ["table", "method", "proxy model", "proxy epochs", "of a run of", "proxy seeds",
            "wall s", "GFLOPs", "used by runs", "charged per run, s", "amortised per run, s"]
    body = []
    for key, m in metas.items():
        shared = int(m.get("shared_by") or 1)
        body.append([
            text(key), text(str(m.get("method"))), text(str(m.get("model"))),
            num(m.get("epochs"), str(m.get("epochs"))),
            num(m.get("full_epochs"), str(m.get("full_epochs"))),
            text(", ".join(map(str, m.get("seeds", [])))),
            num(m["seconds"], f"{m['seconds']:.1f}"), num(m["flops"], f"{m['flops'] / 1e9:.2f}"),
            num(shared, str(shared)), num(m["seconds"], f"{m['seconds']:.2f}"),
            num(m["seconds"] / shared, f"{m['seconds'] / shared:.2f}"),
        ])
    given = [f"<code>{html.escape(key)}</code> ({html.escape(str(m['table']))})"
             for key, m in metas.items()
             if m.get("table")]
    note = ("<p>Precomputed tables, named by a policy's <code>scores</code>: "
            f"{', '.join(given)}. This study did not compute them: the cost charged is the one "
            "recorded in each table's metadata when it was made.</p>") if given else ""
    return table(head, body) + note + (
        "<p>Each score table is computed once and reused by every run that selects from it. "
        "Its wall time (measured around the whole scoring call: proxy training, its "
        "evaluations and the scoring passes) and FLOPs are charged <em>in full</em> to every "
        "run that uses it, because that is what a user running that arm once pays (a run's "
        "<code>scoring_seconds</code>). The amortised figure, the table's cost split equally "
        "among the runs of this study that share it, is shown beside it as a secondary "
        "column.</p>")


def failed_table(failed: list[dict]) -> str:
    """Each failed run with the epoch it reached and its reason."""
    if not failed:
        return "<p>None.</p>"
    body = [[text(r["policy"]), num(r["seed"], str(r["seed"])), num(r["epoch"], str(r["epoch"])),
             text(r["error"] or "")] for r in failed]
    return table(["policy", "seed", "epoch reached", "reason"], body)


def runs_table(finals: list[dict]) -> str:
    """The final row of every run: accuracy, each timing, examples, FLOPs and sparsity."""
    head = ["run", "policy", "seed", "status", "accuracy", "train s", "eval s", "scoring s",
            "selection s", "cost s", "examples forwarded", "examples backpropagated", "GFLOPs",
            "train examples", "sparsity"]
    body = [[
        text(r["run_id"]), text(r["policy"]), num(r["seed"], str(r["seed"])), text(r["status"]),
        num(r["accuracy"], pct(r["accuracy"], r.get("metric") or "accuracy")),
        *[num(r[c], fmt(r[c], ".2f")) for c in ("train_seconds", "eval_seconds",
                                                "scoring_seconds", "selection_seconds",
                                                "cost_seconds")],
        num(r["examples_forwarded"], f"{r['examples_forwarded']:,}"),
        num(r["examples_backpropagated"], f"{r['examples_backpropagated']:,}"),
        num(r["flops"], fmt(r["flops"] / 1e9, ".2f")),
        num(r["train_examples"], f"{r['train_examples']:,}"),
        num(r["achieved_sparsity"], f"{100 * r['achieved_sparsity']:.1f}%"),
    ] for r in finals]
    return table(head, body)


# -- cells ----------------------------------------------------------------------------------


def table(head: list[str], body: list[list[str]]) -> str:
    """A sortable table from escaped header labels and rows of cells made by ``text``/``num``."""
    cols = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join("<tr>" + "".join(cells) + "</tr>" for cells in body)
    return f"<table class=sortable><thead><tr>{cols}</tr></thead><tbody>{rows}</tbody></table>"


def text(value: str) -> str:
    """A text cell, escaped, sorted as text."""
    return f"<td>{html.escape(str(value))}</td>"


def num(value: Any, shown: str) -> str:
    """A number cell: ``shown`` escaped, sorted by ``value`` (missing or NaN sorts first)."""
    key = "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
    return f"<td class=n data-sort=\"{key}\">{html.escape(shown)}</td>"


def ratio_cell(e: Estimate, suffix: str = "", bare: bool = False) -> str:
    """A ratio cell, ``0.62× [0.58, 0.66]`` (``bare``: without the interval); blank if NaN."""
    if math.isnan(e.mean):
        return num(None, "")
    shown = (f"{e.mean:.2f}×" if bare else ratio_text(e)) + suffix
    return num(e.mean, shown)


def ci_plain(e: Estimate, scale: float, spec: str = ".1f") -> str:
    """``[low, high]`` times ``scale``; ``n/a`` below two seeds."""
    if not e.has_interval:
        return "n/a" if e.n < 2 else ""
    return f"[{format(e.low * scale, spec)}, {format(e.high * scale, spec)}]"


def fmt(value: Any, spec: str) -> str:
    """``format(value, spec)``, blank for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec)
