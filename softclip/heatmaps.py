"""Drawing heatmaps: the colour map, overlays on the image, and the panel of one tile per word."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from softclip.transform import load_image

# Colour map control points (position in [0, 1], RGB): dark indigo through blue, cyan, green and yellow
# to dark red, roughly even in lightness steps so that low values stay dark and the peak stands out.
_COLORMAP_POINTS = (
    (0.00, (40, 20, 70)),
    (0.12, (60, 80, 200)),
    (0.28, (30, 160, 240)),
    (0.42, (40, 220, 170)),
    (0.55, (120, 245, 80)),
    (0.68, (220, 225, 40)),
    (0.80, (250, 150, 30)),
    (0.92, (215, 60, 15)),
    (1.00, (130, 10, 5)),
)
_MIN_TILE = 128  # panel tiles are at least this many pixels wide, so 64-pixel inputs stay legible
_LABEL_HEIGHT = 18


@dataclass
class WordHeatmap:
    """One query's heatmap over the preprocessed image."""

    word: str  # the word or phrase as written in the caption
    heatmap: np.ndarray  # float32 [H, W] in [0, 1], H = W = the preprocessed image's side
    score: float  # cosine similarity of the image embedding and the query's text embedding (see ``METHODS``)


def _colormap_table() -> np.ndarray:
    """[256, 3] uint8 lookup table interpolated between ``_COLORMAP_POINTS``."""
    positions = np.array([position for position, _ in _COLORMAP_POINTS])
    colours = np.array([colour for _, colour in _COLORMAP_POINTS], dtype=np.float64)  # (P, 3)
    steps = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(steps, positions, colours[:, channel]) for channel in range(3)], axis=1)
    return np.rint(table).astype(np.uint8)


COLORMAP = _colormap_table()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> uint8 RGB [H, W, 3] through ``COLORMAP``; NaN counts as 0."""
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    indices = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.int64)
    return COLORMAP[indices]


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be a 2-D [H, W] array, got shape {heatmap.shape}")
    return heatmap


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` blended with the coloured ``heatmap`` ([H, W] in [0, 1], resized to the image bilinearly).

    ``alpha`` is the heatmap's weight: 0 gives the image, 1 the coloured heatmap alone.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.asarray(load_image(image), dtype=np.float32)  # (H, W, 3)
    heatmap = _check_heatmap(heatmap)
    if heatmap.shape != rgb.shape[:2]:
        size = rgb.shape[:2]
        heatmap = F.interpolate(torch.from_numpy(heatmap)[None, None], size=size, mode="bilinear")[0, 0].numpy()
    blended = (1.0 - alpha) * rgb + alpha * colorize(heatmap).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text``, shortened with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _tile(picture: Image.Image, label: str, side: int, font: ImageFont.ImageFont) -> Image.Image:
    """``picture`` scaled to ``side`` with ``label`` written underneath on white."""
    tile = Image.new("RGB", (side, side + _LABEL_HEIGHT), "white")
    tile.paste(picture.resize((side, side), Image.Resampling.BICUBIC), (0, 0))
    draw = ImageDraw.Draw(tile)
    draw.text((3, side + 3), _fit_text(draw, label, side - 6, font), fill="black", font=font)
    return tile


def panel(
    image: Image.Image, word_heatmaps: Sequence[WordHeatmap], alpha: float = 0.5, columns: int = 4
) -> Image.Image:
    """A grid: ``image`` (labelled "input") then one overlay per heatmap, each labelled with its word."""
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    image = load_image(image)
    side = max(image.width, _MIN_TILE)
    font = ImageFont.load_default()
    pictures = [("input", image)] + [(item.word, overlay(image, item.heatmap, alpha)) for item in word_heatmaps]
    tiles = [_tile(picture, label, side, font) for label, picture in pictures]
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new("RGB", (columns * side, rows * (side + _LABEL_HEIGHT)), "white")
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % columns) * side, (index // columns) * (side + _LABEL_HEIGHT)))
    return grid
