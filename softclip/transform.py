"""The one image preprocessing of softclip: decode to RGB, resize, crop and normalise.

Training, export, indexing and the app all go through ``image_to_array`` (``image_to_tensor`` wraps it),
and all resizing is done by Pillow, so every path sees the same pixels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FILE_NAME = "preprocess.json"
RESIZE_MODES = ("shortest", "squash")
CROP_OFFSETS = ("exact", "round", "floor")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ORIENTATION_TAG = 0x0112  # EXIF "Orientation"; 1 means upright
_WHITE = (255, 255, 255, 255)


@dataclass
class PreprocessConfig:
    """How an image becomes model input; written as ``preprocess.json`` into checkpoints and exports.

    ``resize_mode``: ``"shortest"`` scales the shorter side to ``size`` and centre-crops a square,
    ``"squash"`` scales to ``size x size`` whatever the aspect ratio.

    ``crop_offset`` (``"shortest"`` only): ``"exact"`` resamples the exactly centred square once (softclip's
    own); ``"round"`` and ``"floor"`` resize the whole image first (the long side truncated to whole pixels),
    then cut the square at a whole-pixel offset, rounded half to even as torchvision does (OpenAI, open_clip)
    or floored as transformers does, so that pretrained CLIP models see their source's pixels.
    """

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    crop_offset: str = "exact"

    def __post_init__(self) -> None:
        self.mean = tuple(float(value) for value in self.mean)
        self.std = tuple(float(value) for value in self.std)
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive integer, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std positive; got mean={self.mean}, std={self.std}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop_offset not in CROP_OFFSETS:
            raise ValueError(f"crop_offset must be one of {CROP_OFFSETS}, got {self.crop_offset!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        unknown = set(data) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown preprocess config keys: {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write ``preprocess.json`` into the folder ``path`` (or to ``path`` when it ends in ``.json``)."""
        file = _to_file(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return file

    @classmethod
    def load(cls, path: str | Path) -> PreprocessConfig:
        """Read ``preprocess.json`` (give the file or the folder holding it)."""
        file = _to_file(path)
        if not file.is_file():
            raise FileNotFoundError(f"preprocess config not found: {file}")
        try:
            return cls.from_dict(json.loads(file.read_text()))
        except (ValueError, TypeError) as error:  # bad JSON, unknown keys or bad values
            raise ValueError(f"{file} is not a valid preprocess config: {error}") from error


def _to_file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" else path / FILE_NAME


# ---- decoding ---------------------------------------------------------------------------------------------------


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """An upright RGB image from a file or a PIL image, whatever its mode.

    EXIF orientation is applied; transparency is composited on white; 16-bit, 32-bit and float
    grayscale are scaled to 8 bit; an animated file gives its first frame (a PIL image, its current
    frame). An upright RGB PIL image is returned as it is.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(_upright(source))
    path = Path(source)
    try:
        with Image.open(path) as image:
            image.seek(0)  # first frame of a GIF, APNG or multi-page TIFF
            image.load()
            rgb = _to_rgb(_upright(image))
            return rgb.copy() if rgb is image else rgb  # closing the file frees the pixels of ``image``
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error


def _upright(image: Image.Image) -> Image.Image:
    if image.getexif().get(_ORIENTATION_TAG, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "La":  # premultiplied alpha: Pillow converts it to RGBA only through LA
        image, mode = image.convert("LA"), "LA"
    if mode in ("RGBA", "LA", "PA", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        return _on_white(image.convert("RGBA"))
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_gray_to_uint8(np.asarray(image), mode)).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"cannot convert an image of mode {mode!r} to RGB: {error}") from error


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """8-bit [H, W] from 16-bit, 32-bit integer or float grayscale, scaled by the range the values use.

    16-bit modes span 0..65535. For 32-bit integers and floats the full scale is guessed from the
    largest value: 1 for floats up to 1, 255 up to 255, 65535 up to 65535, else the image's own range.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    full_scale = _full_scale(values, mode)
    low, high = (0.0, full_scale) if full_scale else (float(values.min()), float(values.max()))
    scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _full_scale(values: np.ndarray, mode: str) -> float | None:
    if mode.startswith("I;16"):
        return 65535.0
    if values.size == 0 or values.min() < 0:
        return None
    largest = float(values.max())
    scales = (1.0, 255.0, 65535.0) if mode == "F" else (255.0, 65535.0)
    return next((scale for scale in scales if largest <= scale), None)


# ---- resizing and normalising -----------------------------------------------------------------------------------


def _crop_box(width: int, height: int, config: PreprocessConfig) -> tuple[float, float, float, float]:
    """Source box that ``config.resize_mode`` maps onto the ``size x size`` output."""
    if config.resize_mode == "squash":
        return (0.0, 0.0, float(width), float(height))
    side = min(width, height)  # the centred square that the shorter-side resize and centre crop keep
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def resize_and_crop(image: str | Path | Image.Image, config: PreprocessConfig) -> Image.Image:
    """``size x size`` RGB image: one Pillow resample (antialiased when shrinking) of the cropped region."""
    image = load_image(image)
    if config.resize_mode == "shortest" and config.crop_offset != "exact":
        return _resize_then_crop(image, config)
    box = _crop_box(image.width, image.height, config)
    return image.resize((config.size, config.size), INTERPOLATIONS[config.interpolation], box=box, reducing_gap=None)


def _resize_then_crop(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """The shorter side resized to ``size`` (the longer one truncated), then a whole-pixel centre crop."""
    size, (width, height) = config.size, image.size
    short, long = min(width, height), max(width, height)
    resized_long = int(size * long / short)
    new_size = (size, resized_long) if width <= height else (resized_long, size)
    resized = image.resize(new_size, INTERPOLATIONS[config.interpolation], reducing_gap=None)
    offset = round if config.crop_offset == "round" else math.floor  # round() is half to even, as torchvision's
    left, top = int(offset((new_size[0] - size) / 2)), int(offset((new_size[1] - size) / 2))
    return resized.crop((left, top, left + size, top + size))


def image_to_array(image: str | Path | Image.Image, config: PreprocessConfig) -> np.ndarray:
    """Model input as float32 ``[3, size, size]``: resized, cropped, scaled to [0, 1] and normalised."""
    pixels = np.asarray(resize_and_crop(image, config), dtype=np.float32) / 255.0  # [H, W, 3]
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def image_to_tensor(image: str | Path | Image.Image, config: PreprocessConfig) -> torch.FloatTensor:
    """``image_to_array`` as a torch tensor ``[3, size, size]``."""
    return torch.from_numpy(image_to_array(image, config))


# ---- training augmentation --------------------------------------------------------------------------------------


def _uniform(rng: random.Random | np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _integer(rng: random.Random | np.random.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]``, both ends included."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return rng.randint(low, high)


class RandomResizedCrop:
    """A random crop covering ``scale`` of the area with aspect ratio in ``ratio``, resized to ``size x size``.

    The random source is passed to every call (``random.Random`` or ``numpy.random.Generator``), so a
    data loader that seeds it from (seed, epoch, sample) gets the same crops again when it resumes.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
        self.size, self.scale, self.ratio, self.interpolation = size, scale, ratio, interpolation

    def crop_box(self, width: int, height: int, rng: random.Random | np.random.Generator) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of a random crop of a ``width x height`` image."""
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            area = width * height * _uniform(rng, *self.scale)
            aspect = math.exp(_uniform(rng, log_low, log_high))  # width / height, log-uniform
            crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left, top = _integer(rng, 0, width - crop_w), _integer(rng, 0, height - crop_h)
                return (left, top, left + crop_w, top + crop_h)
        return self._central_box(width, height)

    def _central_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Fallback: the largest centred crop whose aspect ratio lies in ``ratio``."""
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        crop_w, crop_h = min(width, round(height * aspect)), min(height, round(width / aspect))
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        return (left, top, left + crop_w, top + crop_h)

    def __call__(self, image: Image.Image, rng: random.Random | np.random.Generator) -> Image.Image:
        """The ``size x size`` RGB crop; normalise it with ``image_to_tensor`` and ``resize_mode="squash"``."""
        image = load_image(image)
        box = self.crop_box(image.width, image.height, rng)
        return image.resize((self.size, self.size), INTERPOLATIONS[self.interpolation], box=box, reducing_gap=None)
