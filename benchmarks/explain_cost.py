"""What the Grad-CAM switches cost: seconds of one ``explain`` call per setting of ``layers`` and ``shifts``.

The settings take turns (forward, then reversed order) so that a machine whose load drifts slows all of
them alike; prints the median of ``--repeats`` calls and the ratio to the cheapest setting. The model has
random weights (the cost does not depend on them) and a tokenizer trained on the caption.

    python benchmarks/explain_cost.py --model ViT-B-32 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from softclip.explain import explain
from softclip.model import create_model
from softclip.tokenizer import Tokenizer

SETTINGS = (("last", False), ("all", False), ("last", True), ("all", True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="model preset")
    parser.add_argument("--caption", default="a red circle left of a blue star")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    model.tokenizer = Tokenizer.train([args.caption] * 10, vocab_size=300, min_frequency=1)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    seconds: dict[tuple[str, bool], list[float]] = {setting: [] for setting in SETTINGS}
    for repeat in range(args.repeats):
        for layers, shifts in SETTINGS if repeat % 2 == 0 else reversed(SETTINGS):
            started = time.perf_counter()
            words = explain(model, image, args.caption, layers=layers, shifts=shifts)
            seconds[layers, shifts].append(time.perf_counter() - started)
    base = np.median(seconds[SETTINGS[0]])
    print(f"{args.model}, {len(words)} words, {args.threads} threads, median of {args.repeats}\n")
    print("| layers | shifts | seconds | vs last, one pass |\n|---|---|---:|---:|")
    for (layers, shifts), values in seconds.items():
        median = np.median(values)
        print(f"| {layers} | {'on' if shifts else 'off'} | {median:.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
