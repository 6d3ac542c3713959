"""VinVL region features and tags, read in the two layouts they exist in on disk, joined to captions by key.

1. Extracted with scene_graph_benchmark (`tools/test_sg_net.py ... TEST.OUTPUT_FEATURE True`): `predictions.tsv`
   and `predictions.lineidx`, one row per image, ``key<TAB>{"objects": [...]}``. Each object has `rect` (x1, y1,
   x2, y2 in pixels of the original image), `class`, `conf`, `feature` (base64 float32 [2048]) and, when
   attributes were on, `attributes` with `attr_scores`. Image sizes are not in the file: they come from the
   dataset's `hw.tsv` (``key<TAB>[{"height": H, "width": W}]``) beside it, else from the image itself.
2. Microsoft's pre-extracted download, in chunk folders: `features.tsv` (``id<TAB>num_boxes<TAB>base64 float32
   [num_boxes, 2054]``: 2048 appearance values, then the box x1, y1, x2, y2, w, h as fractions of the image),
   `predictions.tsv` (``id<TAB>{"objects": [...], "image_h": H, "image_w": W}``, objects without features, in the
   same row and box order) and `imageid2idx.json` (id -> row). Several chunk folders form one data set.

Every TSV is read through its `.lineidx` (one byte offset per row; built beside the TSV when missing), so
start-up never reads a multi-GB file through. An image gives its `max_rois` most confident regions (ties in
file order) as ROI inputs of 2052 values (2048 appearance + box x1, y1, x2, y2 as fractions of the image), and
one tag per region: the class name, preceded by its best attribute when that scores `ATTRIBUTE_THRESHOLD` or
more. The threshold matters: the detector pads every object's attribute list to a fixed length, and the
padding slots score 0 under arbitrary attribute names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from softclip.config import MAX_ROIS
from softclip.training.data import (
    SkipLog,
    SkippingDataset,
    UnreadableSample,
    checked_caption,
    pad_rois,
    read_image_file,
    read_table,
)
from softclip.training.sample import Sample
from softclip.training.shards import IndexedShards, decode_webdataset_sample, webdataset_caption
from softclip.training.vinvl_layouts import (
    APPEARANCE_DIM,
    ATTRIBUTE_THRESHOLD,
    VinvlFeatures,
)


class CaptionTable:
    """Captions from a CSV/TSV: a key, an image path (relative to `root`, default the table's folder), a caption."""

    def __init__(self, path: Path, key_column: str, image_column: str, caption_column: str, separator, root):
        _, rows = read_table(path, separator, [key_column, image_column, caption_column])
        self.path, self.root = path, Path(root) if root is not None else path.parent
        self.keys = [(row[key_column] or "").strip() for row in rows]
        self.images = [row[image_column] or "" for row in rows]
        self.captions = [row[caption_column] or "" for row in rows]

    def read(self, index: int) -> tuple[Image.Image, str]:
        caption = checked_caption(self.captions[index])
        return read_image_file(self.root / self.images[index]), caption

    def caption(self, index: int) -> str:
        return self.captions[index]

    def describe(self, index: int) -> str:
        return f"{self.path.name} row {index + 1} (key {self.keys[index]})"


class CaptionShards:
    """Captions and images from local WebDataset shards; the join key is each sample's ``__key__``."""

    def __init__(self, urls: str):
        self.shards = IndexedShards(urls)
        self.keys = [self.shards.key(index) for index in range(len(self.shards))]

    def read(self, index: int) -> tuple[Image.Image, str]:
        sample = decode_webdataset_sample(self.shards.members(index))
        return sample.image, sample.caption

    def caption(self, index: int) -> str:
        try:
            return webdataset_caption(self.shards.members(index, ("txt", "json")))
        except UnreadableSample:
            return ""

    def describe(self, index: int) -> str:
        return self.shards.describe(index)


def open_captions(source: str | Path, **table_options) -> CaptionTable | CaptionShards:
    """A CSV/TSV caption table, or WebDataset shards ("train-{000000..000099}.tar")."""
    text = str(source)
    if text.endswith(".tar") or "{" in text:
        return CaptionShards(text)
    return CaptionTable(Path(source), **table_options)


class VinvlDataset(SkippingDataset):
    """Captions joined by key to VinVL region features and tags; one sample per caption that has regions.

    `vinvl` is a scene_graph_benchmark predictions.tsv (or its folder), one chunk folder of Microsoft's download
    or a folder of chunk folders; `captions` a CSV/TSV with `key_column`, `image_column` and `caption_column`,
    or WebDataset shards joined by sample key. `description` says which layout was found and how the join went.
    """

    def __init__(
        self,
        vinvl: str | Path,
        captions: str | Path,
        *,
        key_column: str = "key",
        image_column: str = "filepath",
        caption_column: str = "caption",
        separator: str | None = None,
        root: str | Path | None = None,
        max_rois: int = MAX_ROIS,
        roi_dim: int = APPEARANCE_DIM + 4,
        attribute_threshold: float = ATTRIBUTE_THRESHOLD,
    ):
        if roi_dim != APPEARANCE_DIM + 4:
            raise ValueError(f"VinVL gives ROI inputs of {APPEARANCE_DIM + 4} values, not {roi_dim}")
        self.features = VinvlFeatures(vinvl, attribute_threshold)
        self.captions = open_captions(
            captions,
            key_column=key_column,
            image_column=image_column,
            caption_column=caption_column,
            separator=separator,
            root=root,
        )
        self.max_rois, self.roi_dim = max_rois, roi_dim
        self.skipped = SkipLog()
        self._join()

    def _join(self) -> None:
        located, repeats = self.features.locate()
        joined = [index for index, key in enumerate(self.captions.keys) if key in located]
        self.caption_rows = np.array(joined, dtype=np.int64)
        self.parts = np.array([located[self.captions.keys[i]][0] for i in joined], dtype=np.int32)
        self.rows = np.array([located[self.captions.keys[i]][1] for i in joined], dtype=np.int64)
        unmatched = [key for key in self.captions.keys if key not in located]
        used = {self.captions.keys[i] for i in joined}
        self.captions_without_regions, self.regions_without_captions = len(unmatched), len(located) - len(used)
        self.description = self.features.describe() + "\n" + _join_report(len(joined), unmatched, located, used)
        if repeats:
            self.description += f"\n{repeats} image ids appear in more than one VinVL part; the first one is used"
        if not joined:
            raise ValueError(f"no caption key matches a VinVL image id.\n{self.description}")

    def __len__(self) -> int:
        return len(self.caption_rows)

    def describe(self, index: int) -> str:
        return self.captions.describe(int(self.caption_rows[index]))

    def read(self, index: int) -> Sample:
        caption_row = int(self.caption_rows[index])
        key = self.captions.keys[caption_row]
        image, caption = self.captions.read(caption_row)
        part = self.features.parts[self.parts[index]]
        regions = part.regions(int(self.rows[index]), key, image.size, self.max_rois)
        rois, mask = pad_rois(regions.features, self.max_rois, self.roi_dim)
        return Sample(image, caption, rois, mask, ", ".join(regions.tags), key=key)

    def texts(self, index: int) -> list[str]:
        """Caption and tags of sample `index`, without reading the image or decoding features (tokenizer training)."""
        caption_row = int(self.caption_rows[index])
        part = self.features.parts[self.parts[index]]
        try:
            tags = part.tags(int(self.rows[index]), self.captions.keys[caption_row], self.max_rois)
        except (UnreadableSample, KeyError, TypeError, ValueError, AttributeError):
            tags = []
        return [self.captions.caption(caption_row), ", ".join(tags)]


def _join_report(joined: int, unmatched: list[str], located: dict, used: set[str]) -> str:
    example = f" (e.g. key {unmatched[0]!r})" if unmatched else ""
    spare = next((key for key in located if key not in used), None)
    spare_example = f" (e.g. id {spare!r})" if spare is not None else ""
    return (
        f"joined {joined} captions to VinVL regions; {len(unmatched)} captions without regions{example}, "
        f"{len(located) - len(used)} images with regions but no caption{spare_example}"
    )
