"""Studies: grids of data and weight policies against full data and random baselines.

``run_study("study.toml", out="studies/x")`` validates the config, expands the grid (baselines
added automatically, paired by seed), computes each score table once, runs everything (in this
process, a process pool, or on Ray), stores one row per run × evaluation in Parquet, and writes
a self-contained ``report.html``. See :mod:`prunus.study.config` for the TOML format.
"""

from __future__ import annotations

from prunus.lazy import lazy_getattr

# Importing this package is light (the CLI's start-up depends on it): the harness, which
# imports torch, loads on first use.
_HOME = {
    "StudyConfig": "schema", "load_config": "config", "parse_config": "config",
    "StudyResult": "harness", "run_study": "harness", "query": "sql",
    "write_report": "report", "StudyStore": "store",
}


__getattr__ = lazy_getattr(__name__, _HOME)

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
