"""``effnets`` command line: parses, calls the public API, prints.

Each command group lives in its own module exposing ``add_commands(subparsers)``; the
parsers set ``func`` to a callable taking the parsed args and returning an exit code.
Usage errors (bad names, settings, paths) exit with code 2 and one clear line, no trace."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import EffnetsError

# Command-group modules (each has add_commands(subparsers)).
COMMAND_MODULES = [
    "effnets.commands.models",
    "effnets.commands.train",
    "effnets.commands.demo",
    "effnets.commands.deploy",
    "effnets.commands.scaling",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnets", description="Efficient image recognition networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (EffnetsError, FileNotFoundError, NotADirectoryError) as e:
        msg = " ".join(str(e).split("\n"))  # one line, whatever the message holds
        print(f"effnets {args.command}: error: {msg}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))  # 2: usage; 1: a run that failed (TrainingError)
    except BrokenPipeError:  # e.g. `effnets list | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
