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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prunus.study.stats import ArmSummary, Estimate, WinRate, summarize
from prunus.study.store import StudyStore, atomic_write_text

MINUS = "\u2212"


@dataclass
class Report:
    path: Any
    verdicts: list[str]
    summaries: list[ArmSummary]


def write_report(store: StudyStore, path=None) -> Report:
    """Build ``report.html`` from the store (atomically) and return its verdict lines."""
    config = store.read_config()
    rows = load_rows(store)
    summaries = summarize(rows, config.targets)
    verdicts = [verdict(s) for s in summaries]
    page = render(config, rows, summaries, verdicts, store.score_metas(), store.read_versions())
    path = path or store.report_path
    atomic_write_text(path, page)
    return Report(path, verdicts, summaries)


def load_rows(store: StudyStore) -> list[dict[str, Any]]:
    """Every row of the study, in run and evaluation order (DuckDB over the Parquet store)."""
    from prunus.study.query import query

    return query(store.root, "SELECT * FROM runs ORDER BY run_index, step, end_of_epoch").to_pylist()


# -- verdicts -------------------------------------------------------------------------------


def verdict(s: ArmSummary) -> str:
    """One plain-language line for an arm."""
    seeds = len(s.seeds) + len(s.failures)
    if not s.seeds:
        reason = next(iter(s.failures.values()), "no run finished")
        return f"{s.policy}: failed in all {seeds} seeds ({reason})"
    if s.is_full:
        text = f"{s.policy}: {pct(s.accuracy.mean)} {interval(s.accuracy, pct_bounds=True)} " \
               f"test {metric_name(s.metric)} over {len(s.seeds)} " \
               f"seed{'s' * (len(s.seeds) != 1)}, the reference"
    else:
        reference = "dense" if s.data_kind == "full" else s.reference
        parts = []
        if s.vs_full is not None:
            parts.append(f"{pp(s.vs_full.mean)} vs {reference} {interval(s.vs_full)}")
        if s.vs_random is not None:
            rival = "random pruning" if s.data_kind == "full" else "random"
            parts.append(f"{pp(s.vs_random.mean)} vs {rival} {interval(s.vs_random)}"
                         f" ({wins_text(s.wins_vs_random)})")
        parts.append(time_phrase(s))
        text = f"{s.policy}: " + ", ".join(parts)
    if s.failures:
        reason = next(iter(s.failures.values()))
        text += f"; failed in {len(s.failures)} of {seeds} seeds ({reason})"
    return text


def time_phrase(s: ArmSummary) -> str:
    if math.isnan(s.time_ratio.mean):
        return "time n/a"
    reference = "full-data" if s.data_kind != "full" else "dense"
    if s.metric != "accuracy":
        reference = s.reference
    text = f"{s.time_ratio.mean:.2f}× {reference} time"
    if s.uses_scores:
        text += " including scoring"
        alone = s.time_ratio_alone.mean
        if s.score_shared_by > 1 and not math.isnan(alone):
            text += (f" (its score table's cost shared by {s.score_shared_by} runs; "
                     f"{alone:.2f}× if paid by one run)")
    elif s.data_kind == "online":
        text += " including selection"
    elif s.data_kind == "negatives" and s.selection_seconds.mean > 0:
        text += " including mining"
    if s.flops_theoretical and not math.isnan(s.flops_ratio.mean):
        text += f", {s.flops_ratio.mean:.2f}× {reference} FLOPs (theoretical)"
    return text


