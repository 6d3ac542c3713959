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
            rows = [
                {"image": str(path), "labels": [vars(s) for s in scores]} for path, scores in zip(args.images, results)
            ]
            print(json.dumps(rows, indent=2))
        else:
            for path, scores in zip(args.images, results):
                print(f"{path}\t" + "  ".join(f"{s.label} {s.probability:.3f}" for s in scores))
        return 0

    parser.set_defaults(run=run)


@command("train", "train a CLIP or SoftCLIP model (runs unchanged under torchrun)")
def _train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-vit", help="preset name or config JSON")
    parser.add_argument("--data", default="synth", help="synth, a CSV/TSV, WebDataset shards or a VinVL join CSV")
    parser.add_argument("--vinvl", default=None, help="VinVL predictions.tsv to join to the --data CSV by image key")
    parser.add_argument("--out", default="runs/softclip", help="output folder (checkpoints, metrics, final model)")
    parser.add_argument("--loss", default="softclip", help="clip, label_smoothing, soft, soft_relation or softclip")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch over all ranks")
    parser.add_argument("--accum-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.2)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of steps of linear warm-up")
    parser.add_argument("--precision", default="auto", help="fp32, bf16, fp16 or auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="data loader processes")
    parser.add_argument("--save-every", type=int, default=0, help="also checkpoint every K steps")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every K steps (default: each epoch)")
    parser.add_argument("--no-eval", action="store_true", help="skip the built-in evaluation")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint file")
    parser.add_argument("--vocab-size", type=int, default=0, help="tokenizer vocabulary (default: the model's)")
    parser.add_argument("--synth-size", type=int, default=100_000, help="SynthScenes samples per epoch")
    parser.add_argument("--caption-noise", type=float, default=0.2, help="SynthScenes caption noise rate")
    parser.add_argument("--no-augment", action="store_true", help="no random resized crops")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--beta", type=float, default=0.3)
    loss.add_argument("--lam", type=float, default=1.0)
    loss.add_argument("--mu", type=float, default=0.5)
    loss.add_argument("--label-smoothing", type=float, default=None)
    loss.add_argument("--guidance", default="roi_tag", help="roi_tag, image_text or mix")
    loss.add_argument("--gamma", type=float, default=0.5, help="weight of the ROI-tag guidance in mix")
    loss.add_argument(
        "--detach-targets",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="soft targets carry no gradient (default: the measured one, see docs/method.md)",
    )
    loss.add_argument("--roi-tag-align", type=float, default=None, help="weight of the ROI-tag CLIP loss")

    def run(args: argparse.Namespace) -> int:
        from softclip.training.trainer import train

        print(f"final model: {train(train_config(args), resume=args.resume)}")
        return 0

    parser.set_defaults(run=run)


def train_config(args: argparse.Namespace):
    """The `TrainConfig` that `softclip train` arguments describe."""
    from softclip.loss import LossConfig
    from softclip.training.trainer import TrainConfig

    loss = LossConfig(
        variant=args.loss,
        beta=args.beta,
        lam=args.lam,
        mu=args.mu,
        label_smoothing=args.label_smoothing,
        guidance=args.guidance,
        gamma=args.gamma,
    )
    if args.detach_targets is not None:
        loss.detach_targets = args.detach_targets
    if args.roi_tag_align is not None:
        loss.roi_tag_align = args.roi_tag_align
    return TrainConfig(
        model=args.model,
        data=args.data,
        vinvl=args.vinvl,
        out=args.out,
        loss=loss,
        steps=args.steps,
        batch_size=args.batch_size,
        accum_steps=args.accum_steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        precision=args.precision,
        seed=args.seed,
        workers=args.workers,
        save_every=args.save_every,
        eval_every=args.eval_every,
        vocab_size=args.vocab_size,
        synth_size=args.synth_size,
        caption_noise=args.caption_noise,
        augment=not args.no_augment,
        evaluate=not args.no_eval,
    )


@command("synth", "write a SynthScenes split to disk as a CSV table or WebDataset shards")
def _synth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder")
    parser.add_argument("--n", type=int, default=1000, help="number of samples")
    parser.add_argument("--seed", type=int, default=None, help="dataset seed (default: the split's)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--format", default="csv", choices=["csv", "wds"])
    parser.add_argument("--caption-noise", type=float, default=0.2)
    parser.add_argument("--image-size", type=int, default=64)

    def run(args: argparse.Namespace) -> int:
        from softclip.training.synthetic import SynthConfig, write_split

        config = SynthConfig(image_size=args.image_size, caption_noise=args.caption_noise, split=args.split)
        print(write_split(args.out, args.n, seed=args.seed, fmt=args.format, config=config))
        return 0

    parser.set_defaults(run=run)


@command("eval", "evaluate a checkpoint or export: zero-shot, retrieval or the pointing game")
def _eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint folder, Hub id or ONNX export folder")
    parser.add_argument("--task", choices=["zeroshot", "retrieval", "pointing"], default="zeroshot")
    parser.add_argument("--data", default="synth", help="synth, a folder of class subfolders, or a caption CSV")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")

    def run(args: argparse.Namespace) -> int:
        from softclip.training.evaluate import evaluate

        metrics = evaluate(args.model, args.task, args.data)
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            for name, value in metrics.items():
                print(f"{name:>28}  {value:.4f}" if isinstance(value, float) else f"{name:>28}  {value}")
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
