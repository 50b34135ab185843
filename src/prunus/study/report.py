"""The study report: one self-contained HTML file (inline PNG figures, inline CSS and a small
sortable-table script; nothing fetched from the network), rebuilt from the store at any time.

It opens with one plain-language verdict per arm, e.g.
``EL2N-hardest, keep 50%: −0.1pp vs full [−0.6, +0.4], +1.2pp vs random [+0.4, +2.0]
(better in 3/3 seeds), 0.62× full-data time including scoring``, then figures (accuracy vs keep
fraction and vs sparsity with CI bands, accuracy vs cost, time to target, Pareto frontier),
sortable tables, the score tables and what they cost, and failed runs with their reasons.
Every string that came from the user is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prunus.study.stats import (
    BEATS,
    MAX_SEEDS_SUGGESTED,
    MIN_SEEDS,
    WORSE,
    ArmSummary,
    Comparison,
    Estimate,
    Recommendation,
    WinRate,
    higher_is_better,
    recommend,
    summarize,
)
from prunus.study.store import StudyStore, atomic_write_text

MINUS = "\u2212"


@dataclass
class Report:
    path: Any
    verdicts: list[str]
    summaries: list[ArmSummary]
    answers: list[str] = field(default_factory=list)


def write_report(store: StudyStore, path=None) -> Report:
    """Build ``report.html`` from the store (atomically) and return its answer and verdicts."""
    config = store.read_config()
    rows = load_rows(store)
    summaries = summarize(rows, config.targets)
    verdicts = [verdict(s) for s in summaries]
    margin = study_margin(config.targets)
    answers = []
    for setting in dict.fromkeys(s.setting for s in summaries):
        members = [s for s in summaries if s.setting == setting]
        if higher_is_better(members[0].metric):
            answers.append(answer(recommend(summaries, setting, margin)))
        else:
            answers.append(selection_answer(members))
    page = render(config, rows, summaries, verdicts, answers, store.score_metas(),
                  store.read_versions(), store.planned_runs())
    path = path or store.report_path
    atomic_write_text(path, page)
    return Report(path, verdicts, summaries, answers)


def load_rows(store: StudyStore) -> list[dict[str, Any]]:
    """Every row of the study, in run and evaluation order (DuckDB over the Parquet store)."""
    from prunus.study.sql import query

    return query(store.root, "SELECT * FROM runs ORDER BY run_index, step, end_of_epoch").to_pylist()


# -- the answer -----------------------------------------------------------------------------


DEFAULT_MARGIN = 0.01


def study_margin(targets: Sequence[float | str]) -> float:
    """The non-inferiority margin: the study's first ``full-<N>pp`` target, else 1pp."""
    from prunus.study.config import TARGET_PATTERN

    for target in targets:
        match = TARGET_PATTERN.match(str(target))
        if match:
            return float(match.group(1)) / 100
    return DEFAULT_MARGIN


def answer(r: Recommendation) -> str:
    """The report's first sentence for one setting: which arm to use, or that none pays."""
    margin = pp(r.margin).removeprefix("+")
    where = f"{r.setting}: " if r.setting else ""
    if r.full is None or not r.full.seeds:
        return f"{where}no answer: the full-data reference did not finish."
    if r.best is None:
        text = (f"{where}no arm is cheaper than full data at this margin ({margin}): none "
                f"is shown to be within {margin} of full data's {metric_name(r.full.metric)} "
                f"at a lower cost (non-inferiority test, {r.tested} arms, Holm-corrected)")
        if r.too_few_seeds:
            text += (f"; {len(r.too_few_seeds)} arm{'s' * (len(r.too_few_seeds) != 1)} "
                     f"had fewer than {MIN_SEEDS} paired seeds and cannot qualify")
        return text + "."
    best = r.best
    text = (f"{where}use {best.policy}: {ratio_text(best.time_ratio)} full data's cost "
            f"(everything paid once, score tables included), {pp(best.vs_full.mean)} vs full "
            f"data {interval(best.vs_full)}, not worse by more than {margin} "
            f"(non-inferiority test, {r.tested} arms, Holm-corrected).")
    if r.runner_up is not None:
        text += (f" Runner-up: {r.runner_up.policy}, {ratio_text(r.runner_up.time_ratio)} "
                 f"full data's cost, {pp(r.runner_up.vs_full.mean)} "
                 f"{interval(r.runner_up.vs_full)}.")
    else:
        text += " No other arm qualifies."
    return text


