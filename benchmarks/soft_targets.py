"""How soft are SoftCLIP's targets? For trained checkpoints, the rows of softmax(scale * X X^T) on training batches.

For each of the ROI, tag, image and text features of a checkpoint, on ``--batches`` SynthScenes training
batches of ``--batch-size``, prints the mean probability a row keeps on its own sample (1 = one-hot
targets, 1/N = uniform) and the mean row entropy as a fraction of log N (0 = one-hot, 1 = uniform), at the
checkpoint's own learnt scale (the scale the loss uses for its targets, eq. 6-9).

    python benchmarks/soft_targets.py app/demo_model runs/ablation-1500/work/clip-seed0/final
"""

from __future__ import annotations

import argparse
import math
import tempfile
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F

from softclip.loss import MAX_SCALE, LossConfig
from softclip.pretrained import from_pretrained
from softclip.training.trainer import TrainConfig, Trainer

FEATURES = ("roi_features", "tag_features", "image_features", "text_features")


def training_batches(count: int, batch_size: int, seed: int) -> list[dict]:
    """``count`` noise-free SynthScenes training batches with ROIs and tags, as the trainer makes them."""
    config = TrainConfig(
        model="tiny-vit",
        data="synth",
        out=tempfile.mkdtemp(),
        loss=LossConfig(variant="softclip"),
        steps=count,
        batch_size=batch_size,
        seed=seed,
        workers=0,
        evaluate=False,
        tokenizer_sample=2000,
        caption_noise=0.0,
    )
    return list(islice(iter(Trainer(config)._loader()), count))


def target_rows(features: torch.Tensor, scale: torch.Tensor) -> tuple[float, float]:
    """(mean own-sample probability, mean entropy / log N) of softmax(scale * f f^T) rows."""
    unit = F.normalize(features.float(), dim=-1)
    rows = (scale * unit @ unit.T).softmax(dim=-1)
    entropy = -(rows * rows.clamp_min(1e-12).log()).sum(dim=-1) / math.log(len(rows))
    return float(rows.diagonal().mean()), float(entropy.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    batches = training_batches(args.batches, args.batch_size, args.seed)
    print("| checkpoint | scale | " + " | ".join(f"{name} own / entropy" for name in FEATURES) + " |")
    print("|---|---:|" + "---:|" * len(FEATURES))
    for checkpoint in args.checkpoints:
        model = from_pretrained(checkpoint).eval()
        stats: dict[str, list[tuple[float, float]]] = {name: [] for name in FEATURES}
        with torch.no_grad():
            for batch in batches:
                outputs = model(
                    batch["images"], batch["texts"], rois=batch["rois"], roi_mask=batch["roi_mask"], tags=batch["tags"]
                )
                scale = outputs["logit_scale"].float().exp().clamp(max=MAX_SCALE)
                for name in FEATURES:
                    stats[name].append(target_rows(outputs[name], scale))
        cells = [" / ".join(f"{v:.3f}" for v in np.mean(stats[name], axis=0)) for name in FEATURES]
        print(f"| {checkpoint} | {float(scale):.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
