"""`softclip eval`: zero-shot classification, image-text retrieval and the pointing game on a data source.

The metrics live in `metrics.py`, the SynthScenes sets in `synth_eval.py`; here a folder of class
subfolders or a caption table is read and embedded with any encoder (a checkpoint through `TorchEncoder`,
or an ONNX export the caller opens).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from softclip.encoder import open_encoder
from softclip.training import synth_eval
from softclip.training.metrics import retrieval, zeroshot
from softclip.transform import load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


# ---------------------------------------------------------------------------------------------- data sources


def class_folder(folder: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """An ImageNet-style folder of class subfolders -> (image paths, class indices, class names)."""
    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class subfolders")
    paths, targets = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                targets.append(index)
    return paths, targets, [name.replace("_", " ") for name in classes]


def caption_table(
    path: str | Path, image_column: str = "filepath", caption_column: str = "caption", separator: str | None = None
) -> tuple[list[Path], list[list[str]]]:
    """A Flickr30K/COCO-style CSV/TSV with one row per caption -> (images, captions per image)."""
    path = Path(path)
    separator = separator or ("\t" if path.suffix == ".tsv" else ",")
    grouped: dict[str, list[str]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle, delimiter=separator):
            if image_column not in row or caption_column not in row:
                raise ValueError(f"{path} needs columns {image_column!r} and {caption_column!r}")
            grouped.setdefault(row[image_column], []).append(row[caption_column])
    images = [(path.parent / name) if not Path(name).is_absolute() else Path(name) for name in grouped]
    return images, list(grouped.values())


# --------------------------------------------------------------------------------------------- entry points


def evaluate(model, task: str, data: str, **options) -> dict:
    """`softclip eval`: `task` is zeroshot, retrieval or pointing; `data` is "synth", a folder or a CSV."""
    if data == "synth":
        return synth_eval.evaluate(model, task)
    encoder = open_encoder(model)
    if task == "zeroshot":
        paths, targets, classes = class_folder(data)
        return zeroshot(encoder, [load_image(p) for p in paths], targets, classes)
    if task == "retrieval":
        images, captions = caption_table(data, **options)
        return retrieval(encoder, [load_image(p) for p in images], captions)
    raise ValueError(f"task {task!r} on {data!r}: use zeroshot (class folder), retrieval (CSV), or --data synth")


@torch.no_grad()
def evaluate_for_training(model: torch.nn.Module, data: str) -> dict:
    """The quick evaluation the trainer runs each epoch (SynthScenes sets; nothing for other data)."""
    if data != "synth":
        return {}
    return synth_eval.quick(open_encoder(model))
