"""The registry of `softclip` subcommands: each module of commands adds its builders here."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help: str) -> Callable:
    """Register `fn(parser)` as the builder of subcommand `name`; it sets the parser's `run` default."""

    def register(build: Callable[[argparse.ArgumentParser], None]) -> Callable:
        build.help = help
        COMMANDS[name] = build
        return build

    return register
