"""`softclip train`: the options that describe a `TrainConfig` (and its `LossConfig`), and the call to the trainer.

Every option's destination is the config field it sets and no option has a default of its own: an option not
given is left out, so the dataclasses are the one source of every default.
"""

from __future__ import annotations

import argparse
import dataclasses

from softclip.cli.registry import command


@command("train", "train a CLIP or SoftCLIP model (runs unchanged under torchrun)")
def _train(parser: argparse.ArgumentParser) -> None:
    parser.argument_default = argparse.SUPPRESS  # an option not given keeps TrainConfig's or LossConfig's default
    parser.add_argument("--model", help="preset name or config JSON (training from scratch)")
    parser.add_argument("--init", help="start from these weights: a checkpoint, a CLIP source or Hub id")
    parser.add_argument(
        "--tokenizer", dest="init_tokenizer", help="CLIP vocab.json + merges.txt folder for an --init .pt file"
    )
    parser.add_argument("--data", help="synth, a CSV/TSV, WebDataset shards or a VinVL join CSV")
    parser.add_argument(
        "--vinvl",
        help="VinVL features joined to --data by key: a scene_graph_benchmark predictions.tsv, or a folder of "
        "Microsoft's pre-extracted features (features.tsv + predictions.tsv) or of such chunk folders",
    )
    parser.add_argument("--out", help="output folder (checkpoints, metrics, final model)")
    parser.add_argument("--loss", dest="variant", help="clip, label_smoothing, soft, soft_relation or softclip")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch over all ranks")
    parser.add_argument("--accum-steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup", type=float, help="fraction of steps of linear warm-up")
    parser.add_argument("--precision", help="fp32, bf16, fp16 or auto")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--save-every", type=int, help="also checkpoint every K steps")
    parser.add_argument("--eval-every", type=int, help="evaluate every K steps (default: each epoch)")
    parser.add_argument("--no-eval", dest="evaluate", action="store_false", help="skip the built-in evaluation")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint file")
    parser.add_argument("--vocab-size", type=int, help="tokenizer vocabulary (default: the model's)")
    parser.add_argument("--synth-size", type=int, help="SynthScenes samples per epoch")
    parser.add_argument("--caption-noise", type=float, help="SynthScenes caption noise rate")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no random resized crops")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--beta", type=float)
    loss.add_argument("--lam", type=float)
    loss.add_argument("--mu", type=float)
    loss.add_argument("--label-smoothing", type=float)
    loss.add_argument("--guidance", help="roi_tag, image_text or mix")
    loss.add_argument("--gamma", type=float, help="weight of the ROI-tag guidance in mix")
    loss.add_argument(
        "--detach-targets",
        action=argparse.BooleanOptionalAction,
        help="soft targets carry no gradient (default: the measured one, see docs/method.md)",
    )
    loss.add_argument("--roi-tag-align", type=float, help="weight of the ROI-tag CLIP loss")

    def run(args: argparse.Namespace) -> int:
        from softclip.training.trainer import train

        print(f"final model: {train(train_config(args), resume=args.resume)}")
        return 0

    parser.set_defaults(run=run)


def train_config(args: argparse.Namespace):
    """The `TrainConfig` that `softclip train` arguments describe: the options given, every other field its default."""
    from softclip.loss import LossConfig
    from softclip.training.trainer import TrainConfig

    given = vars(args)
    loss = LossConfig(**_given_fields(LossConfig, given))
    return TrainConfig(loss=loss, **_given_fields(TrainConfig, given))


def _given_fields(config_class: type, given: dict) -> dict:
    return {field.name: given[field.name] for field in dataclasses.fields(config_class) if field.name in given}
