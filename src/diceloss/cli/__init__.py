"""The ``diceloss`` command: one subcommand per module of this package (``diceloss <command> --help``).

A subcommand module defines ``add_parser(subparsers)``, which registers its parser and sets
``func`` (a callable taking the parsed arguments and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module of diceloss.cli; each is imported only when the command line is parsed
COMMANDS = ("demo", "eval", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diceloss", description="Dice-family segmentation losses and metrics.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"diceloss.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"diceloss.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
