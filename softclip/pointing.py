"""The pointing game: how often a query's heatmap peaks inside the box of the region it names."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from torch import nn

from softclip.explain import explain
from softclip.gradcam import DEFAULT_LAYERS
from softclip.word_queries import DEFAULT_METHOD, DEFAULT_TEMPLATE


class PointingScene(NamedTuple):
    """An image, a query naming one region, and that region's box in the preprocessed frame."""

    image: str | Path | Image.Image
    query: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the preprocessed image side
    caption: str | None = None  # the context the query is asked in; None: the query inside a prompt template


def _check_boxes(boxes: np.ndarray, count: int | None = None) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or (count is not None and len(boxes) != count):
        expected = f"[{count}, 4]" if count is not None else "[N, 4]"
        raise ValueError(f"boxes must be {expected} (x0, y0, x1, y1), got shape {boxes.shape}")
    if boxes.size and (boxes.min() < 0 or boxes.max() > 1 or (boxes[:, 2:] < boxes[:, :2]).any()):
        raise ValueError("boxes must be x0 <= x1, y0 <= y1, all in [0, 1] (fractions of the image side)")
    return boxes


def pointing_hits(heatmaps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether each heatmap's peak lies in its box: heatmaps [N, H, W], boxes [N, 4] x0,y0,x1,y1 in [0, 1] -> bool [N].

    The peak is the first maximal pixel (row-major), taken at its centre; box edges count as inside.
    """
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must be [N, H, W], got shape {heatmaps.shape}")
    boxes = _check_boxes(boxes, len(heatmaps))
    n, height, width = heatmaps.shape
    peak = heatmaps.reshape(n, -1).argmax(axis=1)
    y = (peak // width + 0.5) / height
    x = (peak % width + 0.5) / width
    return (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])


def random_peak_baseline(boxes: np.ndarray, size: int) -> float:
    """The pointing game's expected hit rate when each peak is a uniformly random pixel of a ``size x size`` map.

    Exact for ``pointing_hits``: for each box, the fraction of pixel centres inside it, averaged over boxes.
    """
    boxes = _check_boxes(boxes)
    if len(boxes) == 0:
        raise ValueError("random_peak_baseline needs at least one box")
    centres = (np.arange(size) + 0.5) / size
    inside_x = ((centres[None] >= boxes[:, :1]) & (centres[None] <= boxes[:, 2:3])).mean(axis=1)
    inside_y = ((centres[None] >= boxes[:, 1:2]) & (centres[None] <= boxes[:, 3:4])).mean(axis=1)
    return float((inside_x * inside_y).mean())


def pointing_game(
    model: nn.Module,
    scenes: Iterable[PointingScene | tuple],
    method: str = DEFAULT_METHOD,
    template: str = DEFAULT_TEMPLATE,
    layers: str = DEFAULT_LAYERS,
    shifts: bool = True,
) -> float:
    """Fraction of scenes whose query heatmap peaks inside the scene's box (see ``pointing_hits``).

    Each scene is a ``PointingScene`` or a tuple ``(image, query, box)`` or ``(image, query, box, caption)``;
    the query is explained in its caption's context, or inside ``template`` when the scene has no caption.
    ``method``, ``template``, ``layers`` and ``shifts`` are ``explain``'s.
    """
    heatmaps, boxes = [], []
    for scene in scenes:
        scene = PointingScene(*scene)
        caption = scene.caption if scene.caption is not None else template.format(scene.query)
        heatmaps.append(
            explain(
                model,
                scene.image,
                caption,
                [scene.query],
                method=method,
                template=template,
                layers=layers,
                shifts=shifts,
            )[0].heatmap
        )
        boxes.append(scene.box)
    if not heatmaps:
        raise ValueError("pointing_game needs at least one scene")
    return float(pointing_hits(np.stack(heatmaps), np.asarray(boxes)).mean())
