"""Opening a training data source by name: SynthScenes, CSV/TSV, WebDataset shards or a VinVL join."""

from __future__ import annotations

from softclip.training.synthetic import SynthConfig, SynthScenes


def open_dataset(data: str, seed: int = 0, synth_size: int = 100_000, caption_noise: float = 0.2, image_size: int = 64):
    """A map-style dataset of `Sample`s with `texts(i)` (caption and tags) for tokenizer training.

    The training seed does not change SynthScenes: its train split always uses the train split's seed,
    so no seed can ever reproduce the test scenes.
    """
    if data == "synth":
        return SynthScenes(SynthConfig(caption_noise=caption_noise, image_size=image_size), length=synth_size)
    raise ValueError(f"unknown data source {data!r}")
