"""Studies: grids of data and weight policies against full data and random baselines.

``run_study("study.toml", out="studies/x")`` validates the config, expands the grid (baselines
added automatically, paired by seed), computes each score table once, runs everything (in this
process, a process pool, or on Ray), stores one row per run × evaluation in Parquet, and writes
a self-contained ``report.html``. See :mod:`prunus.study.config` for the TOML format.
"""

from __future__ import annotations

from prunus.study.config import StudyConfig, load_config, parse_config
from prunus.study.harness import StudyResult, run_study
from prunus.study.query import query
from prunus.study.report import write_report
from prunus.study.store import StudyStore

__all__ = [
    "StudyConfig",
    "StudyResult",
    "StudyStore",
    "load_config",
    "parse_config",
    "query",
    "run_study",
    "write_report",
]
