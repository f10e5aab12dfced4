"""The `fluxperf` command. argparse lives only in this package.

Each subcommand module in fluxperf/cli/ defines `register(subparsers)`, which adds its parser(s) and sets
`func=<callable(args) -> int exit status>`; main() discovers the modules, so adding a command never means
editing this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxperf", description="FLUX.1 inference: optimize, verify, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # __main__ runs the command when imported
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
