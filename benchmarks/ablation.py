"""The paper's Table 5 ablation and Fig. 5b beta sweep on SynthScenes, plus rows for two switches, lambda and mu.

Every row trains the same model with the same steps, batch and seeds; only the loss changes. Each run's
metrics are kept in RESULTS/ROW-seedS.json (default OUT/runs), and each run checkpoints every SAVE_EVERY
steps into OUT/work, so an interrupted ablation continues where it stopped, in the middle of a run too (use
a new OUT for another recipe: a checkpoint refuses other settings). `benchmarks/results/` keeps the metrics
of the runs in docs/results.md. Prints (and writes to OUT/table.md) each metric as mean +- std over seeds.

    python benchmarks/ablation.py --steps 300 --seeds 0 1 2 --parallel 2 --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from softclip.atomic import write_json_atomically
from softclip.training.checkpoints import checkpoint_step, latest_checkpoint


class Row(NamedTuple):
    """One loss setting; None leaves a switch at softclip's default."""

    variant: str
    detach_targets: bool | None = None
    roi_tag_align: float | None = None
    beta: float | None = None
    lam: float | None = None
    mu: float | None = None


# Table 5 rows use the softclip defaults for the switches (None): detached targets with ROI-tag alignment, so
# "+ symmetric KL (SoftCLIP)" is the SoftCLIP row (beta 0.3).
ROWS = {
    "CLIP": Row("clip", False, 0.0),
    "+ label smoothing": Row("label_smoothing", False, 0.0),
    "CLIP + soft loss": Row("soft"),
    "+ relation-enhanced": Row("soft_relation"),
    "+ symmetric KL (SoftCLIP)": Row("softclip"),
    "SoftCLIP, grad targets, no align": Row("softclip", False, 0.0),
    "SoftCLIP, detached, no align": Row("softclip", True, 0.0),
    "SoftCLIP, grad targets, align": Row("softclip", False, 1.0),
    "control: CLIP + ROI-tag align": Row("clip", False, 1.0),
}
# the paper's Fig. 5b sweep; beta 0.3 is the SoftCLIP row itself
ROWS |= {f"SoftCLIP, beta {beta:g}": Row("softclip", beta=beta) for beta in (0.1, 0.2, 0.4, 0.5)}
# eq. 16's weights around softclip's defaults (lambda 1, mu 0.5): the relation-enhanced term and the CLIP term
ROWS |= {f"SoftCLIP, lambda {lam:g}": Row("softclip", lam=lam) for lam in (0.5, 2.0)}
ROWS |= {f"SoftCLIP, mu {mu:g}": Row("softclip", mu=mu) for mu in (0.25, 1.0)}

SAVE_EVERY = 250  # steps between checkpoints: what a stopped run loses at most

METRICS = (
    "shape_top1",
    "colour_shape_top1",
    "colour_shape_held_out_top1",
    "i2t_r1",
    "t2i_r1",
    "i2t_match_r1",
    "t2i_match_r1",
    "pointing",
)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def train_command(row: str, seed: int, args: argparse.Namespace, out: Path) -> list[str]:
    loss = ROWS[row]
    command = [
        sys.executable,
        "-m",
        "softclip.cli",
        "train",
        "--model",
        args.model,
        "--loss",
        loss.variant,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-eval",
        "--lr",
        str(args.lr),
        "--caption-noise",
        str(args.caption_noise),
        # a run stopped part-way (a machine that goes away) continues from its last checkpoint, exactly
        "--save-every",
        str(SAVE_EVERY),
        "--resume",
        "latest",
    ]
    if loss.detach_targets is not None:
        command.append("--detach-targets" if loss.detach_targets else "--no-detach-targets")
    for switch in ("roi_tag_align", "beta", "lam", "mu"):
        value = getattr(loss, switch)
        if value is not None:
            command += ["--" + switch.replace("_", "-"), str(value)]
    return command


def evaluate(checkpoint: Path, task: str, env: dict) -> dict:
    command = [sys.executable, "-m", "softclip.cli", "eval", str(checkpoint), "--task", task, "--json"]
    return json.loads(subprocess.run(command, check=True, env=env, capture_output=True, text=True).stdout)


def recipe(args: argparse.Namespace) -> dict:
    """What every row shares; a result is only tabulated with others of the same recipe."""
    return {k: getattr(args, k) for k in ("model", "steps", "batch_size", "lr", "caption_noise")}


