"""Grad-CAM of an image-text similarity: the heatmap of where on the image a text embedding matches.

Grad-CAM here targets the cosine similarity between the image embedding and a text embedding, taken at
a spatial feature map ``A`` that ``model.image_feature_maps`` returns with the embedding computed from it:
``w_c = mean_xy d(sim)/dA_cxy`` and ``cam = relu(sum_c w_c A_c)``, divided by its peak (all zeros when
nothing is positive).

Two switches sharpen it (``docs/results.md`` has the pointing-game measurements that chose them):

- ``layers="all"`` (default): a ViT's map is the mean of one Grad-CAM per block (each taken at the tokens
  entering the block), not only the last block's. On trained tiny ViTs the last block's map alone points
  at the named object least often: its tokens have mixed the whole image. ``"last"``: the last block only.
  A ResNet has one map either way (its last stage).
- ``shifts=True`` (default, ``shifted_gradcams``): the map is also taken on copies of the image moved by
  half a feature cell right, down, and both, moved back and averaged, which doubles the map's resolution
  beyond the patch grid (an 8 x 8 grid of 8-pixel patches on 64-pixel images). It costs four passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYERS = ("all", "last")
DEFAULT_LAYERS = "all"
MAX_ROWS = 16  # image copies differentiated in one batch (queries x shifts)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm and dropout as at inference; the model's own mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """``cam`` divided by its maximum; all zeros when nothing is positive (or the map is not finite)."""
    peak = float(cam.max()) if cam.size else 0.0
    if not math.isfinite(peak) or peak <= 0.0:
        return np.zeros_like(cam, dtype=np.float32)
    return (np.clip(cam, 0.0, None) / peak).astype(np.float32)


def _cam(feature_map: Tensor, gradient: Tensor) -> np.ndarray:
    """Grad-CAM of one image: feature map and its gradient (1, C, h, w) -> [h, w] in [0, 1]."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1): each channel's importance
    cam = F.relu((weights * feature_map).sum(dim=1))[0]  # (h, w)
    return normalise_cam(cam.detach().float().cpu().numpy())


def _check_image_tensor(image_tensor: Tensor) -> None:
    if not isinstance(image_tensor, Tensor) or image_tensor.ndim != 4 or image_tensor.shape[:2] != (1, 3):
        shape = list(image_tensor.shape) if isinstance(image_tensor, Tensor) else type(image_tensor).__name__
        raise ValueError(f"image_tensor must be one preprocessed image [1, 3, H, W], got {shape}")


def _check_layers(layers: str) -> None:
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")


