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
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from softclip.training.captions import caption_for
from softclip.training.detector import simulate_detector
from softclip.training.render import render_scene
from softclip.training.sample import Sample
from softclip.training.scenes import (
    SPLIT_SEEDS,
    Scene,
    SynthConfig,
    sample_scene,
)

NUM_CAPTIONS = 5  # clean captions per scene
# Independent random streams of one sample, so e.g. changing the caption noise keeps the scenes.
_STREAM_SCENE, _STREAM_CAPTIONS, _STREAM_NOISE, _STREAM_DETECTOR = 0, 1, 2, 3

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


def check_count(n: int) -> int:
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
    data = SynthScenes(config, length=check_count(n), seed=seed)
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