def selection_answer(members: list[ArmSummary]) -> str:
    """The first sentence for a setting compared at equal compute (a language-model study):
    the best selection that beats its random baseline, or that none is shown to."""
    setting = members[0].setting
    metric = members[0].metric
    name = metric_name(metric)
    full = next((s for s in members if s.is_full), None)
    if full is None or not full.seeds:
        return f"{setting}: no answer: the full-pool reference did not finish."
    chosen = [s for s in members if not s.baseline and s.seeds and s.comparison("random")]
    if not chosen:
        return f"{setting}: no selection policy finished a run to compare with random."
    winners = [s for s in chosen if s.comparison("random").verdict == BEATS]
    pool = winners or chosen
    best = min(pool, key=lambda s: s.accuracy.mean)
    vs_random = comparison_text(best.comparison("random"), best)
    vs_full = comparison_text(best.comparison("full"), best) if best.comparison("full") else ""
    head = (f"{setting}: use {best.policy}" if winners else
            f"{setting}: no selection is shown to beat random at the same tokens; the lowest "
            f"{name} is {best.policy}'s")
    return (f"{head}: {pct(best.accuracy.mean, metric)} "
            f"{interval(best.accuracy, pct_bounds=True, metric=metric)} {name} (lower is "
            f"better) over {len(best.seeds)} seeds, {vs_random}; {vs_full}; "
            f"{cost_phrase(best)}.")


def ratio_text(e: Estimate) -> str:
    if math.isnan(e.mean):
        return "n/a×"
    if e.has_interval:
        return f"{e.mean:.2f}× [{e.low:.2f}, {e.high:.2f}]"
    return f"{e.mean:.2f}×"


# -- verdicts -------------------------------------------------------------------------------


RIVAL_NAMES = {"full": "full", "compute": "same compute", "random": "random"}


def verdict(s: ArmSummary) -> str:
    """One plain-language line for an arm: each comparison with its interval and verdict word,
    then its cost and examples relative to full data."""
    seeds = len(s.seeds) + len(s.failures)
    if not s.seeds:
        reason = next(iter(s.failures.values()), "no run finished")
        return f"{s.policy}: failed in all {seeds} seeds ({reason})"
    if s.is_full:
        text = f"{s.policy}: {pct(s.accuracy.mean, s.metric)} " \
               f"{interval(s.accuracy, pct_bounds=True, metric=s.metric)} " \
               f"test {metric_name(s.metric)} over {len(s.seeds)} " \
               f"seed{'s' * (len(s.seeds) != 1)}, the reference"
        if len(s.seeds) < 2:
            text += " (one seed: no interval is possible)"
    else:
        parts = [comparison_text(c, s) for c in s.comparisons]
        parts.append(cost_phrase(s))
        text = f"{s.policy}: " + "; ".join(parts)
    if s.failures:
        reason = next(iter(s.failures.values()))
        text += f"; failed in {len(s.failures)} of {seeds} seeds ({reason})"
    return text


def comparison_text(c: Comparison, s: ArmSummary) -> str:
    """``+1.2pp vs random [+0.4, +2.0]: beats (Holm-corrected over 12 comparisons)``."""
    if c.kind == "full":
        rival = "dense" if s.data_kind == "full" else s.reference
        if s.metric != "accuracy":
            rival = s.reference
    elif c.kind == "compute":
        rival = "same compute"
    else:
        rival = c.rival if s.data_kind == "full" and s.weight_policy != "dense" else "random"
    head = (f"{pp(c.difference.mean, s.metric)} vs {rival} "
            f"{interval(c.difference, metric=s.metric)}")
    return f"{head}: {verdict_word(c)}"


