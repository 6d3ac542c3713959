"""`softclip train`: the options that describe a `TrainConfig`, and the call to the trainer."""

from __future__ import annotations

import argparse

from softclip.cli.registry import command


@command("train", "train a CLIP or SoftCLIP model (runs unchanged under torchrun)")
def _train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-vit", help="preset name or config JSON (training from scratch)")
    parser.add_argument("--init", default=None, help="start from these weights: a checkpoint, a CLIP source or Hub id")
    parser.add_argument("--tokenizer", default=None, help="CLIP vocab.json + merges.txt folder for an --init .pt file")
    parser.add_argument("--data", default="synth", help="synth, a CSV/TSV, WebDataset shards or a VinVL join CSV")
    parser.add_argument(
        "--vinvl",
        default=None,
        help="VinVL features joined to --data by key: a scene_graph_benchmark predictions.tsv, or a folder of "
        "Microsoft's pre-extracted features (features.tsv + predictions.tsv) or of such chunk folders",
    )
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
        init=args.init,
        init_tokenizer=args.tokenizer,
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
