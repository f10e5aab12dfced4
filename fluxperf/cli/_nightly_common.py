"""Shared pieces of the nightly verbs (`fluxperf history|explain|bisect|nightly`): options, statuses, readers."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

DEFAULT_HISTORY = "runs/nightly/history.jsonl"
EXIT_INSTALL_IMPOSSIBLE = 2
EXIT_NOTHING_TO_JUDGE = 4
EXIT_CORRUPT_HISTORY = 12  # the history is a stored record like a baseline: same status as a corrupt baseline


def history_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", default=os.environ.get("FLUXPERF_HISTORY", DEFAULT_HISTORY),
                   help=f"JSONL history file (default $FLUXPERF_HISTORY or {DEFAULT_HISTORY})")


def changepoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.01, help="permutation-test significance (default 0.01)")
    p.add_argument("--min-rel-change", type=float, default=0.02, help="smallest step reported (default 0.02)")
    p.add_argument("--min-size", type=int, default=3, help="fewest nightlies on each side of a step")


def read_history(path: str) -> list[dict] | None:
    """The history's entries; None (after printing the named error) when a line is corrupt."""
    from fluxperf.nightly.history import load_history

    try:
        return load_history(path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def tier_status(text: str) -> tuple[str, int | None]:
    name, sep, rc = text.partition("=")
    if not sep or not name or not (rc in ("", "-") or rc.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} must be NAME=RC with RC a whole number, e.g. numerics=0 "
                                         "(RC empty or '-' = not run)")
    return name, None if rc in ("", "-") else int(rc)


def iso_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD, e.g. 2026-11-22") from None
