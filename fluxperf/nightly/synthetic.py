"""Synthetic pytest-benchmark records, for CPU tests of the nightly pipeline and for the fake perf tier.

`python -m fluxperf.nightly.synthetic OUT.json --median 120 --rounds 12 [--verdict regression] [--name N]`
writes one run file shaped like the perf tier's (`--benchmark-json` with machine_info.fluxperf and, when a
verdict is given, extra_info.verdict as the fluxperf pytest plugin writes it).

Example:
    >>> doc = benchmark_doc({"perf/test_step.py::test_step[bf16]": [100.0, 101.0, 99.5]})
    >>> doc["benchmarks"][0]["stats"]["data"][0]
    0.1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence

from fluxperf.bench.fakes import H100, fake_run
from fluxperf.bench.fakes import noisy as fakes_noisy
from fluxperf.io import atomic_write_text as atomic_write


def benchmark_doc(samples_ms: dict[str, Sequence[float]], *, verdicts: dict[str, str] | None = None,
                  gpu: str = H100, torch: str = "2.14.0.dev20261122+cu130",
                  kernel_tables: dict[str, list[dict]] | None = None) -> dict:
    """A pytest-benchmark JSON document with the given per-round samples (ms) per benchmark full name.

    Built by the one fake-run builder (fluxperf.bench.fakes.fake_run), then decorated as the nightly needs.

    Args:
        samples_ms: benchmark full name -> per-round samples in milliseconds (stored in seconds, as pytest-benchmark).
        verdicts: benchmark -> perf-tier outcome ("pass", "regression", "inconclusive") to put in extra_info.
        gpu, torch: the GPU name and torch version machine_info.fluxperf records.
        kernel_tables: benchmark -> kernel-table records to put in extra_info["kernel_table"].
    """
    doc = fake_run({n: [x / 1e3 for x in xs] for n, xs in samples_ms.items()}, gpu=gpu,
                   versions={"torch": torch, "torchao": "0.16.0.dev20261122"})
    for bench in doc["benchmarks"]:
        name, extra = bench["fullname"], bench["extra_info"]
        if verdicts and name in verdicts:
            extra["verdict"] = {"outcome": verdicts[name], "baseline_median_ms": None,
                                "current_median_ms": statistics.median(samples_ms[name]), "decided_by": "raw"}
        if kernel_tables and name in kernel_tables:
            extra["kernel_table"] = kernel_tables[name]
    return doc


def noisy(median: float, rounds: int, *, rel_noise: float = 0.005, seed: int = 0) -> list[float]:
    """`rounds` samples around `median` with Gaussian relative noise (seeded; fluxperf.bench.fakes.noisy)."""
    return fakes_noisy(median, rounds, cv=rel_noise, seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--name", default="perf/test_nightly_fake.py::test_step[bf16]")
    p.add_argument("--median", type=float, required=True)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verdict", choices=["pass", "regression", "inconclusive"])
    p.add_argument("--kernel-table", help="JSON list of {name, count, cuda_time_us} records for extra_info")
    a = p.parse_args(argv)
    tables = {a.name: json.loads(a.kernel_table)} if a.kernel_table else None
    doc = benchmark_doc({a.name: noisy(a.median, a.rounds, seed=a.seed)},
                        verdicts={a.name: a.verdict} if a.verdict else None, kernel_tables=tables)
    atomic_write(a.out, json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
