"""The pointing game of Grad-CAM heatmaps for each way of taking them, on one or more trained checkpoints.

For every checkpoint and every combination of ``--methods`` (how a word becomes a text embedding),
``--layers`` (Grad-CAM at every ViT block, averaged, or the last block only) and ``--shifts`` (averaged
over half-cell shifts of the image, or one pass), prints the share of SynthScenes pointing scenes (2-4
objects, the query naming one with a unique colour and shape) whose heatmap peaks inside the named object's
box, beside the random-peak baseline and the seconds each setting took.

    python benchmarks/pointing.py app/demo_model runs/clip/final --scenes 500
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from softclip.gradcam import LAYERS
from softclip.pointing import pointing_game, random_peak_baseline
from softclip.pretrained import from_pretrained
from softclip.training import eval_sets
from softclip.training.scenes import SPLIT_SEEDS
from softclip.word_queries import METHODS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (or anything from_pretrained opens)")
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument(
        "--split", choices=list(SPLIT_SEEDS), default="test", help="the scenes (the demo and `softclip eval` use test)"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["contribution"])
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS))
    parser.add_argument("--shifts", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = eval_sets.pointing_set(args.scenes, seed=SPLIT_SEEDS[args.split])
    scenes = list(zip(data.images, data.queries, data.boxes))
    print(f"{args.scenes} {args.split}-split scenes; random peak {100 * random_peak_baseline(data.boxes, 64):.1f}%\n")
    print("| checkpoint | method | layers | shifts | pointing game | seconds |\n|---|---|---|---|---:|---:|")
    for checkpoint in args.checkpoints:
        model = from_pretrained(checkpoint)
        for method, layers, shifts in itertools.product(args.methods, args.layers, args.shifts):
            started = time.perf_counter()
            hits = pointing_game(model, scenes, method=method, layers=layers, shifts=shifts == "on")
            seconds = time.perf_counter() - started
            print(f"| {checkpoint} | {method} | {layers} | {shifts} | {100 * hits:.1f}% | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
