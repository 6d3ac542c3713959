"""Drawing a SynthScenes scene: anti-aliased shapes on a plain or patterned background."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from softclip.training.scenes import (
    COLOURS,
    TEXTURE_CONTRAST,
    TEXTURES,
    TONES,
    Scene,
    SceneObject,
)

_SUPERSAMPLE = 3  # objects are drawn at 3x and box-filtered down: anti-aliased edges


def _regular_polygon(corners: int, outer: float, inner: float | None = None) -> np.ndarray:
    """Points in the unit square, first corner at the top; `inner` alternates radii (a star)."""
    count = corners * (2 if inner else 1)
    angles = -np.pi / 2 + 2 * np.pi * np.arange(count) / count
    radii = np.where(np.arange(count) % 2 == 1, inner, outer) if inner else np.full(count, outer)
    return np.stack([0.5 + radii * np.cos(angles), 0.5 + radii * np.sin(angles)], axis=1)


_POLYGONS = {  # (P, 2) points in the unit square
    "square": np.array([(0, 0), (1, 0), (1, 1), (0, 1)], dtype=float),
    "triangle": np.array([(0.5, 0), (1, 1), (0, 1)], dtype=float),
    "diamond": np.array([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)], dtype=float),
    "hexagon": _regular_polygon(6, 0.5)[:, ::-1],  # x and y swapped: flat top and bottom
    "star": _regular_polygon(5, 0.5, 0.2),
    "cross": np.array([(1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1)])
    / 3,
}
_RING_WIDTH = 0.22  # ring stroke / object side


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a `size` x `size` RGB image (deterministic: the texture is seeded by the scene)."""
    canvas_side = size * _SUPERSAMPLE
    background = Image.fromarray(background_pixels(scene, size))
    canvas = background.resize((canvas_side, canvas_side), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_object(draw, obj, canvas_side)
    return canvas.reduce(_SUPERSAMPLE)  # box filter: anti-aliased edges, background pixels unchanged


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, canvas_side: int) -> None:
    x0, y0, x1, y1 = (c * canvas_side for c in obj.box)
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=fill, width=max(1, round(_RING_WIDTH * (x1 - x0))))
    else:
        points = _POLYGONS[obj.shape] * (x1 - x0) + (x0, y0)
        draw.polygon([tuple(p) for p in points.tolist()], fill=fill)


def background_pixels(scene: Scene, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the scene's tone, varied by its texture by at most TEXTURE_CONTRAST."""
    if scene.background == "noise":
        pattern = np.random.default_rng(scene.texture_seed).uniform(-1.0, 1.0, (size, size))
        return _tinted(pattern, scene.tone)
    variants = _TEXTURE_VARIANTS.get(scene.background, 1)
    return _patterned_background(scene.background, scene.texture_seed % variants, scene.tone, size)


# Stripes: 4 angles x 8 widths; checks: 8 sizes; gradients: 64 directions (variant = texture_seed % count).
_TEXTURE_VARIANTS = {"plain": 1, "stripes": 32, "checks": 8, "gradient": 64}


@lru_cache(maxsize=2048)
def _patterned_background(texture: str, variant: int, tone: str, size: int) -> np.ndarray:
    if texture not in _TEXTURE_PATTERNS:
        raise ValueError(f"unknown background {texture!r}; use one of {', '.join(TEXTURES)}")
    pixels = _tinted(_TEXTURE_PATTERNS[texture](variant, size), tone)
    pixels.flags.writeable = False  # shared by every scene with this background (cached)
    return pixels


def _tinted(pattern: np.ndarray, tone: str) -> np.ndarray:
    """[size, size] pattern in [-1, 1] -> uint8 [size, size, 3] around the tone's colour."""
    pixels = np.asarray(TONES[tone], np.float32) + TEXTURE_CONTRAST * pattern[..., None]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))  # x, y: [size, size]


def _stripes(variant: int, size: int) -> np.ndarray:
    x, y = _coordinates(size)
    angle = np.pi / 4 * (variant % 4)  # horizontal, vertical or diagonal
    period = (0.1 + 0.1 * (variant // 4 % 8) / 7) * size
    return np.where(np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period) >= 0, 1.0, -1.0)


def _gradient(variant: int, size: int) -> np.ndarray:
    x, y = _coordinates(size)
    angle = 2 * np.pi * variant / _TEXTURE_VARIANTS["gradient"]
    along = x * np.cos(angle) + y * np.sin(angle)
    return 2 * (along - along.min()) / max(float(np.ptp(along)), 1e-6) - 1


def _checks(variant: int, size: int) -> np.ndarray:
    x, y = _coordinates(size)
    cell = max(2, round((0.1 + 0.08 * (variant % 8) / 7) * size))
    return np.where(((x // cell + y // cell) % 2) == 0, 1.0, -1.0)


_TEXTURE_PATTERNS = {  # variant, size -> [size, size] in [-1, 1]
    "plain": lambda variant, size: np.zeros((size, size), np.float32),
    "stripes": _stripes,
    "gradient": _gradient,
    "checks": _checks,
}