def kept_result(result_path: Path, args: argparse.Namespace) -> dict:
    """A finished run's result, reused only for the same recipe (file names do not carry the recipe)."""
    result = json.loads(result_path.read_text())
    if result.get("recipe") != recipe(args):
        raise ValueError(
            f"{result_path} holds a run of another recipe ({result.get('recipe')}, not {recipe(args)}); "
            "name another --results folder"
        )
    return result


def run_one(row: str, seed: int, args: argparse.Namespace) -> dict:
    result_path = args.results / f"{slug(row)}-seed{seed}.json"
    if result_path.exists():
        return kept_result(result_path, args)
    work = args.out / "work" / f"{slug(row)}-seed{seed}"
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    checkpoint = latest_checkpoint(work / "checkpoints")
    resumed_from = checkpoint_step(checkpoint) if checkpoint else 0
    started = time.perf_counter()
    subprocess.run(
        train_command(row, seed, args, work), check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = {}
    for task in args.tasks:
        metrics |= evaluate(work / "final", task, env)
    seconds = time.perf_counter() - started
    result = {
        "row": row,
        "seed": seed,
        "recipe": recipe(args),
        "seconds": seconds,  # of this sitting only, for a run resumed from step resumed_from
        "resumed_from": resumed_from,
        "metrics": metrics,
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(result_path, result)  # a half-written file would pass for a finished run
    print(
        f"done {row} seed {seed} in {result['seconds']:.0f}s: "
        + ", ".join(f"{k}={metrics[k]:.3f}" for k in METRICS if k in metrics),
        flush=True,
    )
    return result


def finished_runs(args: argparse.Namespace) -> list[dict]:
    """The kept results of this recipe for the rows and seeds asked for."""
    results = [json.loads(path.read_text()) for path in sorted(args.results.glob("*.json"))]
    return [r for r in results if r.get("recipe") == recipe(args) and r["row"] in args.rows and r["seed"] in args.seeds]


def cell(runs: list[dict], metric: str) -> str:
    """Mean +- std over the runs that measured ``metric`` (in percent), or "-" when none did."""
    values = [100 * m[metric] for m in runs if metric in m]
    return f"{np.mean(values):.1f} +- {np.std(values):.1f}" if values else "-"


def table(results: list[dict], rows: list[str]) -> str:
    header = "| row | " + " | ".join(METRICS) + " | seeds |\n|---|" + "---|" * (len(METRICS) + 1) + "\n"
    lines = []
    for row in rows:
        runs = [r["metrics"] for r in results if r["row"] == row]
        if not runs:
            continue
        cells = [cell(runs, k) for k in METRICS]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {len(runs)} |")
    return header + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--caption-noise", type=float, default=0.2, help="SynthScenes caption noise rate")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=["zeroshot", "retrieval", "pointing"],
        default=["zeroshot", "retrieval"],
        help="what `softclip eval` measures on each final model",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help="row names to run (default: all)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument(
        "--results", type=Path, help="folder of the per-run metrics (default OUT/runs); keep it to continue elsewhere"
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="tabulate the finished runs of this recipe (--model, --steps, ...), --rows and --seeds",
    )
    args = parser.parse_args()
    args.results = args.results or args.out / "runs"
    if args.table_only:
        results = finished_runs(args)
    else:
        jobs = [(row, seed) for seed in args.seeds for row in args.rows]  # every row once before any second seed
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda job: run_one(*job, args), jobs))
    text = table(results, args.rows)
    command = shlex.join(["python", "benchmarks/ablation.py", *sys.argv[1:]])
    run_minutes = sum(r["seconds"] for r in results) / 60
    resumed = sum(1 for r in results if r.get("resumed_from"))
    footer = (
        f"\n{args.model}, {args.steps} steps of batch {args.batch_size}, caption noise {args.caption_noise:g}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.parallel} runs at a time "
        f"with {args.threads} torch thread(s) each; {len(results)} runs took {run_minutes:.0f} min of run time "
        f"(training + evaluation, summed over runs; {resumed} resumed runs count their last sitting only)."
        f"\nCommand: `{command}`\n"
    )
    print(text + footer)
    args.out.mkdir(parents=True, exist_ok=True)  # --table-only may name a folder no run has made
    (args.out / "table.md").write_text(text + footer)


if __name__ == "__main__":
    main()
