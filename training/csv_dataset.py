"""`CsvDataset`: image-caption pairs listed in a CSV/TSV table, with optional ROI files and tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softclip.config import MAX_ROIS, ROI_DIM
from softclip.training.data import (
    SkipLog,
    SkippingDataset,
    UnreadableSample,
    checked_caption,
    load_roi_file,
    no_rois,
    optional_column,
    pad_rois,
    read_image_file,
    read_table,
)
from softclip.training.sample import Sample


class CsvDataset(SkippingDataset):
    """Image-caption pairs listed in a CSV/TSV file, as open_clip reads them, with optional detector regions.

    Paths are resolved against `root` (default: the table's folder). The separator follows the file
    extension (.tsv: tab) unless given. `roi_column` names a path to a .npy/.npz of (K, roi_dim) region
    features and `tags_column` the detector tags; by default the columns "roi_path" and "tags" are used
    when the table has them. A row with an empty ROI path has no regions.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image_column: str = "filepath",
        caption_column: str = "caption",
        separator: str | None = None,
        roi_column: str | None = None,
        tags_column: str | None = None,
        root: str | Path | None = None,
        max_rois: int = MAX_ROIS,
        roi_dim: int = ROI_DIM,
    ):
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent
        header, rows = read_table(self.path, separator, [image_column, caption_column])
        roi_column = optional_column(header, roi_column, "roi_path", self.path)
        tags_column = optional_column(header, tags_column, "tags", self.path)
        self.images = [row[image_column] or "" for row in rows]
        self.captions = [row[caption_column] or "" for row in rows]
        self.roi_paths = [row[roi_column] or "" for row in rows] if roi_column else [""] * len(rows)
        self.tags = [row[tags_column] or "" for row in rows] if tags_column else [""] * len(rows)
        self.max_rois, self.roi_dim = max_rois, roi_dim
        self.skipped = SkipLog()

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return f"{self.path.name} row {index + 1} ({self.images[index]})"

    def read(self, index: int) -> Sample:
        caption = checked_caption(self.captions[index])
        rois, mask = self._rois(index)
        if not self.images[index]:
            raise UnreadableSample("missing image", "empty path")
        image = read_image_file(self.root / self.images[index])
        return Sample(image, caption, rois, mask, self.tags[index].strip(), key=self.images[index])

    def _rois(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.roi_paths[index]:
            return no_rois(self.max_rois, self.roi_dim)
        return pad_rois(load_roi_file(self.root / self.roi_paths[index]), self.max_rois, self.roi_dim)

    def texts(self, index: int) -> list[str]:
        """Caption and tags of row `index`, without reading any file (for tokenizer training)."""
        return [self.captions[index], self.tags[index]]