def metric_name(metric: str) -> str:
    """``ndcg@10`` -> ``nDCG@10`` (how the report writes a metric)."""
    return {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10"}.get(metric, metric)


def pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def pp(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    shown = f"{100 * value:+.1f}"
    if shown == "-0.0":
        shown = "+0.0"  # a tiny negative mean rounds to zero: no sign to show
    return f"{shown}pp".replace("-", MINUS)


def interval(e: Estimate, pct_bounds: bool = False) -> str:
    if not e.has_interval:
        return f"[CI n/a: {e.n} seed{'s' * (e.n != 1)}]"
    if pct_bounds:
        return f"[{100 * e.low:.1f}, {100 * e.high:.1f}]"
    return f"[{100 * e.low:+.1f}, {100 * e.high:+.1f}]".replace("-", MINUS)


def wins_text(w: WinRate | None) -> str:
    if w is None:
        return ""
    ties = f", {w.ties} tie{'s' * (w.ties != 1)}" if w.ties else ""
    return f"better in {w.wins}/{w.n} seeds{ties}"


# -- page -----------------------------------------------------------------------------------


def render(config, rows: Sequence[dict], summaries: list[ArmSummary], verdicts: list[str],
           score_metas: dict[str, dict], versions: dict[str, str]) -> str:
    """The whole HTML page as a string."""
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
        for title, png in figures(arms, setting_rows):
            parts.append(f"<figure><img alt=\"{e(title)}\" src=\"data:image/png;base64,{png}\">"
                         f"<figcaption>{e(title)}</figcaption></figure>")
        parts.append("</div>")
        parts.append("<h2>Summary</h2>")
        parts.append(summary_table(arms))
        if arms and arms[0].metric != "accuracy":
            parts.append("<h2>Retrieval metrics and negatives</h2>")
            parts.append(retrieval_table(arms))
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
    head = ["policy", "keep", "sparsity", "seeds", metric, "95% CI", "Δ vs full", "95% CI",
            "Δ vs random", "95% CI", "wins vs random", "cost s", "× full time",
            "× full time, scores paid alone", "× full FLOPs", "on frontier"]
    body = []
    for s in arms:
        wins = wins_text(s.wins_vs_random).removeprefix("better in ")
        body.append([
            text(s.policy), num(s.keep, f"{100 * s.keep:g}%"),
            num(s.sparsity, f"{100 * s.sparsity:g}%"),
            num(len(s.seeds), f"{len(s.seeds)}" + (f" ({len(s.failures)} failed)" if s.failures else "")),
            num(s.accuracy.mean, pct(s.accuracy.mean)), text(ci_pct(s.accuracy)),
            *estimate_cells(s.vs_full), *estimate_cells(s.vs_random),
            text(wins),
            num(s.cost_seconds.mean, f"{s.cost_seconds.mean:.1f}"),
            ratio_cell(s.time_ratio), ratio_cell(s.time_ratio_alone),
            ratio_cell(s.flops_ratio, " (theoretical)" if s.flops_theoretical else ""),
            text("yes" if s.on_frontier else ""),
        ])
    return table(head, body)


RETRIEVAL_COLUMNS = [
    ("ndcg@10", "nDCG@10", True), ("mrr@10", "MRR@10", True), ("recall@1", "Recall@1", True),
    ("recall@10", "Recall@10", True), ("negatives_per_pair", "negatives per pair", False),
    ("skipped_by_margin", "skipped by margin", False), ("guide_flagged", "guide flagged", False),
    ("guide_flagged_true_duplicates", "of which true duplicates", False),
    ("dropped", "dropped", False), ("masked_per_anchor", "in-batch masked per anchor", False),
]


def retrieval_table(arms: list[ArmSummary]) -> str:
    """Every retrieval metric (mean and 95% CI over seeds) and the negatives statistics."""
    head = ["policy", "seeds"]
    for _, label, with_ci in RETRIEVAL_COLUMNS:
        head += [label, "95% CI"] if with_ci else [label]
    body = []
    for s in arms:
        cells = [text(s.policy), num(len(s.seeds), str(len(s.seeds)))]
        for name, _, with_ci in RETRIEVAL_COLUMNS:
            e = s.extra.get(name)
            if e is None:
                cells += [num(None, ""), text("")] if with_ci else [num(None, "")]
            elif with_ci:
                cells += [num(e.mean, pct(e.mean)), text(ci_pct(e))]
            else:
                cells.append(num(e.mean, f"{e.mean:,.2f}"))
        body.append(cells)
    return table(head, body) + (
        "<p>Metrics on the test queries, with every known duplicate of a positive counted as "
        "relevant. Negatives statistics are per training set, averaged over seeds: "
        "<em>guide flagged</em> mined negatives the pre-trained guide scores above the "
        "query's positive, <em>of which true duplicates</em> those that are known duplicates "
        "of the positive, <em>dropped</em> negatives removed before training.</p>")


def target_table(arms: list[ArmSummary]) -> str:
    head = ["policy", "target", metric_name(arms[0].metric) if arms else "accuracy", "reached", "seconds", "95% CI", "GFLOPs", "95% CI",
            "× full-data seconds"]
    body = []
    for s in arms:
        for t in s.targets:
            body.append([
                text(s.policy), text(t.target), num(t.accuracy, pct(t.accuracy)),
                num(t.reached, f"{t.reached}/{t.seeds}" if t.reached else f"not reached (0/{t.seeds})"),
                num(t.seconds.mean, fmt(t.seconds.mean, ".1f")), text(ci_plain(t.seconds, 1)),
                num(t.flops.mean, fmt(t.flops.mean / 1e9, ".2f")), text(ci_plain(t.flops, 1e-9, ".2f")),
                ratio_cell(t.ratio_to_full),
            ])
    return table(head, body)


def score_table(metas: dict[str, dict]) -> str:
    if not metas:
        return "<p>No score tables: this study has no static data policy.</p>"
    head = ["table", "method", "proxy model", "proxy epochs", "of a run of", "proxy seeds",
            "wall s", "GFLOPs", "shared by runs", "charged per run, s"]
    body = []
    for key, m in metas.items():
        shared = int(m.get("shared_by") or 1)
        body.append([
            text(key), text(str(m.get("method"))), text(str(m.get("model"))),
            num(m.get("epochs"), str(m.get("epochs"))),
            num(m.get("full_epochs"), str(m.get("full_epochs"))),
            text(", ".join(map(str, m.get("seeds", [])))),
            num(m["seconds"], f"{m['seconds']:.1f}"), num(m["flops"], f"{m['flops'] / 1e9:.2f}"),
            num(shared, str(shared)), num(m["seconds"] / shared, f"{m['seconds'] / shared:.2f}"),
        ])
    return table(head, body) + (
        "<p>Each score table is computed once and reused by every run that selects from it; "
        "its wall time (measured around the whole scoring call: proxy training, its "
        "evaluations and the scoring passes) and FLOPs are split equally among those runs "
        "(a run's share is its "
        "<code>scoring_seconds</code>). The column <em>scores paid alone</em> in the summary "
        "charges a whole table to one run instead: what a single training run with that "
        "selection costs.</p>")


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
        num(r["accuracy"], pct(r["accuracy"])),
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


def estimate_cells(e: Estimate | None) -> list[str]:
    if e is None:
        return [text(""), text("")]
    return [num(e.mean, pp(e.mean)), text(interval(e))]


def ratio_cell(e: Estimate, suffix: str = "") -> str:
    if math.isnan(e.mean):
        return num(None, "")
    shown = f"{e.mean:.2f}×" + (f" [{e.low:.2f}, {e.high:.2f}]" if e.has_interval else "") + suffix
    return num(e.mean, shown)


def ci_pct(e: Estimate) -> str:
    return interval(e, pct_bounds=True)


def ci_plain(e: Estimate, scale: float, spec: str = ".1f") -> str:
    if not e.has_interval:
        return "n/a" if e.n < 2 else ""
    return f"[{format(e.low * scale, spec)}, {format(e.high * scale, spec)}]"


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec)


# -- figures --------------------------------------------------------------------------------


def figures(arms: list[ArmSummary], rows: Sequence[dict]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of each figure for one setting."""
    import matplotlib

    matplotlib.use("Agg")
    out = []
    if arms and arms[0].metric != "accuracy":
        label = metric_name(arms[0].metric)
        return [(f"{label} by negatives policy (mean over seeds, 95% CI)",
                 metric_bars(arms, label)),
                (f"Pareto frontier: {label} vs cost (dots: runs; markers: arm means)",
                 pareto_plot(arms, rows, label))]
    data_arms = [a for a in arms if a.weight_policy == "dense"]
    if any(a.data_kind != "full" for a in data_arms):
        out.append(("Accuracy vs keep fraction (mean over seeds, 95% CI band)",
                    accuracy_vs(data_arms, arms, "keep", "data_policy", "keep fraction")))
    weight_arms = [a for a in arms if a.data_kind == "full"]
    if any(a.weight_policy != "dense" for a in weight_arms):
        out.append(("Accuracy vs sparsity (mean over seeds, 95% CI band)",
                    accuracy_vs(weight_arms, arms, "sparsity", "weight_policy", "sparsity")))
    out.append((("Accuracy vs cost (wall seconds: training + selection + scoring share), mean "
                "over seeds"), accuracy_vs_cost(arms, rows)))
    if arms and arms[0].targets:
        out.append(((f"Time to target {arms[0].targets[0].target} "
                    f"({pct(arms[0].targets[0].accuracy)}), mean and 95% CI over seeds that "
                    "reached it"), time_to_target_bars(arms)))
    out.append(("Pareto frontier: final accuracy vs cost (dots: runs; markers: arm means)",
                pareto_plot(arms, rows)))
    return out


def accuracy_vs(members: list[ArmSummary], arms: list[ArmSummary], x_field: str,
                group_field: str, x_label: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    full = next((a for a in arms if a.is_full), None)
    groups: dict[str, list[ArmSummary]] = defaultdict(list)
    for a in members:
        if not a.is_full and a.seeds:
            groups[getattr(a, group_field)].append(a)
    for name, group in groups.items():
        group.sort(key=lambda a: getattr(a, x_field))
        xs = [getattr(a, x_field) for a in group]
        ys = [100 * a.accuracy.mean for a in group]
        line, = ax.plot(xs, ys, marker="o", label=plain(name))
        lows = [100 * (a.accuracy.low if a.accuracy.has_interval else a.accuracy.mean) for a in group]
        highs = [100 * (a.accuracy.high if a.accuracy.has_interval else a.accuracy.mean) for a in group]
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)
    if full is not None and full.seeds:
        ax.axhline(100 * full.accuracy.mean, color="black", lw=1, ls="--",
                   label=plain(full.policy))
        if full.accuracy.has_interval:
            ax.axhspan(100 * full.accuracy.low, 100 * full.accuracy.high, color="black",
                       alpha=0.08)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def accuracy_vs_cost(arms: list[ArmSummary], rows: Sequence[dict]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    curves: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "ok" and r["end_of_epoch"]:
            curves[r["policy"]][r["seed"]].append(r)
    for a in arms:
        runs = list(curves.get(a.policy, {}).values())
        if not runs:
            continue
        length = min(len(c) for c in runs)
        cost = np.mean([[r["cost_seconds"] for r in c[:length]] for c in runs], axis=0)
        acc = np.mean([[100 * r["accuracy"] for r in c[:length]] for c in runs], axis=0)
        ax.plot(cost, acc, marker=".", lw=1.2 if not a.is_full else 2.0,
                color="black" if a.is_full else None, label=plain(a.policy))
    ax.set_xlabel("cost: wall seconds (training + selection + scoring share)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return png(fig)


def time_to_target_bars(arms: list[ArmSummary]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(arms) + 1.2))
    labels, means, errors = [], [], [[], []]
    for a in arms:
        t = a.targets[0]
        labels.append(plain(a.policy))
        mean = t.seconds.mean if t.reached else 0.0
        means.append(0.0 if math.isnan(mean) else mean)
        low = t.seconds.low if t.seconds.has_interval else mean
        high = t.seconds.high if t.seconds.has_interval else mean
        errors[0].append(max(mean - low, 0) if t.reached else 0)
        errors[1].append(max(high - mean, 0) if t.reached else 0)
    y = range(len(arms))
    ax.barh(list(y), means, xerr=errors, color=["black" if a.is_full else "tab:blue" for a in arms],
            alpha=0.75)
    for i, a in enumerate(arms):
        t = a.targets[0]
        if not t.reached:
            ax.text(0, i, " not reached", va="center", fontsize=8, color="tab:red")
        elif t.reached < t.seeds:
            ax.text(means[i], i, f" {t.reached}/{t.seeds} seeds", va="center", fontsize=7)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds to reach the target, overheads included")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def metric_bars(arms: list[ArmSummary], label: str) -> str:
    import matplotlib.pyplot as plt

    shown = [a for a in arms if a.seeds]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(shown) + 1.2))
    means = [100 * a.accuracy.mean for a in shown]
    errors = [[100 * (a.accuracy.mean - a.accuracy.low) if a.accuracy.has_interval else 0
               for a in shown],
              [100 * (a.accuracy.high - a.accuracy.mean) if a.accuracy.has_interval else 0
               for a in shown]]
    ax.barh(range(len(shown)), means, xerr=errors, alpha=0.75,
            color=["black" if a.is_full else "tab:blue" for a in shown])
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([plain(a.policy) for a in shown], fontsize=8)
    ax.invert_yaxis()
    if means:
        low = min(m - e for m, e in zip(means, errors[0]))
        ax.set_xlim(max(0.0, low - 2.0), min(100.0, max(means) + max(errors[1] + [0]) + 1.0))
    ax.set_xlabel(f"test {label} (%)")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def pareto_plot(arms: list[ArmSummary], rows: Sequence[dict],
                metric: str = "test accuracy") -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    finals = [r for r in rows if r["final"] and r["status"] == "ok"]
    ax.scatter([r["cost_seconds"] for r in finals], [100 * r["accuracy"] for r in finals],
               s=8, color="gray", alpha=0.4)
    for a in arms:
        if not a.seeds:
            continue
        marker = "*" if a.on_frontier else "o"
        ax.scatter([a.cost_seconds.mean], [100 * a.accuracy.mean], marker=marker,
                   s=90 if a.on_frontier else 30, color="black" if a.is_full else None,
                   label=plain(a.policy))
    front = sorted((a for a in arms if a.on_frontier and a.seeds),
                   key=lambda a: a.cost_seconds.mean)
    if front:
        ax.step([a.cost_seconds.mean for a in front], [100 * a.accuracy.mean for a in front],
                where="post", color="tab:red", lw=1, label="frontier")
    ax.set_xlabel("cost: wall seconds (training + selection + scoring share)")
    ax.set_ylabel(f"final {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
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
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f4f4f4;cursor:pointer;user-select:none}th.asc:after{content:" \\25B2"}
th.desc:after{content:" \\25BC"}td.n{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;max-width:580px}
figure img{max-width:100%}figcaption{font-size:12px;color:#555}
code{background:#f4f4f4;padding:0 3px}
</style></head><body>"""

READING = """<details><summary>How to read this report</summary><ul>
<li><b>Accuracy</b> is the test accuracy after the last epoch (never the best epoch: that
would peek at the test set), averaged over seeds; intervals are 95% percentile-bootstrap
intervals over seeds (scipy, 9,999 resamples). With one seed no interval exists (n/a); with
3–5 seeds the intervals are rough.</li>
<li><b>Paired by seed</b>: a seed fixes a run's initialisation and data order, and every arm
runs with every seed, so differences (Δ vs full, Δ vs random) are computed seed by seed and
then averaged. A seed where either run failed is left out of that comparison.</li>
<li><b>Random baseline</b>: a random subset at the same keep fraction (data policies); random
pruning at the same sparsity (weight policies).</li>
<li><b>Cost</b> is wall seconds of training + selection + the run's share of the score table
it used. Evaluation time is measured but left out (every arm evaluates the same test set at the
same cadence). FLOPs count training forward and backward passes plus the scoring share; for
sparse weights they are scaled by density and are <em>theoretical</em>: unstructured sparsity
saves no wall time without a sparse kernel.</li>
<li><b>Time to target</b>: the cost at the first evaluation whose accuracy reaches the target
({targets}; "full-1pp" means 1 point below full data's mean final accuracy), over the seeds that
reached it.</li>
<li><b>Pareto frontier</b>: arms that no other arm beats on both mean accuracy and mean cost.</li>
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
