"""The study report's sentences: the first-sentence answer per setting (which arm to use, or
that none pays), and one verdict line per arm (each comparison with its interval and verdict
word, then its cost relative to the reference), e.g. ``EL2N-hardest, keep 50%: −0.1pp vs full
[−0.6, +0.4]: inconclusive; +1.2pp vs random [+0.4, +2.0]: beats (Holm-corrected over 12
comparisons); 0.62× full-data cost with its score table paid in full``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from prunus.study.formatting import interval, is_fraction, metric_name, pct, pp, ratio_text
from prunus.study.stats import (
    BEATS,
    MAX_SEEDS_SUGGESTED,
    MIN_SEEDS,
    WORSE,
    ArmSummary,
    Comparison,
    Recommendation,
    WinRate,
)

DEFAULT_MARGIN = 0.01


def study_margin(targets: Sequence[float | str]) -> float:
    """The non-inferiority margin: the study's first ``full-<N>pp`` target, else 1pp."""
    from prunus.study.schema import TARGET_PATTERN

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
    elif s.data_kind == "oneshot":  # two random axes: name the rival arm itself
        rival = c.rival
    elif c.kind == "compute":
        rival = "same compute"
    else:
        rival = c.rival if s.data_kind == "full" and s.weight_policy != "dense" else "random"
    head = (f"{pp(c.difference.mean, s.metric)} vs {rival} "
            f"{interval(c.difference, metric=s.metric)}")
    return f"{head}: {verdict_word(c)}"


def verdict_word(c: Comparison) -> str:
    """The verdict of one comparison: ``beats``/``worse`` (Holm-corrected, at least
    ``MIN_SEEDS`` paired seeds), else ``inconclusive`` with why and how many seeds would
    resolve the observed difference at the observed spread."""
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
    if s.data_kind == "oneshot":
        return oneshot_cost_phrase(s)
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


def oneshot_cost_phrase(s: ArmSummary) -> str:
    """A one-shot arm's wall seconds per run, by phase (the dense reference costs nothing, so
    there is no ratio to it)."""
    prune, scoring = s.selection_seconds.mean, s.scoring_seconds.mean
    recovery = s.cost_seconds.mean - prune - scoring
    parts = [f"pruning {prune:.2f} s"] if prune > 0 else []
    parts += [f"scoring {scoring:.2f} s"] if scoring > 0 else []
    parts += [f"recovery {recovery:.2f} s"] if recovery > 0.005 else []
    return f"{s.cost_seconds.mean:.2f} s per run ({', '.join(parts) or 'nothing'} paid in full)"


def wins_text(w: WinRate | None) -> str:
    """``better in 3/5 seeds, 1 tie`` (empty when there is no paired comparison)."""
    if w is None:
        return ""
    ties = f", {w.ties} tie{'s' * (w.ties != 1)}" if w.ties else ""
    return f"better in {w.wins}/{w.n} seeds{ties}"

