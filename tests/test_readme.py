"""The README's command-line tour parses: every documented command, flag and value reaches the command as written."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from softclip.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def documented_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [part.strip() for line in lines for part in line.split("&&")]


def documented_commands() -> list[str]:
    return [line for line in documented_lines() if line.startswith("softclip ") and "..." not in line]


def given_options(parser, argv: list[str]) -> dict[str, str | None]:
    """'--batch-size 128' -> {'batch_size': '128'} (by the option's destination); a flag -> {'json': None}."""
    command = parser._subparsers._group_actions[0].choices[argv[0]]
    options = {}
    for i, token in enumerate(argv[1:], start=1):
        if token.startswith("-"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else None
            options[command._option_string_actions[token].dest] = value
    return options


def test_the_readme_documents_commands() -> None:
    assert len(documented_commands()) >= 10


@pytest.mark.parametrize("line", documented_commands())
def test_documented_command_parses_as_written(line: str) -> None:
    argv = shlex.split(line.replace("[--int8 | --fp16]", "--int8"))[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    assert args.command == argv[0]
    for dest, value in given_options(parser, argv).items():
        parsed = getattr(args, dest)
        if value is None:
            assert isinstance(parsed, bool), f"{line}: {dest} is not a flag"
        else:
            assert parsed == type(parsed)(value), f"{line}: --{dest} {value} reached the command as {parsed!r}"


def test_every_documented_python_module_runs() -> None:
    modules = [m for line in documented_lines() for m in re.findall(r"-m (\S+)", line)]
    assert "softclip.cli" in modules
    for module in modules:
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"README runs -m {module}, which does not exist"
        runnable = spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__")
        assert runnable, f"README runs -m {module}, a package without __main__"


def test_a_misspelt_option_would_fail() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "photos.idx", "a red circle", "--top", "10"])


def test_readme_shows_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
