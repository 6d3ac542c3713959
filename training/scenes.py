"""SynthScenes' world: its vocabulary (shapes, colours, sizes, backgrounds), the held-out compositions,
the sampling settings (`SynthConfig`) and random scenes of non-overlapping objects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softclip.config import MAX_ROIS, ROI_DIM

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "hexagon")
# Saturated colours, at least 80 apart (RGB distance) from each other and from every background pixel.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "yellow": (250, 220, 30),
    "purple": (150, 40, 190),
    "orange": (245, 120, 10),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
SIZES = ("small", "large")
SIZE_RANGE = {"small": (0.18, 0.24), "large": (0.30, 0.40)}  # side of an object's square box / image side
TEXTURES = ("plain", "stripes", "noise", "gradient", "checks")
TEXTURE_WORDS = {
    "plain": "plain",
    "stripes": "striped",
    "noise": "speckled",
    "gradient": "shaded",
    "checks": "checkered",
}
TONES = {"grey": (125, 125, 125), "beige": (150, 138, 118), "slate": (104, 114, 134), "sage": (114, 134, 108)}
TEXTURE_CONTRAST = 18  # a texture moves every channel of its tone by at most this much

# One pair per colour and per shape, so training still sees every colour and every shape.
HELD_OUT = (
    ("red", "hexagon"),
    ("green", "star"),
    ("blue", "triangle"),
    ("yellow", "ring"),
    ("purple", "square"),
    ("orange", "cross"),
    ("white", "circle"),
    ("black", "diamond"),
)
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}

_GAP = 0.02  # minimum distance between two object boxes, fraction of the image side
_PLACEMENT_TRIES = 32
_REPEAT = 0.2  # chance that a new object copies an earlier one's colour and shape (gives counts)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image side
# --------------------------------------------------------------------------------------------------- types


@dataclass
class SynthConfig:
    """How SynthScenes samples look and how noisy their captions and detections are."""

    image_size: int = 64
    caption_noise: float = 0.2  # fraction of captions swapped with another scene's
    attribute_noise: float = 0.05  # fraction of captions with one wrong attribute (disjoint from the swaps)
    detector_miss: float = 0.1  # chance that the detector misses an object (it always keeps one region)
    detector_mislabel: float = 0.05  # chance that a detected object gets one wrong attribute (tag and feature)
    roi_noise: float = 0.5  # std of the Gaussian noise on ROI appearance features (the clean part has std 1)
    max_objects: int = 4
    max_rois: int = MAX_ROIS
    roi_dim: int = ROI_DIM  # appearance (roi_dim - 4) + box (4)
    split: str = "train"

    def __post_init__(self) -> None:
        if self.split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {self.split!r}; use one of {', '.join(SPLIT_SEEDS)}")
        for name in ("caption_noise", "attribute_noise", "detector_miss", "detector_mislabel"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.caption_noise + self.attribute_noise > 1.0:
            raise ValueError("caption_noise + attribute_noise must not exceed 1")
        if self.roi_noise < 0:
            raise ValueError(f"roi_noise must be >= 0, got {self.roi_noise}")
        _check_range("image_size", self.image_size, 16, 4096)
        _check_range("max_objects", self.max_objects, 1, 9)
        _check_range("max_rois", self.max_rois, 1, 1000)
        _check_range("roi_dim", self.roi_dim, 5, 1 << 16)

    @property
    def excluded_pairs(self) -> frozenset[tuple[str, str]]:
        """The (colour, shape) pairs this split never shows: the held-out ones in train, none elsewhere."""
        return frozenset(HELD_OUT) if self.split == "train" else frozenset()


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene; `box` is its square bounding box in image fractions."""

    shape: str
    colour: str
    size: str  # "small" or "large"
    box: Box

    @property
    def name(self) -> str:
        """The "colour shape" class name of zero-shot colour-shape labeling."""
        return f"{self.colour} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    """Non-overlapping objects on a `background` texture of a muted `tone`."""

    objects: list[SceneObject]
    background: str  # one of TEXTURES
    tone: str  # one of TONES
    texture_seed: int = 0  # stripe width, check size, noise... (rendering is a pure function of the scene)


ATTRIBUTE_VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES}

# ------------------------------------------------------------------------------------------------- scenes


def sample_scene(
    rng: np.random.Generator,
    max_objects: int = 4,
    excluded: frozenset[tuple[str, str]] = frozenset(),
    min_objects: int = 1,
) -> Scene:
    """A random scene of `min_objects`..`max_objects` objects whose (colour, shape) is not in `excluded`.

    Placement is by rejection, so a crowded scene may hold fewer objects than drawn (never fewer than one).
    """
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in excluded]
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        colour, shape = _pick_pair(rng, objects, pairs)
        size = SIZES[int(rng.integers(len(SIZES)))]
        box = _place(rng, size, [o.box for o in objects])
        if box is not None:
            objects.append(SceneObject(shape, colour, size, box))
    background = TEXTURES[int(rng.integers(len(TEXTURES)))]
    tone = list(TONES)[int(rng.integers(len(TONES)))]
    return Scene(objects, background, tone, int(rng.integers(1 << 31)))


def _pick_pair(rng: np.random.Generator, objects: list[SceneObject], pairs: list[tuple[str, str]]) -> tuple[str, str]:
    if objects and rng.random() < _REPEAT:
        earlier = objects[int(rng.integers(len(objects)))]
        return earlier.colour, earlier.shape
    return pairs[int(rng.integers(len(pairs)))]


def _place(rng: np.random.Generator, size: str, others: list[Box]) -> Box | None:
    """A box of the given size class apart from all `others`, or None when the tries run out."""
    side = float(rng.uniform(*SIZE_RANGE[size]))
    corners = rng.uniform(0.0, 1.0 - side, size=(_PLACEMENT_TRIES, 2))  # (T, 2) candidate x0, y0
    if others:
        taken = np.asarray(others)[None]  # (1, M, 4)
        x0, y0 = corners[:, None, 0], corners[:, None, 1]  # (T, 1)
        apart_x = (x0 >= taken[..., 2] + _GAP) | (x0 + side + _GAP <= taken[..., 0])
        apart_y = (y0 >= taken[..., 3] + _GAP) | (y0 + side + _GAP <= taken[..., 1])
        free = np.flatnonzero((apart_x | apart_y).all(axis=1))
        if free.size == 0:
            return None
        corners = corners[free]
    x0, y0 = float(corners[0, 0]), float(corners[0, 1])
    return x0, y0, x0 + side, y0 + side


def single_object_scene(rng: np.random.Generator, colour: str, shape: str) -> Scene:
    """A scene of one object of the given colour and shape (random size, position and background)."""
    size = SIZES[int(rng.integers(len(SIZES)))]
    box = _place(rng, size, [])
    background = TEXTURES[int(rng.integers(len(TEXTURES)))]
    tone = list(TONES)[int(rng.integers(len(TONES)))]
    return Scene([SceneObject(shape, colour, size, box)], background, tone, int(rng.integers(1 << 31)))
