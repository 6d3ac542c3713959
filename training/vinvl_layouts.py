"""The two on-disk layouts of VinVL region features and tags, read row by row into `Regions`.

See `vinvl.py` for the layouts; `VinvlFeatures` finds which one a path holds."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softclip.training.data import (
    UnreadableSample,
)
from softclip.training.tsv_rows import (
    TsvRows,
)

APPEARANCE_DIM = 2048  # VinVL's ResNeXt-152 C4 region feature
DOWNLOAD_ROW_DIM = APPEARANCE_DIM + 6  # the download appends x1, y1, x2, y2, w, h (fractions of the image)
ATTRIBUTE_THRESHOLD = 0.1  # as scene_graph_benchmark's demo, which hides common attributes scoring below 0.1

LAYOUTS_EXPECTED = (
    'predictions.tsv extracted with scene_graph_benchmark (key<TAB>{"objects": [{"rect", "class", "conf", '
    '"feature"}]}), or a folder of Microsoft\'s pre-extracted features (features.tsv + predictions.tsv + '
    "imageid2idx.json), or a folder of such chunk folders"
)


class NotVinvl(ValueError):
    """A path that holds neither VinVL layout."""


class BadFeatures(ValueError):
    """Feature values that cannot be decoded; `reason` is what the skip is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Regions:
    """What one image contributes: ROI inputs (most confident first) and one tag per region."""

    features: np.ndarray  # float32 [K, 2052]: appearance (2048) + box x1, y1, x2, y2 in [0, 1]
    tags: list[str]


def bad_row(reason: str, key: str, where: str, detail: str) -> UnreadableSample:
    return UnreadableSample(reason, f"key {key!r} ({where}): {detail}")


def ranked(objects: list, max_rois: int) -> list[int]:
    """Indices of the `max_rois` most confident objects, ties in file order."""
    confidences = [float(detection["conf"]) for detection in objects]
    if not all(math.isfinite(c) for c in confidences):
        raise ValueError("non-finite conf")
    return sorted(range(len(objects)), key=lambda i: -confidences[i])[:max_rois]


def region_tag(detection: dict, threshold: float = ATTRIBUTE_THRESHOLD) -> str:
    """ "attribute class" with the best attribute scoring `threshold` or more, else "class".

    Attributes without `attr_scores` are ignored: real ones cannot be told from the padding slots.
    """
    names, scores = detection.get("attributes") or [], detection.get("attr_scores") or []
    scored = [(float(score), str(name)) for name, score in zip(names, scores) if float(score) >= threshold]
    best = max(scored, key=lambda pair: pair[0], default=None)  # the first of equal scores
    return f"{best[1]} {detection['class']}" if best else str(detection["class"])


