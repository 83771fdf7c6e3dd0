"""`tgrow`: the command-line interface, a thin layer over the Python API.

Each sub-command lives in its own module in this package and exposes two functions:
``add_parser(subparsers)`` (registers the sub-command and every option, with help) and
``run(args) -> int`` (does the work through the Python API and returns the exit code).
Any :class:`~transformer_grow.errors.ConfigError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from transformer_grow.errors import ConfigError

# Sub-command modules, in the order `tgrow --help` lists them.
COMMANDS = ["train", "eval", "sample", "grow", "plan", "compare", "scaling"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgrow",
        description="Grow Transformer language models during pre-training.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"transformer_grow.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"tgrow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tgrow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
