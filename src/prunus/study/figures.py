"""The study report's figures (matplotlib, Agg, returned as base64 PNG): accuracy vs keep
fraction and vs sparsity with 95% CI bands, accuracy vs cost, time to each target, the metric
per arm (settings whose metric is not accuracy) and the Pareto frontier. An arm keeps one
colour in every figure of its setting; full data is black."""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from prunus.study.formatting import is_fraction, metric_name, pct, unit_scale
from prunus.study.stats import ArmSummary


def figures(arms: list[ArmSummary], rows: Sequence[dict]) -> list[tuple[str, str]]:
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
    """Accuracy at each shared evaluation against its cost so far, mean over seeds per arm
    (the seeds' curves cut to the shortest)."""
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
    """Every run's final metric against its cost (dots), each arm's means (markers; stars on
    the frontier) and the frontier as a step line."""
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
    """The figure as base64 PNG (90 dpi), closed afterwards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plain(label: str) -> str:
    """A label matplotlib shows literally (no mathtext, no hidden '_' legend entries)."""
    label = str(label).replace("$", r"\$")
    return " " + label if label.startswith("_") else label