def decode_features(text: bytes | str, rows: int, dim: int) -> np.ndarray:
    """float32 [rows, dim] from base64, or BadFeatures ("bad base64", "wrong feature length")."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadFeatures("bad base64", str(error)) from error
    if len(raw) != rows * dim * 4:
        raise BadFeatures("wrong feature length", f"{len(raw) / 4:g} floats, expected {rows} x {dim}")
    return np.frombuffer(raw, dtype=np.float32).reshape(rows, dim)


def parse_json_row(columns: list[bytes], key: str, where: str) -> dict:
    """The JSON object in the second column of a ``key<TAB>json`` row whose key must be `key`."""
    if len(columns) < 2 or columns[0].decode("utf-8", "replace").strip() != key:
        found = columns[0][:60].decode("utf-8", "replace") if columns else ""
        raise bad_row("vinvl key mismatch", key, where, f"the row holds key {found!r}")
    try:
        value = json.loads(columns[1])
    except (ValueError, UnicodeDecodeError) as error:
        raise bad_row("bad vinvl row", key, where, f"not JSON: {error}") from error
    if not isinstance(value, dict) or not isinstance(value.get("objects"), list):
        raise bad_row("bad vinvl row", key, where, 'no "objects" list')
    return value


def checked_regions(features: list[np.ndarray] | np.ndarray, tags: list[str], key: str, where: str) -> Regions:
    stacked = np.asarray(features, np.float32).reshape(-1, APPEARANCE_DIM + 4)
    if not np.isfinite(stacked).all():
        raise bad_row("non-finite features", key, where, "NaN or infinity in a region")
    return Regions(stacked, tags)


def _detail(error: Exception) -> str:
    return str(error) if isinstance(error, BadFeatures) else f"{type(error).__name__}: {error}"


def _reason(error: Exception) -> str:
    return getattr(error, "reason", "bad vinvl row")


def read_image_sizes(hw_tsv: Path | None, keys: list[str]) -> np.ndarray:
    """int64 [len(keys), 2] (width, height) from `hw.tsv`: 0 where it has no row, -1 where its row is bad."""
    sizes = np.zeros((len(keys), 2), np.int64)
    if hw_tsv is None:
        return sizes
    rows = {key: number for number, key in enumerate(keys)}
    with open(hw_tsv, "rb") as handle:
        for line in handle:
            key, _, value = line.decode("utf-8", "replace").partition("\t")
            if key.strip() in rows:
                sizes[rows[key.strip()]] = _hw_size(value)
    return sizes


def _hw_size(value: str) -> tuple[int, int]:
    try:
        entry = json.loads(value)
        entry = entry[0] if isinstance(entry, list) else entry
        width, height = int(entry["width"]), int(entry["height"])
    except (ValueError, KeyError, TypeError, IndexError):
        return -1, -1
    return (width, height) if width > 0 and height > 0 else (-1, -1)


def find_hw_tsv(folder: Path) -> Path | None:
    """`hw.tsv` in `folder`, else its only `*.hw.tsv` (as scene_graph_benchmark names them: `train.hw.tsv`)."""
    if (folder / "hw.tsv").is_file():
        return folder / "hw.tsv"
    candidates = sorted(folder.glob("*.hw.tsv"))
    return candidates[0] if len(candidates) == 1 else None


class ExtractedPredictions:
    """Layout 1: one `predictions.tsv` written by scene_graph_benchmark, features inside each object."""

    def __init__(self, tsv: Path, attribute_threshold: float = ATTRIBUTE_THRESHOLD):
        self.rows, self.attribute_threshold = TsvRows(tsv), attribute_threshold
        _check_extracted(self.rows)
        self.keys = self.rows.keys()
        self.hw_tsv = find_hw_tsv(tsv.parent)
        self.sizes = read_image_sizes(self.hw_tsv, self.keys)

    @property
    def built_index(self) -> bool:
        return self.rows.built_index

    def describe(self) -> str:
        sizes = f"image sizes from {self.hw_tsv.name}, else the image" if self.hw_tsv else "image sizes from the images"
        return f"{self.rows.path.parent.name}/{self.rows.path.name}: {len(self.keys)} images; {sizes}"

    def regions(self, row: int, key: str, image_size: tuple[int, int], max_rois: int) -> Regions:
        where = f"{self.rows.path.name} row {row + 1}"
        objects = parse_json_row(self.rows.row(row), key, where)["objects"]
        width, height = self._size(row, key, where, image_size)
        try:
            top = [objects[i] for i in ranked(objects, max_rois)]
            scale = np.array([width, height, width, height], np.float64)
            features = [_extracted_region(detection, scale) for detection in top]
            tags = [region_tag(detection, self.attribute_threshold) for detection in top]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise bad_row(_reason(error), key, where, _detail(error)) from error
        return checked_regions(features, tags, key, where)

    def tags(self, row: int, key: str, max_rois: int) -> list[str]:
        objects = parse_json_row(self.rows.row(row), key, f"{self.rows.path.name} row {row + 1}")["objects"]
        return [region_tag(objects[i], self.attribute_threshold) for i in ranked(objects, max_rois)]

    def _size(self, row: int, key: str, where: str, image_size: tuple[int, int]) -> tuple[int, int]:
        width, height = (int(v) for v in self.sizes[row])
        if width < 0:
            raise bad_row("missing size", key, where, f"its {self.hw_tsv.name} row has no positive height and width")
        return (width, height) if width else image_size


def _extracted_region(detection: dict, scale: np.ndarray) -> np.ndarray:
    appearance = decode_features(detection["feature"], 1, APPEARANCE_DIM)[0]
    rect = np.asarray(detection["rect"], np.float64)
    if rect.shape != (4,):
        raise ValueError(f"rect {detection['rect']!r} is not x1, y1, x2, y2")
    return np.concatenate([appearance, np.clip(rect / scale, 0.0, 1.0)])


def _check_extracted(rows: TsvRows) -> None:
    """The first rows must be ``key<TAB>{"objects": [...]}`` with features inside the objects."""
    for number in range(min(len(rows), 100)):
        columns = rows.row(number)
        try:
            objects = json.loads(columns[1])["objects"] if len(columns) == 2 else None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            objects = None
        if not isinstance(objects, list):
            raise NotVinvl(
                f'{rows.path}: row {number + 1} is not key<TAB>{{"objects": [...]}}; expected {LAYOUTS_EXPECTED}'
            )
        if objects and isinstance(objects[0], dict):
            if "feature" in objects[0]:
                return
            raise NotVinvl(
                f'{rows.path}: its objects have no "feature" (Microsoft\'s download keeps them in features.tsv '
                f"beside predictions.tsv, which is not there); expected {LAYOUTS_EXPECTED}"
            )
    if len(rows) == 0:
        raise NotVinvl(f"{rows.path} is empty; expected {LAYOUTS_EXPECTED}")


class DownloadedChunk:
    """Layout 2: one chunk folder of Microsoft's pre-extracted features."""

    def __init__(self, folder: Path, attribute_threshold: float = ATTRIBUTE_THRESHOLD):
        self.folder, self.attribute_threshold = folder, attribute_threshold
        for name in ("features.tsv", "predictions.tsv"):
            if not (folder / name).is_file():
                raise NotVinvl(f"{folder} has no {name}; expected {LAYOUTS_EXPECTED}")
        self.features, self.predictions = TsvRows(folder / "features.tsv"), TsvRows(folder / "predictions.tsv")
        if len(self.features) != len(self.predictions):
            raise NotVinvl(
                f"{folder}: features.tsv has {len(self.features)} rows, predictions.tsv {len(self.predictions)}; "
                "they must hold the same images in the same order"
            )
        _check_download(self.features)
        self.keys = self._keys()

    @property
    def built_index(self) -> bool:
        return self.features.built_index or self.predictions.built_index

    def describe(self) -> str:
        return f"{self.folder.name}: {len(self.keys)} images"

    def _keys(self) -> list[str]:
        """Row -> image id, from imageid2idx.json when there is one (no TSV read), else from predictions.tsv."""
        index = self.folder / "imageid2idx.json"
        if not index.is_file():
            return self.predictions.keys()
        try:
            rows = {str(key): int(row) for key, row in json.loads(index.read_text()).items()}
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is not a JSON object of image id -> row number ({error})") from error
        keys = [""] * len(self.predictions)
        for key, row in rows.items():
            if not 0 <= row < len(keys):
                raise ValueError(f"{index}: row {row} of {key!r} is outside the {len(keys)} rows of features.tsv")
            keys[row] = key
        return keys

    def regions(self, row: int, key: str, image_size: tuple[int, int], max_rois: int) -> Regions:
        """The regions of image `key` at `row`; `image_size` is unused: the download's boxes are normalised."""
        where = f"{self.folder.name}/features.tsv row {row + 1}"
        objects = parse_json_row(self.predictions.row(row), key, f"{self.folder.name}/predictions.tsv row {row + 1}")
        objects = objects["objects"]
        columns = self.features.row(row)
        if columns[0].decode("utf-8", "replace").strip() != key or len(columns) != 3:
            raise bad_row("vinvl key mismatch", key, where, "not the same image as predictions.tsv, or not 3 columns")
        try:
            boxes = int(columns[1])
            if boxes != len(objects):
                raise ValueError(f"{boxes} boxes in features.tsv, {len(objects)} objects in predictions.tsv")
            values = decode_features(columns[2], boxes, DOWNLOAD_ROW_DIM)
            top = ranked(objects, max_rois)
            tags = [region_tag(objects[i], self.attribute_threshold) for i in top]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise bad_row(_reason(error), key, where, _detail(error)) from error
        boxes_01 = np.clip(values[top, APPEARANCE_DIM : APPEARANCE_DIM + 4], 0.0, 1.0)
        return checked_regions(np.concatenate([values[top, :APPEARANCE_DIM], boxes_01], axis=1), tags, key, where)

    def tags(self, row: int, key: str, max_rois: int) -> list[str]:
        where = f"{self.folder.name}/predictions.tsv row {row + 1}"
        objects = parse_json_row(self.predictions.row(row), key, where)["objects"]
        return [region_tag(objects[i], self.attribute_threshold) for i in ranked(objects, max_rois)]


