"""What every real-data reader shares: padded ROI features, checked captions, tables, skipping bad samples.

Every reader (`csv_dataset.py`, `shards.py`, `vinvl.py`) yields `Sample`s, the type SynthScenes yields:
an RGB image, a caption, `max_rois` ROI features (rows of 2048 appearance + 4 box coordinates in [0, 1],
zero rows for padding), their mask and the detector tags joined by ", ". So one collate function serves
every source.

A corrupt or unreadable sample never stops training. It is counted by reason in the reader's `skipped`
log (`SkipLog.report()` at epoch end), and its reason also travels on the next sample's `skipped` field,
because a DataLoader worker's log never reaches the main process: there, `SkipLog.add_sample` counts them.
Map-style readers (`CsvDataset`, `IndexedShards`, `VinvlDataset`) return the next readable sample in place
of an unreadable one; the streaming `WebDatasetShards` drops it.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from itertools import zip_longest
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from softclip.config import MAX_ROIS, ROI_DIM
from softclip.training.sample import Sample
from softclip.transform import load_image

_MAX_TRIES = 64  # consecutive unreadable samples before a map-style reader gives up


class UnreadableSample(ValueError):
    """A sample that cannot be read; `reason` is the short category it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class SkipLog:
    """How many samples were skipped, by reason, with the first example of each reason."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, reason: str, example: str = "") -> None:
        self.counts[reason] += 1
        if example:
            self.examples.setdefault(reason, example)

    def add_sample(self, sample: Sample) -> None:
        """Counts the skips a sample carries (how a DataLoader worker's skips reach the main process)."""
        for reason, example in zip_longest(sample.skipped, sample.skip_examples, fillvalue=""):
            self.add(reason, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        """One line for the epoch-end log, e.g. "skipped 3 samples: 2 unreadable image (e.g. ...), 1 ..."."""
        if not self.counts:
            return "skipped no samples"
        parts = [
            f"{count} {reason}" + (f" (e.g. {self.examples[reason]})" if reason in self.examples else "")
            for reason, count in self.counts.most_common()
        ]
        return f"skipped {self.total} samples: " + ", ".join(parts)

    def reset(self) -> None:
        self.counts.clear()
        self.examples.clear()


def pad_rois(features: np.ndarray, max_rois: int = MAX_ROIS, roi_dim: int = ROI_DIM) -> tuple[np.ndarray, np.ndarray]:
    """(K, roi_dim) regions -> (rois float32 [max_rois, roi_dim], mask bool [max_rois]).

    Regions past `max_rois` are dropped: readers list them in order of detector confidence.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != roi_dim:
        raise UnreadableSample("bad roi features", f"shape {features.shape}, expected (K, {roi_dim})")
    if not np.isfinite(features).all():
        raise UnreadableSample("bad roi features", "non-finite values")
    kept = features[:max_rois]
    rois = np.zeros((max_rois, roi_dim), np.float32)
    rois[: len(kept)] = kept
    return rois, np.arange(max_rois) < len(kept)


def load_roi_file(source: str | Path | io.BytesIO) -> np.ndarray:
    """(K, D) ROI features from a .npy file, or an .npz file (its "rois" array, else its first one)."""
    try:
        loaded = np.load(source, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = loaded.files
                if not names:
                    raise ValueError("empty .npz file")
                return loaded["rois" if "rois" in names else names[0]]
        return loaded
    except FileNotFoundError as error:
        raise UnreadableSample("missing roi file", str(source)) from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UnreadableSample("unreadable roi file", f"{source}: {error}") from error


def read_image_file(path: Path) -> Image.Image:
    """The upright RGB image at `path`, or UnreadableSample ("missing image", "unreadable image")."""
    try:
        return load_image(path)
    except FileNotFoundError as error:
        raise UnreadableSample("missing image", str(path)) from error
    except (ValueError, OSError) as error:
        raise UnreadableSample("unreadable image", str(error)) from error


def image_from_bytes(data: bytes, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return load_image(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableSample("unreadable image", f"{name}: {error}") from error


def checked_caption(text: str | None) -> str:
    """`text` stripped, or UnreadableSample("empty caption")."""
    caption = (text or "").strip()
    if not caption:
        raise UnreadableSample("empty caption")
    return caption


def no_rois(max_rois: int, roi_dim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((max_rois, roi_dim), np.float32), np.zeros(max_rois, bool)


def _separator(path: Path, separator: str | None) -> str:
    if separator is not None:
        return separator
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def read_table(path: Path, separator: str | None, required: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV/TSV file; every column in `required` must be present, and one row at least."""
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=_separator(path, separator))
        header = list(reader.fieldnames or [])
        missing = [column for column in required if column not in header]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(map(repr, missing))}; its columns are {header}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: the table has no rows")
    return header, rows


def optional_column(header: list[str], column: str | None, default: str, path: Path) -> str | None:
    """`column` when given (it must exist), else `default` when the table has it, else None."""
    if column is not None and column not in header:
        raise ValueError(f"{path}: no column {column!r}; its columns are {header}")
    if column is None and default in header:
        return default
    return column


class SkippingDataset(Dataset):
    """Map-style reader: an unreadable sample is counted and replaced by the next readable one."""

    skipped: SkipLog

    def read(self, index: int) -> Sample:
        """Sample `index`, or UnreadableSample."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where sample `index` comes from, for the skip log."""
        return str(index)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        reasons: list[str] = []
        examples: list[str] = []
        for offset in range(min(_MAX_TRIES, len(self))):
            position = (index + offset) % len(self)
            try:
                sample = self.read(position)
            except UnreadableSample as error:
                examples.append(f"{self.describe(position)}: {error.detail}".rstrip(": "))
                self.skipped.add(error.reason, examples[-1])
                reasons.append(error.reason)
                continue
            sample.skipped, sample.skip_examples = tuple(reasons), tuple(examples)
            return sample
        raise RuntimeError(f"{len(reasons)} unreadable samples in a row from index {index}; {self.skipped.report()}")