def verdict_word(c: Comparison) -> str:
    d = c.difference
    if d.n < 2:
        return f"no interval with {d.n} paired seed{'s' * (d.n != 1)}"
    if c.verdict in (BEATS, WORSE):
        word = "beats" if c.verdict == BEATS else "worse"
        return f"{word} (Holm-corrected over {c.family} comparisons)"
    if d.n < MIN_SEEDS:
        text = f"inconclusive with {d.n} seeds"
    elif d.low > 0 or d.high < 0:
        text = f"inconclusive after Holm correction over {c.family} comparisons"
    else:
        text = "inconclusive"
    if c.needed is not None and c.needed > d.n:
        more = f"over {MAX_SEEDS_SUGGESTED}" if c.needed >= MAX_SEEDS_SUGGESTED else f"about {c.needed}"
        text += f"; {more} seeds would resolve this difference at this spread"
    elif c.needed is None and d.mean == 0:
        text += "; no difference observed"
    return text


def cost_phrase(s: ArmSummary) -> str:
    """Cost (headline: everything paid once) and examples, relative to full data."""
    if math.isnan(s.time_ratio.mean):
        return "cost n/a"
    reference = "full-data" if s.data_kind != "full" else "dense"
    if s.metric != "accuracy":
        reference = s.reference
    text = f"{ratio_text(s.time_ratio)} {reference} cost"
    if s.uses_scores:
        text += " with its score table paid in full"
        if s.score_shared_by > 1 and not math.isnan(s.time_ratio_amortised.mean):
            text += (f" ({s.time_ratio_amortised.mean:.2f}× amortised over the "
                     f"{s.score_shared_by} runs sharing it)")
    elif s.data_kind == "online":
        text += " including selection"
    elif s.data_kind == "negatives" and s.selection_seconds.mean > 0:
        text += " including mining"
    if s.metric == "accuracy" and not math.isnan(s.backpropagated.mean):
        text += (f"; {s.backpropagated.mean:.2f}× the examples backpropagated, "
                 f"{s.forwarded.mean:.2f}× forwarded")
    elif not is_fraction(s.metric) and not math.isnan(s.backpropagated.mean) \
            and abs(s.backpropagated.mean - 1) > 0.005:
        text += f"; {s.backpropagated.mean:.2f}× the tokens carrying gradient"
    if s.flops_theoretical and not math.isnan(s.flops_ratio.mean):
        text += f"; {s.flops_ratio.mean:.2f}× {reference} FLOPs (theoretical)"
    return text


def metric_name(metric: str) -> str:
    """``ndcg@10`` -> ``nDCG@10`` (how the report writes a metric)."""
    return {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10"}.get(metric, metric)


def is_fraction(metric: str) -> bool:
    """Accuracy and retrieval metrics are fractions (shown in % and pp); perplexity is not."""
    return higher_is_better(metric)


def unit_scale(metric: str) -> float:
    """What a metric is multiplied by to be shown: 100 for a fraction, else 1."""
    return 100.0 if is_fraction(metric) else 1.0


def pct(value: float, metric: str = "accuracy") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:.1f}%" if is_fraction(metric) else f"{value:.1f}"


def pp(value: float, metric: str = "accuracy") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    shown = f"{unit_scale(metric) * value:+.1f}"
    if shown == "-0.0":
        shown = "+0.0"  # a tiny negative mean rounds to zero: no sign to show
    return f"{shown}{'pp' if is_fraction(metric) else ''}".replace("-", MINUS)


def interval(e: Estimate, pct_bounds: bool = False, metric: str = "accuracy") -> str:
    if not e.has_interval:
        return f"[CI n/a: {e.n} seed{'s' * (e.n != 1)}]"
    if not is_fraction(metric):
        spec = ".1f" if pct_bounds else "+.1f"
        return f"[{e.low:{spec}}, {e.high:{spec}}]".replace("-", MINUS)
    if pct_bounds:  # a mean accuracy: a t-interval over few seeds may overshoot [0, 100]
        return f"[{100 * max(e.low, 0.0):.1f}, {100 * min(e.high, 1.0):.1f}]"
    return f"[{100 * e.low:+.1f}, {100 * e.high:+.1f}]".replace("-", MINUS)


