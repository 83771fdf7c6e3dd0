"""`tgrow`: the command-line interface, a thin layer over the Python API.

Each sub-command lives in its own module in this package and exposes two functions:
``add_parser(subparsers)`` (registers the sub-command and every option, with help) and
``run(args) -> int`` (does the work through the Python API and returns the exit code).
A malformed command line and any :class:`~transformer_grow.errors.ConfigError` become one line on
stderr and exit code 2; so does a disk error (full, read-only, no permission, a file where a directory
must be) before the run takes its output directory, and after that exit code 1. The options that set
config fields are generated from the config dataclasses (:mod:`transformer_grow.cli.flags`).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from transformer_grow.errors import ConfigError
from transformer_grow.io import lock_acquisitions

# Sub-command modules, in the order `tgrow --help` lists them.
COMMANDS = ["train", "eval", "sample", "grow", "share", "plan", "compare", "scaling", "hf"]
# Errors of the filesystem rather than of the program: one line, not a traceback.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST,
                         errno.EISDIR, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOENT, errno.ELOOP})


class UsageError(Exception):
    """A malformed command line (unknown flag, a value of the wrong type, a missing argument)."""


class OneLineParser(argparse.ArgumentParser):
    """Reports a malformed command line in one line (like a refused setting), not with the usage block."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. to print the command that resumes a run
    locks_before = lock_acquisitions()
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"tgrow {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except ValueError as e:
        if "embedded null byte" not in str(e):  # a path given with a NUL character in it
            raise
        print(f"tgrow {args.command}: error: a path on the command line contains a NUL character", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        # Once a run holds its output directory, work has started: exit 1 (a failure mid-run); a
        # refusal before that (e.g. --out on a read-only filesystem) is a bad setting: exit 2.
        mid_run = lock_acquisitions() > locks_before
        print(f"tgrow {args.command}: error: {describe_os_error(e)}"
              + ("; the last checkpoint written before it is intact" if mid_run else ""), file=sys.stderr)
        return 1 if mid_run else 2
    except KeyboardInterrupt:
        print(f"tgrow {args.command}: interrupted", file=sys.stderr)
        return 130


def describe_os_error(e: OSError) -> str:
    """``cannot write 'PATH': No space left on device`` from a disk error."""
    path = e.filename if e.filename is not None else "a file"
    hint = {errno.ENOSPC: "free some space", errno.EROFS: "choose a writable location",
            errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
            errno.ENOTDIR: "a path component is a file, not a directory",
            errno.EEXIST: "a file is in the way", errno.EISDIR: "a directory is in the way",
            errno.EDQUOT: "the disk quota is exhausted"}.get(e.errno, "")
    text = f"cannot use {str(path)!r}: {e.strerror or os.strerror(e.errno)}"
    return f"{text} ({hint})" if hint else text


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
