"""Nightly GPU CI support: history of nightly benchmark records, trend plots, change-point detection,
regression confirmation and the nightly bisect helper. Every verdict comes from the one judge in fluxperf.bench
(judge, stats, kernels); this package imports from bench, never the other way.

Nothing here imports torch, torchao or matplotlib at import time; each module imports what it needs inside
the functions that need it.

Modules:
    history      the JSONL history file: records from pytest-benchmark JSON, atomic append, loading
    changepoint  E-Divisive means change-point detection over a benchmark's nightly series
    confirm      one noisy night does not page anyone: a regression needs a second bad nightly or re-run
    trends       per-benchmark trend PNGs across nightlies
    install      nightly wheel index: reachability probe, version lists, pip installs
    bisect       binary search over nightlies for the first bad one
    report       the markdown summary of one nightly
"""
