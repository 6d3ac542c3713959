"""SynthScenes evaluation sets: zero-shot shapes and colour-shapes, retrieval and the pointing game."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from softclip.training.render import render_scene
from softclip.training.scenes import (
    COLOURS,
    HELD_OUT,
    SHAPES,
    SPLIT_SEEDS,
    Scene,
    SceneObject,
    SynthConfig,
    sample_scene,
    single_object_scene,
)
from softclip.training.synthetic import SynthScenes, check_count

ZEROSHOT_TEMPLATES = (
    "a photo of the {}.",
    "the {} on a background.",
    "a picture showing the {}.",
    "a drawing of the {}.",
    "an image with the {}.",
    "the {} in a simple scene.",
)
# Independent random streams of one sample, so e.g. changing the caption noise keeps the scenes.
_STREAM_SHAPES, _STREAM_COLOUR_SHAPE, _STREAM_POINTING = 10, 11, 12


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
    for i in range(check_count(n)):
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
    for i in range(check_count(n)):
        rng = np.random.default_rng((seed, i, _STREAM_COLOUR_SHAPE))
        scenes.append(single_object_scene(rng, *pairs[i % len(pairs)]))
    images = [render_scene(s, image_size) for s in scenes]
    labels = [i % len(pairs) for i in range(n)]
    held_out = [pairs.index(p) for p in HELD_OUT]
    classnames = [f"{c} {s}" for c, s in pairs]
    return ZeroShotSet(images, labels, classnames, list(ZEROSHOT_TEMPLATES), scenes, held_out)


def retrieval_set(n: int = 1000, seed: int = SPLIT_SEEDS["test"], image_size: int = 64) -> RetrievalSet:
    """`n` test-split scenes, each with NUM_CAPTIONS clean captions."""
    data = SynthScenes(SynthConfig(image_size=image_size, split="test"), length=check_count(n), seed=seed)
    scenes = [data.scene(i) for i in range(n)]
    captions = [data.clean_captions(i) for i in range(n)]
    return RetrievalSet([render_scene(s, image_size) for s in scenes], captions, scenes)


def pointing_set(n: int = 500, seed: int = SPLIT_SEEDS["test"], image_size: int = 64) -> PointingSet:
    """`n` scenes of 2-4 objects, each with a query naming one object whose colour and shape are unique."""
    scenes, targets = [], []
    for i in range(check_count(n)):
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
