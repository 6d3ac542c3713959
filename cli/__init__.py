"""The `softclip` command: argparse subcommands, each a thin adapter over an importable function.

Heavy modules (training, export, index, app) are imported inside the command that needs them, so
`softclip --help` and light commands start fast. `python -m softclip.cli` runs it too (as torchrun does).
"""

from softclip.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
