"""The simulated object-attribute detector: a tag and a 2052-d ROI feature for every detected object."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np

from softclip.training.scenes import (
    ATTRIBUTE_VALUES,
    COLOURS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    SynthConfig,
)

DETECTOR_SEED = 2052  # one fixed detector for every split and every dataset seed


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
        others = [v for v in ATTRIBUTE_VALUES[attribute] if v != getattr(obj, attribute)]
        wrong = replace(obj, **{attribute: others[int(rng.integers(len(others)))]})
        if (wrong.colour, wrong.shape) not in excluded:
            return wrong