def gradcams(
    model: nn.Module, image_tensor: Tensor, text_embeddings: Tensor, layers: str = DEFAULT_LAYERS
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of one image for several text embeddings: ([Q, h, w] in [0, 1], [Q] cosine similarities).

    With several maps (``layers="all"``), each map's Grad-CAM is divided by its peak before they are
    averaged. A zero text embedding gives an all-zero map.
    """
    _check_image_tensor(image_tensor)
    cams, similarities = _batched_gradcams(model, image_tensor, text_embeddings, layers)
    return cams[0], similarities[0]


def _batched_gradcams(
    model: nn.Module, images: Tensor, text_embeddings: Tensor, layers: str
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAMs of P images for Q text embeddings: ([P, Q, h, w] in [0, 1], [P, Q] cosine similarities).

    Each image is repeated once per text embedding, so one batched forward and one backward pass give
    every pair's gradients (a row's similarity depends only on its own row); at most ``MAX_ROWS`` rows
    at a time, which bounds the memory a long caption can take.
    """
    _check_layers(layers)
    text_embeddings = torch.as_tensor(text_embeddings)
    if text_embeddings.ndim != 2:
        raise ValueError(f"text_embeddings must be [Q, D], got {list(text_embeddings.shape)}")
    targets = F.normalize(text_embeddings.detach().float(), dim=-1)  # (Q, D)
    count, queries = len(images), len(targets)
    if queries == 0:
        return np.zeros((count, 0, 0, 0), np.float32), np.zeros((count, 0), np.float32)
    pixels = images.detach().float().repeat_interleave(queries, dim=0)  # (P*Q, 3, H, W)
    targets = targets.repeat(count, 1)  # (P*Q, D), row r pairs image r // Q with text r % Q
    cams, similarities = [], []
    for start in range(0, len(pixels), MAX_ROWS):
        rows = slice(start, start + MAX_ROWS)
        chunk_cams, chunk_similarities = _row_gradcams(model, pixels[rows], targets[rows], layers)
        cams += chunk_cams
        similarities.append(chunk_similarities)
    shape = (count, queries, *cams[0].shape)
    return np.stack(cams).reshape(shape), np.concatenate(similarities).reshape(count, queries)


def _row_gradcams(
    model: nn.Module, pixels: Tensor, targets: Tensor, layers: str
) -> tuple[list[np.ndarray], np.ndarray]:
    """Grad-CAM of row i of ``pixels`` (R, 3, H, W) for unit text embedding row i of ``targets`` (R, D)."""
    with eval_mode(model), torch.enable_grad():
        # Pixels that need a gradient give the feature maps a graph even when every weight is frozen.
        embeddings, feature_maps = model.image_feature_maps(pixels.requires_grad_(True))  # (R, D), [(R, C, h, w)]
        feature_maps = feature_maps if layers == "all" else feature_maps[-1:]
        similarities = (embeddings.float() * targets.to(embeddings.device)).sum(dim=-1)  # (R,)
        gradients = _gradients(similarities.sum(), feature_maps)
    cams = [
        _mean_cam([m[row : row + 1] for m in feature_maps], [g[row : row + 1] for g in gradients])
        for row in range(len(pixels))
    ]
    return cams, similarities.detach().cpu().numpy().astype(np.float32)


def _mean_cam(feature_maps: list[Tensor], gradients: list[Tensor]) -> np.ndarray:
    """The mean of each map's Grad-CAM (each peak 1), divided by its own peak: [h, w] in [0, 1]."""
    cams = [_cam(feature_map, gradient) for feature_map, gradient in zip(feature_maps, gradients)]
    return normalise_cam(np.mean(cams, axis=0))


def _gradients(similarity: Tensor, feature_maps: list[Tensor]) -> list[Tensor]:
    """d(similarity)/d(map) for each map; zeros where the similarity does not depend on it (e.g. a zero target)."""
    if not similarity.requires_grad:
        return [torch.zeros_like(feature_map) for feature_map in feature_maps]
    gradients = torch.autograd.grad(similarity, feature_maps, allow_unused=True)
    return [torch.zeros_like(m) if g is None else g for m, g in zip(feature_maps, gradients)]


def gradcam(model: nn.Module, image_tensor: Tensor, text_embedding: Tensor, layers: str = DEFAULT_LAYERS) -> np.ndarray:
    """Grad-CAM ``[h, w]`` in [0, 1] of the cosine similarity between the image and ``text_embedding`` [D].

    ``image_tensor`` is one preprocessed image ``[1, 3, H, W]``; ``h, w`` is the feature map's grid.
    """
    text_embedding = torch.as_tensor(text_embedding)
    if text_embedding.ndim != 1:
        raise ValueError(f"text_embedding must be one vector [D], got {list(text_embedding.shape)}")
    return gradcams(model, image_tensor, text_embedding[None], layers)[0][0]


def upsample(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[Q, h, w] maps -> float32 [Q, height, width], bilinear, each rescaled so its peak is 1 again."""
    if len(cams) == 0:
        return np.zeros((0, *size), np.float32)
    resized = F.interpolate(torch.from_numpy(cams)[:, None], size=size, mode="bilinear", align_corners=False)
    return np.stack([normalise_cam(cam) for cam in resized[:, 0].numpy()])


def _move(image_tensor: Tensor, dx: int, dy: int) -> Tensor:
    """The image's content moved ``dx`` pixels right and ``dy`` down, the left and top edges repeated."""
    height, width = image_tensor.shape[-2:]
    return F.pad(image_tensor, (dx, 0, dy, 0), mode="replicate")[..., :height, :width]


def shifted_gradcams(
    model: nn.Module,
    image_tensor: Tensor,
    text_embeddings: Tensor,
    layers: str = DEFAULT_LAYERS,
    shifts: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM at the image's own resolution: ([Q, H, W] in [0, 1], [Q] cosine similarities of the image as given).

    With ``shifts``, the maps of the image moved by half a feature cell right, down and both are moved
    back and averaged with the image's own (each pixel over the passes that saw it); the three moved
    copies run as one batch.
    """
    _check_image_tensor(image_tensor)
    size = tuple(image_tensor.shape[-2:])
    cams, similarities = _batched_gradcams(model, image_tensor, text_embeddings, layers)  # (1, Q, h, w), (1, Q)
    if cams.shape[1] == 0:
        return np.zeros((0, *size), np.float32), similarities[0]
    offsets = [(0, 0)]
    if shifts:  # the grid of the unmoved pass says how far half a feature cell is
        cell_y, cell_x = (max(1, side // (2 * grid)) for side, grid in zip(size, cams.shape[-2:]))
        moves = [(cell_x, 0), (0, cell_y), (cell_x, cell_y)]
        moved = torch.cat([_move(image_tensor, dx, dy) for dx, dy in moves])
        cams = np.concatenate([cams, _batched_gradcams(model, moved, text_embeddings, layers)[0]])
        offsets += moves
    total, coverage = np.zeros((cams.shape[1], *size), np.float32), np.zeros(size, np.float32)
    for (dx, dy), pass_cams in zip(offsets, cams):
        total[:, : size[0] - dy, : size[1] - dx] += upsample(pass_cams, size)[:, dy:, dx:]
        coverage[: size[0] - dy, : size[1] - dx] += 1
    return np.stack([normalise_cam(cam) for cam in total / coverage]), similarities[0]
