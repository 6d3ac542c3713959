"""Shared test fixtures.

``ColourHistogramEncoder`` is a small, deterministic stand-in for a real model that follows the encoder
protocol (``preprocess``, ``encode_images``, ``encode_texts``, ``embed_dim``, ``model_id``): an image's
embedding is its colour histogram projected by a fixed random matrix, and colour words ("red", "blue", ...)
embed like a plain image of that colour, so text search behaves predictably. It counts the images it
embeds, so tests can check that unchanged or renamed files are not embedded again.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}


class ColourHistogramEncoder:
    """Encoder protocol over colour histograms: [3, S, S] pixels -> 4x4x4 histogram -> random projection."""

    bins = 4

    def __init__(self, embed_dim: int = 32, seed: int = 0, size: int = 16) -> None:
        self.embed_dim = embed_dim
        self.size = size
        self.model_id = f"colour-histogram-d{embed_dim}-s{seed}"
        self.projection = np.random.default_rng(seed).standard_normal((self.bins**3, embed_dim)).astype(np.float32)
        self.images_encoded = 0
        self.image_calls = 0
        self.text_calls = 0

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> float32 [3, size, size] in [0, 1]."""
        small = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] -> L2-normalised [B, D]; each row computed alone, so batching never changes it."""
        self.image_calls += 1
        self.images_encoded += len(pixels)
        return np.stack([self._embed_histogram(self._histogram(image)) for image in pixels]).reshape(-1, self.embed_dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Colour words embed as a plain image of that colour; other texts as a hashed random vector."""
        self.text_calls += 1
        return np.stack([self._embed_text(text) for text in texts]).reshape(-1, self.embed_dim)

    def _histogram(self, image: np.ndarray) -> np.ndarray:
        levels = np.minimum((image * self.bins).astype(np.int64), self.bins - 1)  # [3, S, S]
        codes = (levels[0] * self.bins + levels[1]) * self.bins + levels[2]
        return np.bincount(codes.ravel(), minlength=self.bins**3).astype(np.float32) / codes.size

    def _embed_histogram(self, histogram: np.ndarray) -> np.ndarray:
        vector = histogram @ self.projection
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    def _embed_text(self, text: str) -> np.ndarray:
        words = re.findall(r"[a-z]+", text.lower())
        colours = [word for word in words if word in COLOURS]
        if colours:
            pixels = [np.asarray(solid_image(COLOURS[word], self.size)).transpose(2, 0, 1) / 255.0 for word in colours]
            vector = sum(self._embed_histogram(self._histogram(p.astype(np.float32))) for p in pixels)
        else:
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            vector = np.random.default_rng(seed).standard_normal(self.embed_dim)
        return (vector / np.linalg.norm(vector)).astype(np.float32)


def solid_image(rgb: tuple[int, int, int], size: int = 16, noise_seed: int | None = None) -> Image.Image:
    """A plain image of one colour; ``noise_seed`` adds noise so that files (and their embeddings) differ."""
    pixels = np.empty((size, size, 3), dtype=np.int16)
    pixels[:] = rgb
    if noise_seed is not None:
        pixels += np.random.default_rng(noise_seed).integers(-90, 91, pixels.shape)  # crosses bin edges
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image(path: Path, colour: str = "red", seed: int = 0, size: int = 16, **save_options) -> Path:
    """Save a noisy plain-colour image at ``path`` (format from the extension); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    solid_image(COLOURS[colour], size, noise_seed=seed).save(path, **save_options)
    return path


@pytest.fixture
def encoder() -> ColourHistogramEncoder:
    """A fresh deterministic colour-histogram encoder (embedding size 32)."""
    return ColourHistogramEncoder()
