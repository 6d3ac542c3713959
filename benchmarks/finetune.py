"""Fine-tuning from an initialisation against training from scratch, on SynthScenes, side by side.

A base model is trained from scratch and saved (or given with --base); then two runs of the same short
budget start one from the base's weights (``--init``, the path a pretrained CLIP takes) and one from scratch.
Prints the training loss along the way and the SynthScenes evaluation at the end of each run.

    python benchmarks/finetune.py --base-steps 240 --steps 60 --batch-size 64 --out runs/finetune
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from softclip.encoder import open_encoder
from softclip.pretrained import from_pretrained
from softclip.training.synth_eval import quick
from softclip.training.trainer import TrainConfig, train

METRICS = ("colour_shape_top1", "shape_top1", "i2t_r1")


def run(name: str, out: Path, **options) -> tuple[Path, float]:
    """Train one run (skipped when its final model exists); its final model folder and the seconds it took."""
    final = out / name / "final"
    if final.is_dir():
        return final, float("nan")
    start = time.perf_counter()
    path = train(TrainConfig(out=str(out / name), evaluate=False, log_every=10, **options))
    return Path(path), time.perf_counter() - start


def losses(folder: Path) -> dict[int, float]:
    """Training loss by step, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="a trained checkpoint to start from (default: train one)")
    parser.add_argument("--base-steps", type=int, default=240)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate from scratch")
    parser.add_argument("--init-lr", type=float, default=1e-4, help="learning rate when fine-tuning")
    parser.add_argument("--out", default="runs/finetune")
    args = parser.parse_args()
    out = Path(args.out)
    common = {"batch_size": args.batch_size, "steps": args.steps, "warmup": 0.1}
    base = Path(args.base) if args.base else run("base", out, steps=args.base_steps, batch_size=args.batch_size)[0]
    tuned, tuned_seconds = run("init", out, init=str(base), lr=args.init_lr, **common)
    scratch, scratch_seconds = run("scratch", out, lr=args.lr, **common)
    evaluations = {
        name: quick(open_encoder(from_pretrained(path)))
        for name, path in (("base", base), ("init", tuned), ("scratch", scratch))
    }
    print(f"\nfine-tuning from {base} vs from scratch, {args.steps} steps x {args.batch_size}")
    print("| run | " + " | ".join(METRICS) + " | seconds |")
    print("| --- |" + " --- |" * (len(METRICS) + 1))
    for name, seconds in (("base", float("nan")), ("init", tuned_seconds), ("scratch", scratch_seconds)):
        values = " | ".join(f"{100 * evaluations[name][metric]:.1f}" for metric in METRICS)
        print(f"| {name} | {values} | {seconds:.0f} |")
    tuned_loss, scratch_loss = losses(out / "init"), losses(out / "scratch")
    print("\n| step | loss, --init | loss, scratch |\n| --- | --- | --- |")
    for step in sorted(set(tuned_loss) & set(scratch_loss)):
        print(f"| {step} | {tuned_loss[step]:.3f} | {scratch_loss[step]:.3f} |")


if __name__ == "__main__":
    main()
