"""The study report: one self-contained HTML file, rebuilt from the store at any time.

It opens with the answer (which arm to use, per setting) and one plain-language verdict per
arm, e.g. ``EL2N-hardest, keep 50%: −0.1pp vs full [−0.6, +0.4], +1.2pp vs random [+0.4, +2.0]
(better in 3/3 seeds), 0.62× full-data time including scoring``, then figures, sortable
tables, the score tables and what they cost, and failed runs with their reasons. The sentences
are :mod:`prunus.study.verdicts`, the figures :mod:`prunus.study.figures`, the page
:mod:`prunus.study.page` (from ``templates/report.html``); this module reads the store and
writes the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunus.study.page import render
from prunus.study.stats import ArmSummary, higher_is_better, recommend, summarize
from prunus.study.store import StudyStore, atomic_write_text
from prunus.study.verdicts import answer, selection_answer, study_margin, verdict


@dataclass
class Report:
    """What ``write_report`` wrote: the file, the answer per setting, the verdicts per arm."""

    path: Path
    verdicts: list[str]
    summaries: list[ArmSummary]
    answers: list[str]


def write_report(store: StudyStore, path: Path | None = None) -> Report:
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