def _check_download(features: TsvRows) -> None:
    """The first row of features.tsv must be ``id<TAB>num_boxes<TAB>base64 float32 [num_boxes, 2054]``."""
    if not len(features):
        return
    columns = features.row(0)
    try:
        decode_features(columns[2], int(columns[1]), DOWNLOAD_ROW_DIM)
    except (ValueError, IndexError) as error:
        raise NotVinvl(
            f"{features.path}: row 1 is not id<TAB>num_boxes<TAB>base64 float32 [num_boxes, {DOWNLOAD_ROW_DIM}] "
            f"({error}); expected {LAYOUTS_EXPECTED}"
        ) from error


class VinvlFeatures:
    """Every VinVL part under one path (predictions.tsv files, or download chunks), with one key index."""

    def __init__(self, path: str | Path, attribute_threshold: float = ATTRIBUTE_THRESHOLD):
        self.path = Path(path)
        self.parts: list[ExtractedPredictions | DownloadedChunk] = open_parts(self.path, attribute_threshold)
        self.layout = "extracted" if isinstance(self.parts[0], ExtractedPredictions) else "download"

    def locate(self) -> tuple[dict[str, tuple[int, int]], int]:
        """(key -> (part, row), how many keys repeat: the first part and row holding a key wins)."""
        located: dict[str, tuple[int, int]] = {}
        repeats = 0
        for part_number, part in enumerate(self.parts):
            for row, key in enumerate(part.keys):
                if not key:
                    continue
                if key in located:
                    repeats += 1
                    continue
                located[key] = (part_number, row)
        return located, repeats

    def describe(self) -> str:
        """Which layout was found, e.g. "Microsoft's pre-extracted download, 3 chunk folder(s) (0: 10 images, ...)"."""
        built = [p for p in self.parts if p.built_index]
        note = f"; built a missing .lineidx in {len(built)} place(s)" if built else ""
        parts = ", ".join(part.describe() for part in self.parts)
        if self.layout == "extracted":
            return f"VinVL features: predictions.tsv extracted with scene_graph_benchmark ({parts}){note}"
        return f"VinVL features: Microsoft's pre-extracted download, {len(self.parts)} chunk folder(s) ({parts}){note}"


