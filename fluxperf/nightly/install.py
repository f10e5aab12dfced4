"""PyTorch nightly wheels: is the index reachable, which nightlies does it hold, install one.

The index is PyTorch's nightly channel (a PEP 503 "simple" index). Its URL comes from the caller, else
$FLUXPERF_TORCH_INDEX, else DEFAULT_INDEX. Nothing here runs at import time; everything that touches the
network has a timeout and says why it failed, so an offline runner learns "the install is impossible" in
seconds rather than hanging.

Example:
    >>> nightly_date("2.14.0.dev20261120+cu130")
    datetime.date(2026, 11, 20)
"""

from __future__ import annotations

import datetime as dt
import html.parser
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from fluxperf.errors import FluxperfError

DEFAULT_INDEX = "https://download.pytorch.org/whl/nightly/cu130"
_DEV_DATE = re.compile(r"\.dev(\d{8})")


class InstallError(FluxperfError, RuntimeError):
    """A nightly could not be installed (index unreachable, version missing, pip failed)."""


def index_url(explicit: str | None = None) -> str:
    """The nightly index to use: `explicit`, else $FLUXPERF_TORCH_INDEX, else DEFAULT_INDEX."""
    return (explicit or os.environ.get("FLUXPERF_TORCH_INDEX") or DEFAULT_INDEX).rstrip("/")


def probe_index(url: str, package: str = "torch", timeout: float = 10.0) -> tuple[bool, str]:
    """(reachable, reason): can the project page `<url>/<package>/` of the index be read?"""
    page = f"{url.rstrip('/')}/{package}/"
    try:
        with urllib.request.urlopen(page, timeout=timeout) as resp:
            resp.read(1)
            return True, f"{page} answered HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{page} answered HTTP {exc.code} ({exc.reason})"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"cannot reach {page}: {getattr(exc, 'reason', exc)}"


def list_versions(url: str, package: str = "torch", *, python_tag: str | None = None,
                  timeout: float = 30.0) -> list[str]:
    """Versions of `package` on the index that have a wheel for this Python (e.g. tag 'cp312'), sorted by date.

    Raises InstallError when the index cannot be read.
    """
    tag = python_tag or f"cp{sys.version_info.major}{sys.version_info.minor}"
    page = f"{url.rstrip('/')}/{package}/"
    try:
        with urllib.request.urlopen(page, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise InstallError(f"cannot list {package} nightlies at {page}: {getattr(exc, 'reason', exc)}. "
                           "Check the network or pass --index-url.") from None
    return parse_index_page(text, package, tag)


def parse_index_page(text: str, package: str, python_tag: str) -> list[str]:
    """Versions of `package` in a PEP 503 project page with a wheel for `python_tag`, sorted by (date, version)."""
    parser = _Links()
    parser.feed(text)
    norm = package.replace("-", "_")
    versions = set()
    for name in parser.files:
        parts = name.split("-")
        if name.endswith(".whl") and len(parts) >= 5 and parts[0].replace("-", "_") == norm and \
                (python_tag in parts[2].split(".") or parts[2] in ("py3", "py2.py3")):
            versions.add(urllib.request.unquote(parts[1]))
    return sorted(versions, key=lambda v: (nightly_date(v) or dt.date.min, v))


def nightly_date(version: str) -> dt.date | None:
    """The build date in a nightly version ('2.14.0.dev20261120+cu130' -> 2026-11-20), or None."""
    m = _DEV_DATE.search(version)
    return dt.datetime.strptime(m.group(1), "%Y%m%d").date() if m else None


def select_range(versions: Sequence[str], good: str, bad: str) -> list[str]:
    """The nightlies from `good` to `bad` inclusive, one per date, in date order.

    `good`/`bad` are nightly dates (2026-11-20 or 20261120) or versions from `versions`.

    Example:
        >>> select_range(["2.14.0.dev20261101", "2.14.0.dev20261102", "2.14.0.dev20261103"], "2026-11-01", "20261102")
        ['2.14.0.dev20261101', '2.14.0.dev20261102']
    """
    by_date: dict[dt.date, str] = {}
    for v in versions:
        d = nightly_date(v)
        if d is not None:
            by_date[d] = v  # the last listed build of a day wins
    lo, hi = _as_date(good, by_date), _as_date(bad, by_date)
    if lo >= hi:
        raise ValueError(f"good={good!r} ({lo}) must be an earlier nightly than bad={bad!r} ({hi}).")
    picked = [by_date[d] for d in sorted(by_date) if lo <= d <= hi]
    if not picked or nightly_date(picked[0]) != lo or nightly_date(picked[-1]) != hi:
        raise ValueError(f"the index has no nightly for {lo} or {hi}; pick dates from: "
                         f"{[str(d) for d in sorted(by_date)][-10:]} (last 10 shown).")
    return picked


def _as_date(text: str, by_date: dict[dt.date, str]) -> dt.date:
    d = nightly_date(text)
    if d is not None:
        return d
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"{text!r} is neither a nightly date (YYYY-MM-DD) nor a nightly version (x.y.z.devYYYYMMDD).")


@dataclass
class PipInstaller:
    """Install torch==<version> (and the torchao nightly of the same date, if the index has one) with pip.

    Call it with a torch version; raises InstallError when pip fails.
    """

    url: str
    with_torchao: bool = True
    timeout: float = 1800.0

    def __call__(self, version: str) -> None:
        specs = [f"torch=={version}"]
        if self.with_torchao:
            ao = same_day(list_versions(self.url, "torchao", python_tag="py3"), nightly_date(version))
            specs += [f"torchao=={ao}"] if ao else []
        cmd = [sys.executable, "-m", "pip", "install", "--pre", "--upgrade", "--index-url", self.url, *specs]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        if done.returncode != 0:
            raise InstallError(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()[-800:]}")


def same_day(versions: Sequence[str], day: dt.date | None) -> str | None:
    """The last of `versions` built on `day` (None if none)."""
    hits = [v for v in versions if day is not None and nightly_date(v) == day]
    return hits[-1] if hits else None


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.files: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.files.append(href.split("#")[0].rsplit("/", 1)[-1])
