"""Opening a training data source by name: SynthScenes, CSV/TSV, WebDataset shards or a VinVL join."""

from __future__ import annotations

from pathlib import Path

from softclip.training.scenes import SynthConfig
from softclip.training.synthetic import SynthScenes


def open_dataset(
    data: str, vinvl: str | None = None, synth_size: int = 100_000, caption_noise: float = 0.2, image_size: int = 64
):
    """A map-style dataset of `Sample`s (map-style so that the trainer can resume at an exact position).

    `data` is "synth", a CSV/TSV or WebDataset shards ("train-{000000..000099}.tar", read with random access);
    with `vinvl` (either VinVL layout, see `vinvl.py`), its captions joined to the VinVL regions by key.
    SynthScenes always uses its train split's seed, so no training seed can reproduce the test scenes.
    """
    from softclip.training.csv_dataset import CsvDataset
    from softclip.training.shards import IndexedShards

    if data == "synth":
        return SynthScenes(SynthConfig(caption_noise=caption_noise, image_size=image_size), length=synth_size)
    if vinvl:
        from softclip.training.vinvl import VinvlDataset

        return VinvlDataset(vinvl, data)
    if data.endswith(".tar") or "{" in data:
        return IndexedShards(data)
    if Path(data).suffix in (".csv", ".tsv"):
        return CsvDataset(data)
    raise ValueError(f"unknown data source {data!r}: use synth, a .csv/.tsv file or .tar WebDataset shards")


def sample_texts(dataset, index: int) -> list[str]:
    """The caption and tags of sample `index`; SynthScenes gives them without rendering the image."""
    if hasattr(dataset, "texts"):
        return dataset.texts(index)
    sample = dataset[index]
    return [sample.caption, sample.tags]
