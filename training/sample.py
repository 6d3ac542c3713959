"""`Sample`: the record every softclip data source yields (SynthScenes and the real-data readers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from softclip.training.scenes import Scene


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
