"""SynthScenes: procedural image-caption data with many-to-many matches, web-like noise and detector regions.

A scene holds 1-4 coloured shapes on a plain or textured background. Captions mention a random subset of
the objects (sometimes with counts, spatial relations and the background), so one caption fits many images
and one image many captions. Like web alt-text, 20% of captions belong to another scene and 5% name one
wrong attribute. A simulated object-attribute detector gives every object a tag ("large red circle") and a
2052-d ROI feature (2048 appearance + 4 box coordinates), as VinVL would for a photo.

Splits are seeds (``SPLIT_SEEDS``: train 0, val 1, test 2) and sample ``i`` of a split is a pure function
of ``(seed, i)``, generated on the fly. The colour-shape pairs in ``HELD_OUT`` never occur in the train
split (not in images, captions or tags); validation, test and the evaluation sets contain them, which
measures compositional generalisation.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

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
DETECTOR_SEED = 2052  # one fixed detector for every split and every dataset seed
NUM_CAPTIONS = 5  # clean captions per scene
ZEROSHOT_TEMPLATES = (
    "a photo of the {}.",
    "the {} on a background.",
    "a picture showing the {}.",
    "a drawing of the {}.",
    "an image with the {}.",
    "the {} in a simple scene.",
)

_SUPERSAMPLE = 3  # objects are drawn at 3x and box-filtered down: anti-aliased edges
_GAP = 0.02  # minimum distance between two object boxes, fraction of the image side
_PLACEMENT_TRIES = 32
_REPEAT = 0.2  # chance that a new object copies an earlier one's colour and shape (gives counts)
_P_COLOUR, _P_SIZE, _P_COUNT, _P_THE, _P_RELATION, _P_BACKGROUND = 0.85, 0.35, 0.7, 0.2, 0.4, 0.5
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_PLAIN_TEMPLATES = (
    "{objs}.",
    "a photo of {objs}.",
    "an image with {objs}.",
    "a picture showing {objs}.",
    "a drawing of {objs}.",
    "{objs} in a simple scene.",
    "shapes: {objs}.",
    "a rendering of {objs}.",
)
_BACKGROUND_TEMPLATES = (
    "{objs} on a {bg} background.",
    "a photo of {objs} on a {bg} background.",
    "{objs} against a {bg} backdrop.",
    "a {bg} background with {objs}.",
    "a picture of {objs}, {bg} background.",
)
# Independent random streams of one sample, so e.g. changing the caption noise keeps the scenes.
_STREAM_SCENE, _STREAM_CAPTIONS, _STREAM_NOISE, _STREAM_DETECTOR = 0, 1, 2, 3
_STREAM_SHAPES, _STREAM_COLOUR_SHAPE, _STREAM_POINTING = 10, 11, 12

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
    max_rois: int = 10
    roi_dim: int = 2052  # appearance (roi_dim - 4) + box (4)
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


@dataclass
class Sample:
    """One image-caption pair with detector regions: what every softclip data source yields."""

    image: Image.Image  # RGB
    caption: str  # possibly noisy
    rois: np.ndarray  # float32 [max_rois, roi_dim]; padding rows are zero
    roi_mask: np.ndarray  # bool [max_rois]; True = real region
    tags: str  # detector tags joined by ", "
    clean_captions: list[str] = field(default_factory=list)  # SynthScenes: 5 correct captions
    scene: Scene | None = None  # SynthScenes: the ground truth
    noise: str = "clean"  # SynthScenes: "clean", "swapped" or "wrong_attribute"
    key: str = ""
    skipped: tuple[str, ...] = ()  # readers: why the unreadable samples just before this one were skipped
    skip_examples: tuple[str, ...] = ()  # readers: where each of those samples was (its key, file, row)


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


# ---------------------------------------------------------------------------------------------- rendering


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


# ------------------------------------------------------------------------------------------------ captions


@dataclass(frozen=True)
class _Mention:
    """A noun phrase of a caption; attributes left out are None."""

    shape: str
    colour: str | None
    size: str | None
    count: int  # how many objects it names (> 1 is said with a number word)
    target: SceneObject | None  # the one scene object it singles out, if it is unique


def _fits(obj: SceneObject, shape: str, colour: str | None, size: str | None) -> bool:
    return obj.shape == shape and colour in (None, obj.colour) and size in (None, obj.size)


def caption_for(
    scene: Scene,
    rng: np.random.Generator,
    *,
    wrong_attribute: bool = False,
    excluded: frozenset[tuple[str, str]] = frozenset(),
) -> str:
    """A caption mentioning a random non-empty subset of the scene's objects.

    Counts ("two red circles") and relations ("above") are only said when true of the whole scene. With
    `wrong_attribute`, one mention gets a colour, shape or size that no object in the scene has, never
    forming a pair in `excluded`.
    """
    if not scene.objects:
        raise ValueError("cannot caption a scene without objects")
    mentions = _mentions(scene, rng)
    if wrong_attribute:
        mentions = _corrupt(mentions, scene, rng, excluded)
    return _fill_template(_join(_phrases(mentions, rng)), scene, rng)


def _mentions(scene: Scene, rng: np.random.Generator) -> list[_Mention]:
    chosen = rng.permutation(len(scene.objects))[: int(rng.integers(1, len(scene.objects) + 1))]
    descriptions: list[tuple[str, str | None, str | None]] = []
    for obj in (scene.objects[int(i)] for i in chosen):
        colour = obj.colour if rng.random() < _P_COLOUR else None
        description = (obj.shape, colour, obj.size if rng.random() < _P_SIZE else None)
        if description not in descriptions:
            descriptions.append(description)
    mentions, named = [], []
    for description in descriptions:
        matching = [i for i, o in enumerate(scene.objects) if _fits(o, *description)]
        if matching not in named:  # "two blue squares" and "two small blue squares" name the same pair
            named.append(matching)
            mentions.append(_mention(scene, description, rng))
    return mentions


def _mention(scene: Scene, description: tuple[str, str | None, str | None], rng: np.random.Generator) -> _Mention:
    matching = [o for o in scene.objects if _fits(o, *description)]
    count = len(matching) if len(matching) > 1 and rng.random() < _P_COUNT else 1
    return _Mention(*description, count=count, target=matching[0] if len(matching) == 1 else None)


def _corrupt(
    mentions: list[_Mention], scene: Scene, rng: np.random.Generator, excluded: frozenset[tuple[str, str]]
) -> list[_Mention]:
    """Replaces one mention by one naming an object that the scene does not have."""
    index = int(rng.integers(len(mentions)))
    original = next(o for o in scene.objects if _fits(o, mentions[index].shape, mentions[index].colour, None))
    candidates = [(attribute, value) for attribute, values in _ATTRIBUTE_VALUES.items() for value in values]
    for attribute, value in (candidates[int(i)] for i in rng.permutation(len(candidates))):
        wrong = replace(original, **{attribute: value})
        size = wrong.size if attribute == "size" else None
        if (wrong.colour, wrong.shape) in excluded or any(
            _fits(o, wrong.shape, wrong.colour, size) for o in scene.objects
        ):
            continue
        mentions = list(mentions)
        mentions[index] = _Mention(wrong.shape, wrong.colour, size, count=1, target=None)
        return mentions
    raise RuntimeError("no wrong attribute is possible for this scene")


_ATTRIBUTE_VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES}


def _phrases(mentions: list[_Mention], rng: np.random.Generator) -> list[str]:
    """Noun phrases; sometimes two uniquely identified objects are joined by their spatial relation."""
    phrases = [_phrase(m, rng) for m in mentions]
    unique = [i for i, m in enumerate(mentions) if m.target is not None]
    if len(unique) >= 2 and rng.random() < _P_RELATION:
        first, second = (unique[int(i)] for i in rng.permutation(len(unique))[:2])
        relation = spatial_relation(mentions[first].target, mentions[second].target)
        phrases[first] = f"{phrases[first]} {relation} {phrases[second]}"
        del phrases[second]
    return phrases


def _phrase(mention: _Mention, rng: np.random.Generator) -> str:
    noun = mention.shape if mention.count == 1 else _plural(mention.shape)
    words = " ".join(w for w in (mention.size, mention.colour, noun) if w)
    if mention.count > 1:
        return f"{_NUMBER_WORDS[mention.count]} {words}"
    if mention.target is not None and rng.random() < _P_THE:
        return f"the {words}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def spatial_relation(a: SceneObject, b: SceneObject) -> str:
    """Where `a` is relative to `b`, along the axis where their centres are further apart."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _fill_template(objects_text: str, scene: Scene, rng: np.random.Generator) -> str:
    if rng.random() < _P_BACKGROUND:
        words = [TEXTURE_WORDS[scene.background], scene.tone]
        kept = words if rng.random() < 0.5 else [words[int(rng.integers(2))]]
        template = _BACKGROUND_TEMPLATES[int(rng.integers(len(_BACKGROUND_TEMPLATES)))]
        return template.format(objs=objects_text, bg=" ".join(kept))
    return _PLAIN_TEMPLATES[int(rng.integers(len(_PLAIN_TEMPLATES)))].format(objs=objects_text)


