"""Bisect over nightlies: search logic with a fake installer and fake measurements; nightly index helpers."""

import http.server
import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxperf.nightly.bisect import Measurement, bisect_versions
from fluxperf.nightly.install import (
    InstallError,
    nightly_date,
    parse_index_page,
    probe_index,
    same_day,
    select_range,
)
from fluxperf.nightly.synthetic import noisy


class FakeNightlies:
    """Versions v0..v(n-1); from `first_bad` on, the benchmark is `slowdown` times slower."""

    def __init__(self, n, first_bad, slowdown=1.2, broken=()):
        self.versions = [f"2.14.0.dev202611{i + 1:02d}" if n <= 30 else f"v{i}" for i in range(n)]
        self.first_bad, self.slowdown, self.broken = first_bad, slowdown, set(broken)
        self.installed, self.runs = None, 0

    def install(self, version):
        if version in self.broken:
            raise InstallError(f"no wheel for {version}")
        self.installed = version

    def measure(self, version):
        assert version == self.installed, "measured a version that is not installed"
        self.runs += 1
        i = self.versions.index(version)
        factor = self.slowdown if i >= self.first_bad else 1.0
        return Measurement(True, tuple(noisy(100.0 * factor, 12, seed=i)))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_monotone_history_first_bad_found_within_log2_bound(data):
    n = data.draw(st.integers(2, 300), label="n")
    first_bad = data.draw(st.integers(1, n - 1), label="first_bad")
    fake = FakeNightlies(n, first_bad)
    result = bisect_versions(fake.versions, install=fake.install, measure=fake.measure)
    assert result.first_bad == fake.versions[first_bad]
    assert result.last_good == fake.versions[first_bad - 1]
    assert fake.runs == result.runs <= math.ceil(math.log2(n)) + 1
    assert any(p.version == result.first_bad and p.outcome == "bad" for p in result.probes)  # measured itself


def test_report_prints_the_first_bad_nightly_with_values():
    fake = FakeNightlies(10, 6)
    text = bisect_versions(fake.versions, install=fake.install, measure=fake.measure).report()
    assert f"first bad nightly: {fake.versions[6]}" in text and "median 1" in text and "last good" in text


def test_uninstallable_nightlies_are_skipped():
    fake = FakeNightlies(16, 9, broken={"2.14.0.dev20261108", "2.14.0.dev20261109"})
    result = bisect_versions(fake.versions, install=fake.install, measure=fake.measure)
    assert result.first_bad == fake.versions[9]
    assert {p.version for p in result.probes if p.outcome == "skipped"} <= {"2.14.0.dev20261108",
                                                                              "2.14.0.dev20261109"}


def test_first_bad_skipped_reports_the_next_measured_bad():
    fake = FakeNightlies(8, 4, broken={"2.14.0.dev20261105"})
    result = bisect_versions(fake.versions, install=fake.install, measure=fake.measure)
    assert result.first_bad == fake.versions[5] and result.last_good == fake.versions[3]


def test_bad_end_that_does_not_reproduce_gives_none():
    fake = FakeNightlies(8, 99)
    result = bisect_versions(fake.versions, install=fake.install, measure=fake.measure)
    assert result.first_bad is None and "did not reproduce" in result.report()


def test_small_slowdown_below_the_threshold_is_not_bad():
    fake = FakeNightlies(8, 3, slowdown=1.005)
    assert bisect_versions(fake.versions, install=fake.install, measure=fake.measure).first_bad is None


def test_pass_fail_tests_and_a_failing_good_end():
    versions = [f"v{i}" for i in range(12)]
    result = bisect_versions(versions, install=lambda v: None, measure=lambda v: Measurement(int(v[1:]) < 7))
    assert result.first_bad == "v7"
    with pytest.raises(ValueError, match="earlier good nightly"):
        bisect_versions(versions, install=lambda v: None, measure=lambda v: Measurement(False, detail="boom"))


def test_stored_reference_skips_the_reference_run():
    fake = FakeNightlies(9, 5)
    ref = Measurement(True, tuple(noisy(100.0, 12, seed=99)))
    result = bisect_versions(fake.versions, install=fake.install, measure=fake.measure, reference=ref)
    assert result.first_bad == fake.versions[5] and fake.runs <= math.ceil(math.log2(9))


def test_inconclusive_probe_is_repeated():
    calls = []

    def measure(v):
        calls.append(v)
        return Measurement(True, (100.0, 120.0) if v == "v1" else (100.0, 100.5))

    result = bisect_versions(["v0", "v1"], install=lambda v: None, measure=measure, max_repeats=2)
    assert calls == ["v0", "v1", "v1", "v1"]  # 2 vs 2 rounds can never be significant: repeats pooled
    assert result.probes[-1].measurement.samples_ms == (100.0, 120.0) * 3


def test_nightly_dates_and_ranges():
    assert str(nightly_date("2.14.0.dev20261120+cu130")) == "2026-11-20" and nightly_date("2.13.0") is None
    vs = ["2.14.0.dev20261118", "2.14.0.dev20261119+cu130", "2.14.0.dev20261120", "2.14.0.dev20261122"]
    assert select_range(vs, "2026-11-19", "2.14.0.dev20261122") == vs[1:]
    with pytest.raises(ValueError, match="earlier"):
        select_range(vs, "2026-11-22", "2026-11-19")
    with pytest.raises(ValueError, match="no nightly for"):
        select_range(vs, "2026-11-19", "2026-11-21")
    with pytest.raises(ValueError, match="neither"):
        select_range(vs, "yesterday", "2026-11-22")
    assert same_day(["0.16.0.dev20261119", "0.16.0.dev20261120"], nightly_date(vs[2])) == "0.16.0.dev20261120"


PAGE = """<html><body>
<a href="/whl/nightly/cu130/torch-2.14.0.dev20261121%2Bcu130-cp311-cp311-manylinux_2_28_x86_64.whl#sha256=1">x</a>
<a href="/whl/nightly/cu130/torch-2.14.0.dev20261120%2Bcu130-cp311-cp311-manylinux_2_28_x86_64.whl">x</a>
<a href="/whl/nightly/cu130/torch-2.14.0.dev20261122%2Bcu130-cp312-cp312-manylinux_2_28_x86_64.whl">x</a>
<a href="/whl/nightly/cu130/torchvision-0.25.0.dev20261122%2Bcu130-cp311-cp311-linux_x86_64.whl">x</a>
</body></html>"""


def test_parse_index_page_filters_python_and_package():
    assert parse_index_page(PAGE, "torch", "cp311") == ["2.14.0.dev20261120+cu130", "2.14.0.dev20261121+cu130"]


def test_probe_index_unreachable_and_reachable():
    ok, why = probe_index("http://127.0.0.1:9/whl/nightly/cu130", timeout=3)
    assert not ok and "127.0.0.1:9" in why

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = PAGE.encode() if self.path.endswith("/torch/") else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/whl"
        assert probe_index(url)[0]
        ok, why = probe_index(url, package="torchao")
        assert not ok and "404" in why
        from fluxperf.nightly.install import list_versions

        assert list_versions(url, python_tag="cp312") == ["2.14.0.dev20261122+cu130"]
    finally:
        server.shutdown()
        server.server_close()
