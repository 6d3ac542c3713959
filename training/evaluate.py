"""Evaluation: zero-shot classification, image-text retrieval and the pointing game.

Metric functions are plain functions over embedding arrays; the `evaluate_*` functions embed a data
source with any encoder (a checkpoint through `TorchEncoder` or an ONNX export) and call them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from softclip.encoder import Encoder, load_pixels, open_encoder
from softclip.transform import load_image
from softclip.zeroshot import DEFAULT_TEMPLATES, label_embeddings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


# ------------------------------------------------------------------------------------------------- metrics


def topk_accuracy(image_embeds: np.ndarray, class_embeds: np.ndarray, targets: np.ndarray, ks=(1, 5)) -> dict:
    """Fraction of images whose true class is among the k most similar class embeddings."""
    sims = image_embeds @ class_embeds.T  # (N, C)
    ranked = np.argsort(-sims, axis=1, kind="stable")
    hits = ranked == np.asarray(targets)[:, None]
    return {f"top{k}": float(hits[:, : min(k, sims.shape[1])].any(axis=1).mean()) for k in ks}


def retrieval_recall(image_embeds: np.ndarray, text_embeds: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Recall@k both ways with several captions per image; `text_image[t]` is the image of caption t.

    Image to text: an image counts when any of its captions is in its top k.
    Text to image: a caption counts when its image is in its top k.
    """
    text_image = np.asarray(text_image)
    sims = image_embeds @ text_embeds.T  # (I, T)
    text_ranks = np.argsort(-sims, axis=1, kind="stable")  # per image, captions best first
    caption_owner = text_image[text_ranks]  # (I, T): the image each ranked caption belongs to
    first_hit = (caption_owner == np.arange(len(image_embeds))[:, None]).argmax(axis=1)
    image_ranks = np.argsort(-sims.T, axis=1, kind="stable")  # per caption, images best first
    image_hit = (image_ranks == text_image[:, None]).argmax(axis=1)
    metrics = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = float((first_hit < k).mean())
        metrics[f"t2i_r{k}"] = float((image_hit < k).mean())
    return metrics


# ------------------------------------------------------------------------------------------------ embedding


def embed_images(encoder: Encoder, images: Sequence, batch_size: int = 256) -> np.ndarray:
    """Paths or PIL images -> [N, D] in batches."""
    chunks = [
        encoder.encode_images(load_pixels(list(images[i : i + batch_size]), encoder))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.embed_dim), np.float32)


def zeroshot(
    encoder: Encoder,
    images: Sequence,
    targets: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> dict:
    """Zero-shot top-1/top-5 of `images` against `classnames` with prompt-template ensembling."""
    class_embeds = label_embeddings(encoder, list(classnames), tuple(templates))
    return topk_accuracy(embed_images(encoder, images), class_embeds, np.asarray(targets))


def retrieval(encoder: Encoder, images: Sequence, captions: Sequence[Sequence[str]]) -> dict:
    """Retrieval recall for images each with a list of captions."""
    texts = [text for group in captions for text in group]
    owners = np.array([i for i, group in enumerate(captions) for _ in group])
    return retrieval_recall(embed_images(encoder, images), encoder.encode_texts(texts), owners)


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
        from softclip.training import synth_eval

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
    from softclip.training import synth_eval

    return synth_eval.quick(open_encoder(model))