# ------------------------------------------------------------------------------------------------ detector

_ATTRIBUTE_INDEX = {
    **{("shape", s): i for i, s in enumerate(SHAPES)},
    **{("colour", c): len(SHAPES) + i for i, c in enumerate(COLOURS)},
    **{("size", s): len(SHAPES) + len(COLOURS) + i for i, s in enumerate(SIZES)},
}


@lru_cache(maxsize=4)
def detector_projection(appearance_dim: int = 2048) -> np.ndarray:
    """float32 [18, appearance_dim]: the fixed projection of the one-hot (shape, colour, size) attributes.

    Seeded by DETECTOR_SEED, so every split and dataset sees the same detector. Scaled so that the sum of an
    object's three rows has unit variance per dimension.
    """
    rng = np.random.default_rng(DETECTOR_SEED)
    weights = (rng.standard_normal((len(_ATTRIBUTE_INDEX), appearance_dim)) / np.sqrt(3.0)).astype(np.float32)
    weights.flags.writeable = False  # shared by every call (cached)
    return weights


def simulate_detector(
    scene: Scene,
    rng: np.random.Generator,
    config: SynthConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(rois float32 [max_rois, roi_dim], roi_mask bool [max_rois], tags) as an object-attribute detector gives.

    Each object is missed with probability `detector_miss` (at least one region is always kept) and
    mislabelled with `detector_mislabel` (one wrong attribute, in both its tag and its feature). A region is
    the noisy projection of its attributes followed by its box (x0, y0, x1, y1 in [0, 1]).
    """
    config = config or SynthConfig()
    detected = _detected_objects(scene, rng, config)
    onehot = np.zeros((len(detected), len(_ATTRIBUTE_INDEX)), np.float32)  # (K, 18)
    for row, obj in enumerate(detected):
        for attribute in ("shape", "colour", "size"):
            onehot[row, _ATTRIBUTE_INDEX[attribute, getattr(obj, attribute)]] = 1.0
    appearance = onehot @ detector_projection(config.roi_dim - 4)  # (K, roi_dim - 4)
    appearance += config.roi_noise * rng.standard_normal(appearance.shape, dtype=np.float32)
    rois = np.zeros((config.max_rois, config.roi_dim), np.float32)
    rois[: len(detected), :-4] = appearance
    rois[: len(detected), -4:] = [obj.box for obj in detected]
    mask = np.arange(config.max_rois) < len(detected)
    return rois, mask, ", ".join(f"{o.size} {o.colour} {o.shape}" for o in detected)


def _detected_objects(scene: Scene, rng: np.random.Generator, config: SynthConfig) -> list[SceneObject]:
    missed = rng.random(len(scene.objects)) < config.detector_miss
    if missed.all():
        missed[0] = False  # a detector always reports its most confident region
    kept = [obj for obj, miss in zip(scene.objects, missed, strict=True) if not miss][: config.max_rois]
    mislabelled = rng.random(len(kept)) < config.detector_mislabel
    return [_mislabel(o, rng, config.excluded_pairs) if bad else o for o, bad in zip(kept, mislabelled, strict=True)]


def _mislabel(obj: SceneObject, rng: np.random.Generator, excluded: frozenset[tuple[str, str]]) -> SceneObject:
    """The object with one attribute changed to another value, avoiding `excluded` colour-shape pairs."""
    while True:
        attribute = ("shape", "colour", "size")[int(rng.integers(3))]
        others = [v for v in _ATTRIBUTE_VALUES[attribute] if v != getattr(obj, attribute)]
        wrong = replace(obj, **{attribute: others[int(rng.integers(len(others)))]})
        if (wrong.colour, wrong.shape) not in excluded:
            return wrong


# ------------------------------------------------------------------------------------------------- dataset


class SynthScenes(Dataset):
    """`length` samples of a split; sample `i` is generated on the fly from (seed, i).

    `seed` defaults to the split's (SPLIT_SEEDS); the split, not the seed, decides whether the held-out
    compositions are excluded (they are in "train").
    """

    def __init__(self, config: SynthConfig | None = None, length: int = 100_000, seed: int | None = None):
        self.config = config or SynthConfig()
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        self.length = length
        self.seed = SPLIT_SEEDS[self.config.split] if seed is None else seed
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        scene = self.scene(index)
        clean = self._clean_captions(scene, index, NUM_CAPTIONS)
        caption, noise = self._caption(scene, index, clean[0])
        rois, roi_mask, tags = simulate_detector(scene, self._rng(index, _STREAM_DETECTOR), self.config)
        image = render_scene(scene, self.config.image_size)
        return Sample(image, caption, rois, roi_mask, tags, clean, scene, noise, key=f"{index:06d}")

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return int(index)

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, index, stream))

    def scene(self, index: int) -> Scene:
        """The scene of sample `index`, without rendering it (any index >= 0, also past the length)."""
        rng = self._rng(index, _STREAM_SCENE)
        return sample_scene(rng, self.config.max_objects, self.config.excluded_pairs)

    def clean_captions(self, index: int) -> list[str]:
        """The NUM_CAPTIONS correct captions of sample `index`."""
        return self._clean_captions(self.scene(index), index, NUM_CAPTIONS)

    def _clean_captions(self, scene: Scene, index: int, count: int) -> list[str]:
        rng = self._rng(index, _STREAM_CAPTIONS)  # the first `count` of one stream: count=1 gives the first
        return [caption_for(scene, rng) for _ in range(count)]

    def caption(self, index: int) -> tuple[str, str]:
        """(caption, noise) of sample `index`; noise is "clean", "swapped" or "wrong_attribute"."""
        return self._caption(self.scene(index), index)

    def _caption(self, scene: Scene, index: int, first_clean: str | None = None) -> tuple[str, str]:
        """A clean caption is the first clean one; a swapped one is the first clean caption of another scene."""
        rng = self._rng(index, _STREAM_NOISE)
        draw = rng.random()
        if draw < self.config.caption_noise:
            other = int(rng.integers(1 << 31))
            other = other if other != index else other + 1
            return self._clean_captions(self.scene(other), other, 1)[0], "swapped"
        if draw < self.config.caption_noise + self.config.attribute_noise:
            excluded = self.config.excluded_pairs
            return caption_for(scene, rng, wrong_attribute=True, excluded=excluded), "wrong_attribute"
        return first_clean or self._clean_captions(scene, index, 1)[0], "clean"

    def texts(self, index: int) -> list[str]:
        """The caption and the detector tags of sample `index`, without rendering (for tokenizer training)."""
        scene = self.scene(index)
        _, _, tags = simulate_detector(scene, self._rng(index, _STREAM_DETECTOR), self.config)
        return [self._caption(scene, index)[0], tags]


# ---------------------------------------------------------------------------------------- evaluation sets


@dataclass
class ZeroShotSet:
    """Single-object images with class labels, class names and prompt templates (`template.format(name)`)."""

    images: list[Image.Image]
    labels: list[int]
    classnames: list[str]
    templates: list[str]
    scenes: list[Scene]
    held_out_classes: list[int] = field(default_factory=list)  # classes never seen in training


@dataclass
class RetrievalSet:
    """Test scenes with NUM_CAPTIONS clean captions each (`captions[i]` describe `images[i]`)."""

    images: list[Image.Image]
    captions: list[list[str]]
    scenes: list[Scene]


@dataclass
class PointingSet:
    """Multi-object scenes with a "colour shape" query naming exactly one object, and that object's box."""

    images: list[Image.Image]
    queries: list[str]
    boxes: np.ndarray  # float32 [n, 4]: x0, y0, x1, y1 as fractions of the image side
    scenes: list[Scene]


def held_out_compositions() -> list[tuple[str, str]]:
    """The (colour, shape) pairs absent from the train split and present in the evaluation sets."""
    return list(HELD_OUT)


def zeroshot_shapes(n: int = 800, seed: int = SPLIT_SEEDS["test"], image_size: int = 64) -> ZeroShotSet:
    """`n` single-object scenes labelled by shape (8 classes, balanced); colours include held-out pairs."""
    scenes = []
    for i in range(_check_count(n)):
        rng = np.random.default_rng((seed, i, _STREAM_SHAPES))
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        scenes.append(single_object_scene(rng, colour, SHAPES[i % len(SHAPES)]))
    images = [render_scene(s, image_size) for s in scenes]
    labels = [i % len(SHAPES) for i in range(n)]
    return ZeroShotSet(images, labels, list(SHAPES), list(ZEROSHOT_TEMPLATES), scenes)


def zeroshot_colour_shape(n: int = 1280, seed: int = SPLIT_SEEDS["test"], image_size: int = 64) -> ZeroShotSet:
    """`n` single-object scenes labelled "colour shape" (64 classes, balanced, the held-out ones included)."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    scenes = []
    for i in range(_check_count(n)):
        rng = np.random.default_rng((seed, i, _STREAM_COLOUR_SHAPE))
        scenes.append(single_object_scene(rng, *pairs[i % len(pairs)]))
    images = [render_scene(s, image_size) for s in scenes]
    labels = [i % len(pairs) for i in range(n)]
    held_out = [pairs.index(p) for p in HELD_OUT]
    classnames = [f"{c} {s}" for c, s in pairs]
    return ZeroShotSet(images, labels, classnames, list(ZEROSHOT_TEMPLATES), scenes, held_out)


def retrieval_set(n: int = 1000, seed: int = SPLIT_SEEDS["test"], image_size: int = 64) -> RetrievalSet:
    """`n` test-split scenes, each with NUM_CAPTIONS clean captions."""
    data = SynthScenes(SynthConfig(image_size=image_size, split="test"), length=_check_count(n), seed=seed)
    scenes = [data.scene(i) for i in range(n)]
    captions = [data.clean_captions(i) for i in range(n)]
    return RetrievalSet([render_scene(s, image_size) for s in scenes], captions, scenes)


def pointing_set(n: int = 500, seed: int = SPLIT_SEEDS["test"], image_size: int = 64) -> PointingSet:
    """`n` scenes of 2-4 objects, each with a query naming one object whose colour and shape are unique."""
    scenes, targets = [], []
    for i in range(_check_count(n)):
        scene, target = _pointing_scene(seed, i)
        scenes.append(scene)
        targets.append(target)
    boxes = np.asarray([t.box for t in targets], np.float32).reshape(n, 4)
    images = [render_scene(s, image_size) for s in scenes]
    return PointingSet(images, [t.name for t in targets], boxes, scenes)


def _pointing_scene(seed: int, index: int) -> tuple[Scene, SceneObject]:
    for attempt in range(1000):
        rng = np.random.default_rng((seed, index, _STREAM_POINTING, attempt))
        scene = sample_scene(rng, max_objects=4, min_objects=2)
        names = [o.name for o in scene.objects]
        unique = [o for o in scene.objects if names.count(o.name) == 1]
        if len(scene.objects) >= 2 and unique:
            return scene, unique[int(rng.integers(len(unique)))]
    raise RuntimeError("no scene with a uniquely named object found")


def _check_count(n: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return n


# --------------------------------------------------------------------------------------------- on disk


def write_split(
    out_dir: str | Path,
    n: int,
    seed: int | None = None,
    fmt: str = "csv",
    config: SynthConfig | None = None,
    shard_size: int = 1000,
    image_format: str = "jpg",
) -> str:
    """Writes `n` samples of a split where the real data readers read them; returns what to pass them.

    "csv": ``images/KEY.jpg``, ``rois/KEY.npy`` (K, roi_dim) with the real regions only, and
    ``captions.csv`` (filepath, caption, roi_path, tags; paths relative to it); returns the CSV's path.
    "wds": tar shards ``shard-000000.tar``... of `shard_size` samples with members ``KEY.jpg``,
    ``KEY.txt`` (caption), ``KEY.json`` ({"key", "caption", "tags"}), ``KEY.roi.npy`` and ``KEY.tags.txt``
    as img2dataset writes them plus the ROI members; returns the brace pattern of the shards.
    """
    if fmt not in ("csv", "wds"):
        raise ValueError(f"unknown format {fmt!r}; use 'csv' or 'wds'")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"unknown image format {image_format!r}; use 'jpg' or 'png'")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    data = SynthScenes(config, length=_check_count(n), seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        return str(_write_csv(data, out, image_format))
    return _write_shards(data, out, shard_size, image_format)


def _write_csv(data: SynthScenes, out: Path, image_format: str) -> Path:
    (out / "images").mkdir(exist_ok=True)
    (out / "rois").mkdir(exist_ok=True)
    path = out / "captions.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "caption", "roi_path", "tags"])
        for sample in data:
            image_path, roi_path = f"images/{sample.key}.{image_format}", f"rois/{sample.key}.npy"
            (out / image_path).write_bytes(_image_bytes(sample.image, image_format))
            np.save(out / roi_path, sample.rois[sample.roi_mask])
            writer.writerow([image_path, sample.caption, roi_path, sample.tags])
    return path


def _write_shards(data: SynthScenes, out: Path, shard_size: int, image_format: str) -> str:
    shards = (len(data) + shard_size - 1) // shard_size
    for shard in range(shards):
        with tarfile.open(out / f"shard-{shard:06d}.tar", "w") as tar:
            for index in range(shard * shard_size, min(len(data), (shard + 1) * shard_size)):
                _add_sample(tar, data[index], image_format)
    return str(out / f"shard-{{000000..{shards - 1:06d}}}.tar")


def _add_sample(tar: tarfile.TarFile, sample: Sample, image_format: str) -> None:
    roi_buffer = io.BytesIO()
    np.save(roi_buffer, sample.rois[sample.roi_mask])
    metadata = {"key": sample.key, "caption": sample.caption, "tags": sample.tags}
    members = {
        image_format: _image_bytes(sample.image, image_format),
        "txt": sample.caption.encode("utf-8"),
        "json": json.dumps(metadata).encode("utf-8"),
        "roi.npy": roi_buffer.getvalue(),
        "tags.txt": sample.tags.encode("utf-8"),
    }
    for extension, payload in members.items():
        info = tarfile.TarInfo(f"{sample.key}.{extension}")
        info.size, info.mode = len(payload), 0o644
        tar.addfile(info, io.BytesIO(payload))


def _image_bytes(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=95, subsampling=0)  # 4:4:4: small shapes keep their colour
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()