def wins_text(w: WinRate | None) -> str:
    if w is None:
        return ""
    ties = f", {w.ties} tie{'s' * (w.ties != 1)}" if w.ties else ""
    return f"better in {w.wins}/{w.n} seeds{ties}"


# -- page -----------------------------------------------------------------------------------


def render(config, rows: Sequence[dict], summaries: list[ArmSummary], verdicts: list[str],
           answers: list[str], score_metas: dict[str, dict], versions: dict[str, str],
           planned: int | None = None) -> str:
    """The whole HTML page as a string (``planned``: the grid's run count, when known)."""
    e = html.escape
    settings = list(dict.fromkeys(s.setting for s in summaries))
    finals = [r for r in rows if r["final"]]
    failed = [r for r in finals if r["status"] != "ok"]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [HEAD.replace("{title}", e(f"prunus study: {config.name}"))]
    parts.append(f"<h1>Study {e(config.name)}</h1>")
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
    parts.append("<h2>Answer</h2><ul class=answer>")
    parts += [f"<li>{e(line)}</li>" for line in answers]
    parts.append("</ul>")
    parts.append("<h2>Verdicts</h2>")
    by_setting: dict[str, list[tuple[ArmSummary, str]]] = defaultdict(list)
    for s, line in zip(summaries, verdicts):
        by_setting[s.setting].append((s, line))
    for setting in settings:
        if len(settings) > 1:
            parts.append(f"<h3>{e(setting)}</h3>")
        parts.append("<ul class=verdicts>")
        for s, line in by_setting[setting]:
            cls = " class=failed" if s.failures else ""
            parts.append(f"<li{cls}>{e(line)}</li>")
        parts.append("</ul>")
    parts.append(READING.replace("{targets}", e(", ".join(map(str, config.targets)))))

    for setting in settings:
        arms = [s for s, _ in by_setting[setting]]
        setting_rows = [r for r in rows if r["setting"] == setting]
        if len(settings) > 1:
            parts.append(f"<h2>{e(setting)}</h2>")
        parts.append("<h2>Figures</h2><div class=figs>")
        if any(r["status"] == "ok" for r in setting_rows):
            for title, png in figures(arms, setting_rows, config.targets):
                parts.append(f"<figure><img alt=\"{e(title)}\" src=\"data:image/png;base64,"
                             f"{png}\"><figcaption>{e(title)}</figcaption></figure>")
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

    parts.append("<h2>Score tables</h2>")
    parts.append(score_table(score_metas))
    parts.append("<h2>Failed runs</h2>")
    parts.append(failed_table(failed))
    parts.append("<h2>All runs</h2><details><summary>final row of every run</summary>")
    parts.append(runs_table(finals))
    parts.append("</details>")
    parts.append(SCRIPT + "</body></html>\n")
    return "\n".join(parts)


def summary_table(arms: list[ArmSummary]) -> str:
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
    return table(head, body) + (
        "<p>Each score table is computed once and reused by every run that selects from it. "
        "Its wall time (measured around the whole scoring call: proxy training, its "
        "evaluations and the scoring passes) and FLOPs are charged <em>in full</em> to every "
        "run that uses it, because that is what a user running that arm once pays (a run's "
        "<code>scoring_seconds</code>). The amortised figure, the table's cost split equally "
        "among the runs of this study that share it, is shown beside it as a secondary "
        "column.</p>")


def failed_table(failed: list[dict]) -> str:
    if not failed:
        return "<p>None.</p>"
    body = [[text(r["policy"]), num(r["seed"], str(r["seed"])), num(r["epoch"], str(r["epoch"])),
             text(r["error"] or "")] for r in failed]
    return table(["policy", "seed", "epoch reached", "reason"], body)


def runs_table(finals: list[dict]) -> str:
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
    cols = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join("<tr>" + "".join(cells) + "</tr>" for cells in body)
    return f"<table class=sortable><thead><tr>{cols}</tr></thead><tbody>{rows}</tbody></table>"