def open_parts(path: Path, attribute_threshold: float) -> list:
    """The layout under `path`: a predictions.tsv or a chunk folder, or a folder of either."""
    if not path.exists():
        raise FileNotFoundError(f"VinVL features not found: {path}")
    folder = path if path.is_dir() else path.parent
    if (folder / "features.tsv").is_file() and (path.is_dir() or path.name in ("features.tsv", "predictions.tsv")):
        return [DownloadedChunk(folder, attribute_threshold)]
    if path.is_file():
        return [ExtractedPredictions(path, attribute_threshold)]
    if (path / "predictions.tsv").is_file():
        return [ExtractedPredictions(path / "predictions.tsv", attribute_threshold)]
    chunks = sorted((p for p in path.iterdir() if (p / "features.tsv").is_file()), key=_natural)
    if chunks:
        return [DownloadedChunk(chunk, attribute_threshold) for chunk in chunks]
    extracted = sorted((p for p in path.iterdir() if (p / "predictions.tsv").is_file()), key=_natural)
    if extracted:  # scene_graph_benchmark run on several parts of a data set
        return [ExtractedPredictions(part / "predictions.tsv", attribute_threshold) for part in extracted]
    raise NotVinvl(f"{path} holds no predictions.tsv, features.tsv or chunk folders; expected {LAYOUTS_EXPECTED}")


def _natural(path: Path) -> tuple:
    """Chunk folders in number order: 2 before 10."""
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)
