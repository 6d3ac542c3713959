"""Zero-shot labeling: rank free-text labels for images, with CLIP's prompt-template ensembling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from softclip.encoder import Encoder, load_pixels, open_encoder

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a rendering of a {}.",
)
# CLIP's fixed inverse temperature for zero-shot probabilities (its trained scale saturates at 100).
LABEL_SCALE = 100.0

_label_cache: dict[tuple, np.ndarray] = {}
_CACHE_SIZE = 64  # label sets kept; training evaluates a new model_id every epoch


@dataclass
class LabelScore:
    label: str
    probability: float


def parse_labels(text: str) -> list[str]:
    """'cat, dog,, cat' -> ['cat', 'dog']: comma-separated, stripped, empty parts and repeats dropped."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def label_embeddings(encoder: Encoder, labels: list[str], templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> np.ndarray:
    """[len(labels), D]: each label embedded with every template, averaged and re-normalised (cached)."""
    key = (encoder.model_id, tuple(labels), tuple(templates))
    if key not in _label_cache:
        prompts = [template.format(label) for label in labels for template in templates]
        per_prompt = encoder.encode_texts(prompts).reshape(len(labels), len(templates), -1)  # (L, T, D)
        mean = per_prompt.mean(axis=1)
        if len(_label_cache) >= _CACHE_SIZE:
            _label_cache.pop(next(iter(_label_cache)))
        _label_cache[key] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    return _label_cache[key]


def label_probabilities(image_embeds: np.ndarray, label_embeds: np.ndarray) -> np.ndarray:
    """[B, D] x [L, D] -> [B, L] softmax probabilities at CLIP's zero-shot scale."""
    logits = torch.from_numpy(LABEL_SCALE * image_embeds @ label_embeds.T)
    return torch.softmax(logits.double(), dim=1).numpy()


def rank_labels(probabilities: np.ndarray, labels: list[str], top_k: int) -> list[list[LabelScore]]:
    """Each row's labels, most probable first, the first `top_k` of them."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [[LabelScore(labels[j], float(row[j])) for j in idx] for row, idx in zip(probabilities, order)]


def label(
    images: list[str | Path | Image.Image] | str | Path | Image.Image,
    labels: list[str],
    model: str | Path | torch.nn.Module | Encoder,
    templates: tuple[str, ...] | list[str] | None = None,
    top_k: int = 5,
) -> list[list[LabelScore]]:
    """Label images zero-shot: for each image, the labels ranked with their probabilities.

    `model` is a checkpoint folder or Hub id, an ONNX export folder, a loaded model, or any encoder.
    """
    if not labels:
        raise ValueError("label() needs at least one label")
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    encoder = open_encoder(model)
    label_embeds = label_embeddings(encoder, list(labels), tuple(templates or DEFAULT_TEMPLATES))
    image_embeds = encoder.encode_images(load_pixels(list(images), encoder))
    return rank_labels(label_probabilities(image_embeds, label_embeds), list(labels), top_k)
