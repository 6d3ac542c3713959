"""The `softclip` command: argparse subcommands, each a thin adapter over an importable function.

Heavy modules (training, export, index, app) are imported inside the command that needs them, so
`softclip --help` and light commands start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help: str) -> Callable:
    """Register `fn(parser)` as the builder of subcommand `name`; it sets the parser's `run` default."""

    def register(build: Callable[[argparse.ArgumentParser], None]) -> Callable:
        build.help = help
        COMMANDS[name] = build
        return build

    return register


@command("presets", "list the model architectures shipped with softclip")
def _presets(parser: argparse.ArgumentParser) -> None:
    def run(args: argparse.Namespace) -> int:
        from softclip.config import list_presets

        print("\n".join(list_presets()))
        return 0

    parser.set_defaults(run=run)


@command("label", "label images zero-shot with a checkpoint or an export folder")
def _label(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", required=True, help="checkpoint folder, Hub id or ONNX export folder")
    parser.add_argument("--labels", required=True, help="comma-separated labels, e.g. 'cat,dog,car'")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args: argparse.Namespace) -> int:
        from softclip.zeroshot import label

        labels = parse_labels(args.labels)
        results = label(args.images, labels, model=args.model, top_k=args.top_k)
        if args.json:
            rows = [{"image": str(path), "labels": [vars(s) for s in scores]} for path, scores in zip(args.images, results)]
            print(json.dumps(rows, indent=2))
        else:
            for path, scores in zip(args.images, results):
                print(f"{path}\t" + "  ".join(f"{s.label} {s.probability:.3f}" for s in scores))
        return 0

    parser.set_defaults(run=run)


def parse_labels(text: str) -> list[str]:
    """'cat, dog,,car' -> ['cat', 'dog', 'car'], with a clear error when nothing is left."""
    labels = [part.strip() for part in text.split(",") if part.strip()]
    if not labels:
        raise SystemExit("softclip: --labels needs at least one comma-separated label")
    return labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softclip", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, build in COMMANDS.items():
        build(subparsers.add_parser(name, help=build.help, description=build.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `softclip` console script; tests call it with a list of arguments."""
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
