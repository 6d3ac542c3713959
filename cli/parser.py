"""The `softclip` parser built from every registered command, and `main`, the console script's entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from softclip.cli import commands, train  # noqa: F401  (each registers its commands, train first)
from softclip.cli.registry import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softclip",
        description="Train SoftCLIP models, export them to ONNX, index, search, label and explain photo collections.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, build in COMMANDS.items():
        build(subparsers.add_parser(name, help=build.help, description=build.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `softclip` console script; tests call it with a list of arguments.

    Bad input (a missing file, a mismatched model, a corrupt checkpoint) ends with one clear line on
    stderr and exit status 2, not a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as error:  # IndexBusyError is an OSError too
        print(f"softclip: error: {error}", file=sys.stderr)
        return 2
