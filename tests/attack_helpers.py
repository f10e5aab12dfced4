"""Helpers shared by the attack regression tests (test_attack_new_features.py: the bugs as found;
test_attack_classes.py: the class behind each)."""

from __future__ import annotations

import os
from pathlib import Path

from fluxperf.cli import build_parser, main


def _plan(argv):
    from fluxperf.cli._generate_plan import make_plan

    return make_plan(build_parser().parse_args(["generate", *argv]))


def _status(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return exc.code


def _one_line_refusal(argv, capsys) -> str:
    """Run the CLI; assert exit status 2, no traceback and exactly one error line; return that line."""
    assert _status(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _name_max(directory: Path) -> int:
    return os.pathconf(directory, "PC_NAME_MAX")


EAGER = ["--no-compile", "--no-flags", "--device", "cpu"]  # path/option handling: the same on every machine


def _yaml(tmp_path, data: bytes) -> str:
    path = tmp_path / "cache.yaml"
    path.write_bytes(data)
    return str(path)