def text(value: str) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def num(value: Any, shown: str) -> str:
    key = "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
    return f"<td class=n data-sort=\"{key}\">{html.escape(shown)}</td>"


def ratio_cell(e: Estimate, suffix: str = "", bare: bool = False) -> str:
    if math.isnan(e.mean):
        return num(None, "")
    shown = (f"{e.mean:.2f}×" if bare else ratio_text(e)) + suffix
    return num(e.mean, shown)


def ci_plain(e: Estimate, scale: float, spec: str = ".1f") -> str:
    if not e.has_interval:
        return "n/a" if e.n < 2 else ""
    return f"[{format(e.low * scale, spec)}, {format(e.high * scale, spec)}]"


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec)


# -- figures --------------------------------------------------------------------------------


def figures(arms: list[ArmSummary], rows: Sequence[dict],
            targets: Sequence[float | str] = ()) -> list[tuple[str, str]]:
    """(title, base64 PNG) of each figure for one setting; an arm has one colour in all."""
    import matplotlib

    matplotlib.use("Agg")
    colours = arm_colours(arms)
    out = []
    if arms and arms[0].metric != "accuracy":
        label = metric_name(arms[0].metric)
        bars, note = metric_bars(arms, label, colours)
        kind = "negatives" if is_fraction(arms[0].metric) else "data"
        out = [(f"{label} by {kind} policy (mean over seeds, 95% CI){note}", bars)]
        if not is_fraction(arms[0].metric):
            for i, target in enumerate(arms[0].targets):
                out.append(((f"Time to target {target.target} "
                             f"({pct(target.accuracy, arms[0].metric)}), mean and 95% CI over "
                             "seeds that reached it (n/N: seeds reached)"),
                            time_to_target_bars(arms, i, colours)))
        out.append((f"Pareto frontier: {label} vs cost (dots: runs; markers: arm means)",
                    pareto_plot(arms, rows, colours, label)))
        return out
    data_arms = [a for a in arms if a.weight_policy == "dense"]
    if any(a.data_kind not in ("full", "short") for a in data_arms):
        out.append(("Accuracy vs keep fraction (mean over seeds, 95% CI band)",
                    accuracy_vs(data_arms, arms, "keep", "data_policy", "keep fraction",
                                colours)))
    weight_arms = [a for a in arms if a.data_kind == "full"]
    if any(a.weight_policy != "dense" for a in weight_arms):
        out.append((("Accuracy vs sparsity (mean over seeds, 95% CI band; sparsity 0 is the "
                    "dense model)"),
                    accuracy_vs(weight_arms, arms, "sparsity", "weight_policy", "sparsity",
                                colours)))
    out.append((("Accuracy vs cost (wall seconds: training + selection + whole score tables), "
                 "mean over seeds, at the shared evaluation cadence"),
                accuracy_vs_cost(arms, rows, colours)))
    for i, target in enumerate(arms[0].targets if arms else []):
        out.append(((f"Time to target {target.target} ({pct(target.accuracy)}), mean and 95% "
                     "CI over seeds that reached it (n/N: seeds reached)"),
                    time_to_target_bars(arms, i, colours)))
    out.append(("Pareto frontier: final accuracy vs cost (dots: runs; markers: arm means)",
                pareto_plot(arms, rows, colours)))
    return out


def arm_colours(arms: list[ArmSummary]) -> dict[str, Any]:
    """Policy -> colour: full data black, every other arm its own colour (tab20, then hsv)."""
    import matplotlib

    others = [a.policy for a in arms if not a.is_full]
    palette = matplotlib.colormaps["tab20"].colors
    if len(others) > len(palette):
        hsv = matplotlib.colormaps["hsv"]
        palette = [hsv(i / len(others)) for i in range(len(others))]
    colours = {policy: palette[i % len(palette)] for i, policy in enumerate(others)}
    colours.update({a.policy: "black" for a in arms if a.is_full})
    return colours


