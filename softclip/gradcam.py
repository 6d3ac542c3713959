"""Grad-CAM of an image-text similarity: the heatmap of where on the image's feature map a text embedding matches.

Grad-CAM here targets the cosine similarity between the image embedding and a text embedding, taken at
the spatial feature map ``A`` that ``model.image_feature_map`` returns with the embedding computed from it:
``w_c = mean_xy d(sim)/dA_cxy`` and ``cam = relu(sum_c w_c A_c)``, divided by its peak (all zeros when
nothing is positive), then upsampled bilinearly to the preprocessed (resized, centre-cropped) image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def gradcams(model: nn.Module, image_tensor: Tensor, text_embeddings: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of one image for several text embeddings: ([Q, h, w] in [0, 1], [Q] cosine similarities).

    One forward pass; one backward pass per text embedding. A zero text embedding gives an all-zero map.
    """
    _check_image_tensor(image_tensor)
    text_embeddings = torch.as_tensor(text_embeddings)
    if text_embeddings.ndim != 2:
        raise ValueError(f"text_embeddings must be [Q, D], got {list(text_embeddings.shape)}")
    targets = F.normalize(text_embeddings.detach().float(), dim=-1)  # (Q, D)
    with eval_mode(model), torch.enable_grad():
        # Pixels that need a gradient give the feature map a graph even when every weight is frozen.
        pixels = image_tensor.detach().float().requires_grad_(True)
        embedding, feature_map = model.image_feature_map(pixels)  # (1, D) L2-normalised, (1, C, h, w)
        similarities = embedding[0].float() @ targets.to(embedding.device).T  # (Q,)
        cams = [_cam(feature_map, _gradient(similarity, feature_map)) for similarity in similarities]
    height, width = feature_map.shape[-2:]
    stacked = np.stack(cams) if cams else np.zeros((0, height, width), np.float32)
    return stacked, similarities.detach().cpu().numpy().astype(np.float32)


def _gradient(similarity: Tensor, feature_map: Tensor) -> Tensor:
    """d(similarity)/d(feature_map); zeros where the similarity does not depend on it (e.g. a zero target)."""
    if not similarity.requires_grad:
        return torch.zeros_like(feature_map)
    gradient = torch.autograd.grad(similarity, feature_map, retain_graph=True, allow_unused=True)[0]
    return torch.zeros_like(feature_map) if gradient is None else gradient


def gradcam(model: nn.Module, image_tensor: Tensor, text_embedding: Tensor) -> np.ndarray:
    """Grad-CAM ``[h, w]`` in [0, 1] of the cosine similarity between the image and ``text_embedding`` [D].

    ``image_tensor`` is one preprocessed image ``[1, 3, H, W]``; ``h, w`` is the feature map's grid.
    """
    text_embedding = torch.as_tensor(text_embedding)
    if text_embedding.ndim != 1:
        raise ValueError(f"text_embedding must be one vector [D], got {list(text_embedding.shape)}")
    return gradcams(model, image_tensor, text_embedding[None])[0][0]


def upsample(cams: np.ndarray, size: int) -> np.ndarray:
    """[Q, h, w] maps -> float32 [Q, size, size], bilinear, each rescaled so its peak is 1 again."""
    if len(cams) == 0:
        return np.zeros((0, size, size), np.float32)
    resized = F.interpolate(torch.from_numpy(cams)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return np.stack([normalise_cam(cam) for cam in resized[:, 0].numpy()])
