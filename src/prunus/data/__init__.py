"""Data side of prunus: score examples, select a subset, or select online while training."""