def legend_outside(ax) -> None:
    """The legend to the right of the axes, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0, frameon=False)


def accuracy_vs(members: list[ArmSummary], arms: list[ArmSummary], x_field: str,
                group_field: str, x_label: str, colours: dict[str, Any]) -> str:
    """Accuracy against keep (or sparsity), one line per policy; full data (dense) as the
    point at keep 1 (sparsity 0) and a dashed reference line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    full = next((a for a in arms if a.is_full), None)
    groups: dict[str, list[ArmSummary]] = defaultdict(list)
    for a in members:
        if not a.is_full and a.seeds and a.data_kind != "short":
            groups[getattr(a, group_field)].append(a)
    for name, group in groups.items():
        group.sort(key=lambda a: getattr(a, x_field))
        xs = [getattr(a, x_field) for a in group]
        ys = [100 * a.accuracy.mean for a in group]
        colour = colours.get(group[0].policy)
        ax.plot(xs, ys, marker="o", color=colour, label=plain(name))
        if len(xs) == 1:
            e = group[0].accuracy
            if e.has_interval:
                ax.errorbar(xs, ys, yerr=[[ys[0] - 100 * e.low], [100 * e.high - ys[0]]],
                            color=colour, capsize=3)
            continue
        lows = [100 * (a.accuracy.low if a.accuracy.has_interval else a.accuracy.mean) for a in group]
        highs = [100 * (a.accuracy.high if a.accuracy.has_interval else a.accuracy.mean) for a in group]
        ax.fill_between(xs, lows, highs, color=colour, alpha=0.15)
    if full is not None and full.seeds:
        reference = "dense" if x_field == "sparsity" else plain(full.policy)
        at = 0.0 if x_field == "sparsity" else 1.0
        ax.axhline(100 * full.accuracy.mean, color="black", lw=1, ls="--", label=reference)
        ax.plot([at], [100 * full.accuracy.mean], marker="s", color="black")
        if full.accuracy.has_interval:
            ax.axhspan(100 * full.accuracy.low, 100 * full.accuracy.high, color="black",
                       alpha=0.08)
    xs = sorted({getattr(a, x_field) for a in members} | {0.0 if x_field == "sparsity" else 1.0})
    ax.set_xticks(xs)
    ax.set_xticklabels([("dense" if x_field == "sparsity" and x == 0 else f"{100 * x:g}%")
                        for x in xs])
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return png(fig)


