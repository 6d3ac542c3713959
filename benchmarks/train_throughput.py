"""Trainer throughput: samples/s of ``Trainer.train_step`` with the CLIP loss vs the SoftCLIP loss.

For each model preset, one ``Trainer`` per loss is built from the same ``TrainConfig`` (SynthScenes, same
seed, so the same initial weights and the same tokenizer) and each takes the same batches from
``Trainer._loader()``, fetched before timing so that only the training step is measured. CLIP's step
drops the ROIs and tags (the trainer does so for every loss that does not read them); SoftCLIP's step also
runs the ROI path of the image tower and the tag pass of the text tower, which is the overhead measured
here. After the warm-up steps, the losses take turns in windows of ``--window`` steps (ABBA order), so a
machine whose load drifts slows both alike. The loader's own rate (with ``--workers`` processes) is
reported too, to tell whether data would keep up in ``fit()``.

    python benchmarks/train_throughput.py --models tiny-vit tiny-rn --batch 128 --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from softclip.loss import LossConfig
from softclip.training.trainer import TrainConfig, Trainer


@dataclass
class LossRun:
    """One loss's trainer and the seconds each timed step took."""

    variant: str
    trainer: Trainer
    step_seconds: list[float] = field(default_factory=list)


def make_trainer(model: str, variant: str, out: Path, args: argparse.Namespace) -> Trainer:
    """A trainer on SynthScenes without evaluation; trainers sharing ``out`` share one tokenizer."""
    config = TrainConfig(
        model=model,
        data="synth",
        out=str(out),
        loss=LossConfig(variant=variant),
        steps=args.warmup + args.steps,
        batch_size=args.batch,
        seed=args.seed,
        workers=args.workers,
        evaluate=False,
        tokenizer_sample=args.tokenizer_sample,
    )
    return Trainer(config)


def fetch_batches(trainer: Trainer, count: int) -> tuple[list[dict], float]:
    """(the first ``count`` batches of the trainer's loader, seconds it took to produce them)."""
    started = time.perf_counter()
    batches_iter = iter(trainer._loader())
    batches = list(islice(batches_iter, count))
    seconds = time.perf_counter() - started
    del batches_iter  # shuts the loader's worker processes down before anything is timed
    return batches, seconds


def synchronize(trainer: Trainer) -> None:
    """Wait for queued GPU work, so the clock measures the step itself."""
    if trainer.dist.device.type == "cuda":
        torch.cuda.synchronize(trainer.dist.device)


def run_steps(run: LossRun, batches: list[dict], timed: bool) -> None:
    """One ``train_step`` per batch (a shallow copy: the step pops keys), timing each when ``timed``."""
    for batch in batches:
        synchronize(run.trainer)
        started = time.perf_counter()
        run.trainer.train_step(dict(batch))
        synchronize(run.trainer)
        if timed:
            run.step_seconds.append(time.perf_counter() - started)


def interleave(runs: list[LossRun], batches: list[dict], warmup: int, window: int) -> None:
    """Warm every run up, then give each the same batches in windows, reversing the order every window."""
    for run in runs:
        run_steps(run, batches[:warmup], timed=False)
    timed = batches[warmup:]
    for window_index, start in enumerate(range(0, len(timed), window)):
        for run in runs if window_index % 2 == 0 else reversed(runs):
            run_steps(run, timed[start : start + window], timed=True)


def describe_loss(config: LossConfig) -> str:
    """The loss as the table names it, with the switches that decide its extra passes."""
    if not config.needs_roi_tag():
        return config.variant
    return f"{config.variant} (detached targets: {config.targets_detached}, ROI-tag align {config.align_weight:g})"


def benchmark_model(model: str, args: argparse.Namespace) -> list[str]:
    """Table rows for one model preset: one per loss, plus how fast the loader produced the batches."""
    with tempfile.TemporaryDirectory() as out:
        runs = [LossRun(variant, make_trainer(model, variant, Path(out), args)) for variant in args.losses]
        batches, load_seconds = fetch_batches(runs[0].trainer, args.warmup + args.steps)
        interleave(runs, batches, args.warmup, args.window)
    baseline = sum(runs[0].step_seconds)
    rows = []
    for run in runs:
        total = sum(run.step_seconds)
        rows.append(
            f"| {model} | {describe_loss(run.trainer.config.loss)} | {args.batch} | {len(run.step_seconds)} | "
            f"{args.batch * len(run.step_seconds) / total:,.1f} | {1000 * np.median(run.step_seconds):.0f} | "
            f"{total / baseline:.2f}x |"
        )
    loader_rate = args.batch * len(batches) / load_seconds
    rows.append(
        f"| {model} | data loader alone ({args.workers} workers) | {args.batch} | {len(batches)} | "
        f"{loader_rate:,.1f} | {1000 * load_seconds / len(batches):.0f} | - |"
    )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-vit"], help="presets, e.g. tiny-vit tiny-rn")
    parser.add_argument("--losses", nargs="+", default=["clip", "softclip"], help="loss variants; first = baseline")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loss")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loss first")
    parser.add_argument("--window", type=int, default=5, help="steps per loss before the other loss takes its turn")
    parser.add_argument("--workers", type=int, default=1, help="data loader worker processes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--tokenizer-sample", type=int, default=2000, help="captions the tokenizer is trained on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.batch < 2:
        parser.error("--batch must be at least 2: contrastive losses need negatives")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"Trainer.train_step on SynthScenes, {device}, {args.threads} torch threads; {args.warmup} warm-up + "
        f"{args.steps} timed steps per loss, alternating every {args.window} steps\n"
    )
    print(f"| model | loss | batch | steps | samples/s | ms/step (median) | time vs {args.losses[0]} |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for model in args.models:
        for row in benchmark_model(model, args):
            print(row, flush=True)


if __name__ == "__main__":
    main()
