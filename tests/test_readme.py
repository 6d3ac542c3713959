"""The README's command-line tour parses: every documented command and flag exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from softclip.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def documented_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    commands = []
    for line in lines:
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("softclip ") and "..." not in part:
                commands.append(part)
    return commands


def test_the_readme_documents_commands() -> None:
    assert len(documented_commands()) >= 10


@pytest.mark.parametrize("line", documented_commands())
def test_documented_command_parses(line: str) -> None:
    argv = shlex.split(line.replace("[--int8 | --fp16]", "--int8"))[1:]
    args = build_parser().parse_args(argv)
    assert callable(args.run)


def test_readme_shows_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