def accuracy_vs_cost(arms: list[ArmSummary], rows: Sequence[dict], colours: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    curves: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "ok":
            curves[r["policy"]][r["seed"]].append(r)
    for a in arms:
        runs = list(curves.get(a.policy, {}).values())
        if not runs:
            continue
        length = min(len(c) for c in runs)
        cost = np.mean([[r["cost_seconds"] for r in c[:length]] for c in runs], axis=0)
        acc = np.mean([[100 * r["accuracy"] for r in c[:length]] for c in runs], axis=0)
        ax.plot(cost, acc, marker=".", lw=2.0 if a.is_full else 1.2,
                color=colours.get(a.policy), label=plain(a.policy))
    ax.set_xlabel("cost: wall seconds (training + selection + whole score tables)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return png(fig)


def time_to_target_bars(arms: list[ArmSummary], index: int, colours: dict[str, Any]) -> str:
    """Seconds to one target per arm, bars from zero; arms that never reach it say so."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(arms) + 1.2))
    labels, means, errors = [], [], [[], []]
    for a in arms:
        t = a.targets[index]
        labels.append(plain(a.policy))
        mean = t.seconds.mean if t.reached else 0.0
        means.append(0.0 if math.isnan(mean) else mean)
        low = t.seconds.low if t.seconds.has_interval else mean
        high = t.seconds.high if t.seconds.has_interval else mean
        errors[0].append(max(mean - low, 0) if t.reached else 0)
        errors[1].append(max(high - mean, 0) if t.reached else 0)
    y = range(len(arms))
    ax.barh(list(y), means, xerr=errors, color=[colours.get(a.policy) for a in arms],
            alpha=0.8)
    for i, a in enumerate(arms):
        t = a.targets[index]
        if not t.reached:
            ax.text(0, i, f" not reached (0/{t.seeds})", va="center", fontsize=8,
                    color="tab:red")
        else:
            ax.text(means[i] + errors[1][i], i, f" {t.reached}/{t.seeds}", va="center",
                    fontsize=7)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("wall seconds to reach the target, overheads included")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def metric_bars(arms: list[ArmSummary], label: str,
                colours: dict[str, Any]) -> tuple[str, str]:
    """Bars of the metric per arm; the axis starts at zero unless every bar is high and close,
    then the caption says where it starts (returned as the second item)."""
    import matplotlib.pyplot as plt

    shown = [a for a in arms if a.seeds]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(shown) + 1.2))
    metric = shown[0].metric if shown else "accuracy"
    k = unit_scale(metric)
    means = [k * a.accuracy.mean for a in shown]
    errors = [[k * (a.accuracy.mean - a.accuracy.low) if a.accuracy.has_interval else 0
               for a in shown],
              [k * (a.accuracy.high - a.accuracy.mean) if a.accuracy.has_interval else 0
               for a in shown]]
    ax.barh(range(len(shown)), means, xerr=errors, alpha=0.8,
            color=[colours.get(a.policy) for a in shown])
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([plain(a.policy) for a in shown], fontsize=8)
    ax.invert_yaxis()
    note = ""
    if means:
        low = min(m - e for m, e in zip(means, errors[0]))
        start = 0.0
        unit = "%" if is_fraction(metric) else ""
        if low > 0 and max(means) - low < 0.25 * low:  # differences would be invisible from 0
            start = max(0.0, math.floor(low - 2.0 * k / 100 * (1 if unit else 50)))
            note = f"; the axis starts at {start:g}{unit} so that the differences are visible"
        top = max(means) + max(errors[1] + [0]) + k / 100
        ax.set_xlim(start, min(100.0, top) if unit else top * 1.02)
    ax.set_xlabel(f"test {label}" + (" (%)" if is_fraction(metric) else " (lower is better)"))
    ax.grid(alpha=0.3, axis="x")
    return png(fig), note


def pareto_plot(arms: list[ArmSummary], rows: Sequence[dict], colours: dict[str, Any],
                metric: str = "test accuracy") -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    finals = [r for r in rows if r["final"] and r["status"] == "ok"]
    k = unit_scale(arms[0].metric) if arms else 100.0
    ax.scatter([r["cost_seconds"] for r in finals], [k * r["accuracy"] for r in finals],
               s=8, color=[colours.get(r["policy"], "gray") for r in finals], alpha=0.35)
    for a in arms:
        if not a.seeds:
            continue
        marker = "*" if a.on_frontier else "o"
        ax.scatter([a.cost_seconds.mean], [k * a.accuracy.mean], marker=marker,
                   s=90 if a.on_frontier else 30, color=colours.get(a.policy),
                   label=plain(a.policy))
    front = sorted((a for a in arms if a.on_frontier and a.seeds),
                   key=lambda a: a.cost_seconds.mean)
    if front:
        ax.step([a.cost_seconds.mean for a in front], [k * a.accuracy.mean for a in front],
                where="post", color="tab:red", lw=1, label="frontier")
    ax.set_xlabel("cost: wall seconds (training + selection + whole score tables)")
    ax.set_ylabel(f"final {metric}" + (" (%)" if k == 100 else " (lower is better)"))
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return png(fig)


def png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plain(label: str) -> str:
    """A label matplotlib shows literally (no mathtext, no hidden '_' legend entries)."""
    label = str(label).replace("$", r"\$")
    return " " + label if label.startswith("_") else label


HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;
border-bottom:1px solid #ddd}.meta{color:#666;font-size:.9em}
ul.verdicts li{margin:.25em 0}ul.verdicts li.failed{color:#a00}
ul.answer li{font-size:1.1em;font-weight:600;margin:.3em 0}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f4f4f4;cursor:pointer;user-select:none}th.asc:after{content:" \\25B2"}
th.desc:after{content:" \\25BC"}td.n{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;max-width:580px}
figure img{max-width:100%}figcaption{font-size:12px;color:#555}
code{background:#f4f4f4;padding:0 3px}
</style></head><body>"""

READING = """<details open><summary>How to read this report</summary><ul>
<li><b>The answer</b> is the cheapest arm (headline cost) that is shown <em>not worse than full
data by more than the margin</em> (the study's first <code>full-&lt;N&gt;pp</code> target, else
1pp): a one-sided paired t-test of "worse by at least the margin", rejected at 2.5% after Holm's
correction over every arm tested, with at least 5 paired seeds. Otherwise it says no arm is
cheaper than full data at that margin.</li>
<li><b>Accuracy</b> is the test accuracy after the last evaluation (never the best one: that
would peek at the test set), averaged over seeds. Intervals are 95% Student-t intervals over
seeds: they cover the true mean 95% of the time at these seed counts (checked by simulation).
With one seed no interval is possible (n/a).</li>
<li><b>Paired by seed</b>: a seed fixes a run's initialisation and data order, and every arm
runs with every seed, so differences are computed seed by seed (a paired t-interval). A seed
where either run failed is left out of that comparison.</li>
<li><b>Verdicts</b>: "beats" or "worse" only when the difference's test rejects zero after
Holm's correction over all the comparisons of the setting (their number is shown) <em>and</em>
at least 5 paired seeds exist. Otherwise "inconclusive with n seeds", with the number of seeds
that would resolve a difference of the observed size at the observed spread. The intervals
shown are the raw, uncorrected ones.</li>
<li><b>Same compute</b>: full data trained for the same number of examples backpropagated as
the arm, its LR schedule shortened to those steps (same schedule shape): "just train less".
For online methods whose cost is only known after running, this baseline and the random subset
they are compared with train for the arm's <em>measured</em> backprop count, seed by seed.</li>
<li><b>Random baseline</b>: a random subset with the same examples (data policies); random
pruning with ERK layer densities pruned at the same point of training as the method (weight
policies). Uniform random pruning at initialisation is shown as well, as the weakest variant.</li>
<li><b>Cost</b> (headline) is what a user running the arm once pays: wall seconds of training +
selection + the <em>whole</em> cost of the score tables it needs (proxy training included).
The amortised figure shares each table among the runs of this study that use it (secondary
column). Cost ratios are geometric means of per-seed ratios with 95% intervals; identical
reruns vary by several percent, so a ratio whose interval includes 1 is no measured speed-up.
Evaluation time is left out. FLOPs count training forward and backward passes plus the score
tables; for sparse weights they are <em>theoretical</em>: unstructured sparsity saves no wall
time without a sparse kernel.</li>
<li><b>Time to target</b>: the cost at the first evaluation whose accuracy reaches the target
({targets}; "full-1pp" means 1 point below full data's mean final accuracy). Every arm is
evaluated each time a fixed number of examples has been backpropagated (1/20 of the full-data
run), so no arm is checked more often per unit of compute. Seeds that never reach it are
censored and counted in "reached n/N".</li>
<li><b>Pareto frontier</b>: arms that no other arm beats on both mean accuracy and mean
headline cost.</li>
<li><b>Retrieval settings</b> (negatives policies) report nDCG@10 where the others report
accuracy, in-batch negatives are the reference (in the role of full data) and random
negatives the random baseline; cost is fine-tuning plus mining and filtering (embedding the
mining pool with the pre-trained model is common to every arm and not charged).</li>
</ul></details>"""

SCRIPT = """<script>
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-sort');
    if (v === null) { return cell.textContent.toLowerCase(); }
    return v === '' ? -Infinity : parseFloat(v);
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.querySelectorAll('thead th');
    heads.forEach(function (th, col) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        heads.forEach(function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x < y) { return asc ? -1 : 1; }
          if (x > y) { return asc ? 1 : -1; }
          return 0;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.body.setAttribute('data-report-ready', 'yes');
})();
</script>"""
