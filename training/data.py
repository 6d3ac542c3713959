"""Real data readers: CSV/TSV tables and WebDataset shards (VinVL detector output: `vinvl.py`).

Every reader yields `Sample`s, the type SynthScenes yields: an RGB image, a caption, `max_rois` ROI
features (rows of 2048 appearance + 4 box coordinates in [0, 1], zero rows for padding), their mask and
the detector tags joined by ", ". So one collate function serves every source.

A corrupt or unreadable sample never stops training. It is counted by reason in the reader's `skipped`
log (`SkipLog.report()` at epoch end), and its reason also travels on the next sample's `skipped` field,
because a DataLoader worker's log never reaches the main process: there, `SkipLog.add_sample` counts them.
Map-style readers (`CsvDataset`, `IndexedShards`, `VinvlDataset`) return the next readable sample in place
of an unreadable one; the streaming `WebDatasetShards` drops it.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import zip_longest
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from softclip.training.sample import Sample
from softclip.transform import load_image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # WebDataset image members, in order of preference
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


# ------------------------------------------------------------------------------------------ sample parts


def pad_rois(features: np.ndarray, max_rois: int = 10, roi_dim: int = 2052) -> tuple[np.ndarray, np.ndarray]:
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


def _image_bytes(data: bytes, name: str) -> Image.Image:
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


def _no_rois(max_rois: int, roi_dim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((max_rois, roi_dim), np.float32), np.zeros(max_rois, bool)


# ---------------------------------------------------------------------------------------------- tables


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


def _optional_column(header: list[str], column: str | None, default: str, path: Path) -> str | None:
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
        max_rois: int = 10,
        roi_dim: int = 2052,
    ):
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent
        header, rows = read_table(self.path, separator, [image_column, caption_column])
        roi_column = _optional_column(header, roi_column, "roi_path", self.path)
        tags_column = _optional_column(header, tags_column, "tags", self.path)
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
            return _no_rois(self.max_rois, self.roi_dim)
        return pad_rois(load_roi_file(self.root / self.roi_paths[index]), self.max_rois, self.roi_dim)

    def texts(self, index: int) -> list[str]:
        """Caption and tags of row `index`, without reading any file (for tokenizer training)."""
        return [self.captions[index], self.tags[index]]


# ---------------------------------------------------------------------------------------------- WebDataset


def expand_shards(urls: str | Iterable[str]) -> list[str]:
    """Shard paths from a brace pattern ("shard-{000000..000009}.tar"), several joined by "::", or a list."""
    from webdataset.shardlists import expand_urls

    shards = expand_urls(urls) if isinstance(urls, str) else [str(u) for u in urls]
    if not shards:
        raise ValueError(f"no shards in {urls!r}")
    return shards


def decode_webdataset_sample(raw: dict, max_rois: int = 10, roi_dim: int = 2052) -> Sample:
    """A Sample from the members of one WebDataset sample (``{"__key__": ..., "jpg": bytes, "txt": ...}``).

    The image is the first of IMAGE_EXTENSIONS present; the caption is ``txt``, else ``json["caption"]``;
    regions come from ``roi.npy`` and tags from ``tags.txt`` (else ``json["tags"]``), both optional.
    """
    key = str(raw.get("__key__", ""))
    metadata = _json_member(raw, key)
    caption = webdataset_caption(raw, metadata)
    extension = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if extension is None:
        raise UnreadableSample("missing image", f"{key} has only {sorted(k for k in raw if not k.startswith('__'))}")
    if "roi.npy" in raw:
        rois, mask = pad_rois(load_roi_file(io.BytesIO(raw["roi.npy"])), max_rois, roi_dim)
    else:
        rois, mask = _no_rois(max_rois, roi_dim)
    tags = raw["tags.txt"].decode("utf-8", "replace") if "tags.txt" in raw else str(metadata.get("tags", ""))
    image = _image_bytes(raw[extension], f"{key}.{extension}")
    return Sample(image, caption, rois, mask, tags.strip(), key=key)


def webdataset_caption(raw: dict, metadata: dict | None = None) -> str:
    """The caption of one WebDataset sample: its ``txt`` member, else ``json["caption"]``."""
    if metadata is None:
        metadata = _json_member(raw, str(raw.get("__key__", "")))
    text = raw["txt"].decode("utf-8", "replace") if "txt" in raw else metadata.get("caption")
    return checked_caption(text if isinstance(text, str) else None)


def _json_member(raw: dict, key: str) -> dict:
    if "json" not in raw:
        return {}
    try:
        metadata = json.loads(raw["json"])
    except (ValueError, UnicodeDecodeError) as error:
        raise UnreadableSample("bad json", f"{key}: {error}") from error
    if not isinstance(metadata, dict):
        raise UnreadableSample("bad json", f"{key}: not an object")
    return metadata


class WebDatasetShards(IterableDataset):
    """Streams samples from WebDataset tar shards as img2dataset writes them (+ ``roi.npy``, ``tags.txt``).

    Each epoch (`set_epoch`) the shard list is shuffled by (seed, epoch) when `shuffle_shards`, then split
    by rank and by DataLoader worker, ``shards[rank::world][worker::workers]``; rank and world default to
    torch.distributed's. Samples are shuffled in a buffer of `shuffle` samples (0: shard order).
    """

    def __init__(
        self,
        urls: str | Iterable[str],
        *,
        shuffle: int = 0,
        shuffle_shards: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world: int | None = None,
        max_rois: int = 10,
        roi_dim: int = 2052,
    ):
        self.shards = expand_shards(urls)
        self.shuffle, self.shuffle_shards, self.seed, self.epoch = shuffle, shuffle_shards, seed, 0
        self.rank, self.world = rank, world
        self.max_rois, self.roi_dim = max_rois, roi_dim
        self.skipped = SkipLog()
        self._pending: list[str] = []  # reasons not yet attached to a sample

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def position(self) -> tuple[int, int, int, int]:
        """(rank, world, worker, workers) of the process iterating."""
        from webdataset.utils import pytorch_worker_info

        rank, world, worker, workers = pytorch_worker_info()
        return (
            (rank if self.rank is None else self.rank),
            (world if self.world is None else self.world),
            worker,
            workers,
        )

    def shards_for(self, rank: int, world: int, worker: int = 0, workers: int = 1) -> list[str]:
        """The shards one worker of one rank reads this epoch."""
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(order)  # same order on every rank
        mine = order[rank::world]
        if not mine:
            raise ValueError(f"{len(self.shards)} shards cannot feed {world} ranks: rank {rank} gets none")
        return mine[worker::workers]

    def __iter__(self) -> Iterator[Sample]:
        from webdataset import shuffle as shuffle_stage
        from webdataset.tariterators import tarfile_samples

        rank, world, worker, workers = self.position()
        sources = ({"url": url} for url in self.shards_for(rank, world, worker, workers))
        samples = self._decoded(tarfile_samples(sources, handler=self._tar_error))
        if self.shuffle > 1:
            rng = random.Random(f"{self.seed}/{self.epoch}/{rank}/{worker}")
            samples = shuffle_stage(self.shuffle, min(self.shuffle, 100), rng=rng)(samples)
        yield from samples

    def _decoded(self, raw_samples: Iterable[dict]) -> Iterator[Sample]:
        for raw in raw_samples:
            try:
                sample = decode_webdataset_sample(raw, self.max_rois, self.roi_dim)
            except UnreadableSample as error:
                self._skip(error.reason, f"{raw.get('__url__', '')}:{raw.get('__key__', '')}: {error.detail}")
                continue
            sample.skipped, self._pending = tuple(self._pending), []
            yield sample

    def _tar_error(self, error: Exception) -> bool:
        """webdataset's handler: count a broken shard or member and go on."""
        detail = " ".join(str(a) for a in error.args if isinstance(a, str))
        self._skip("unreadable shard data", f"{type(error).__name__}: {detail}"[:300])
        return True

    def _skip(self, reason: str, example: str) -> None:
        self.skipped.add(reason, example)
        self._pending.append(reason)


class IndexedShards(SkippingDataset):
    """Random access to the samples of local WebDataset shards, for samplers that choose indices.

    The shards' tar headers are read once; a sample is then read by seeking to its members. The
    members of a broken shard that were indexed before the break stay readable.
    """

    def __init__(self, urls: str | Iterable[str], *, max_rois: int = 10, roi_dim: int = 2052):
        self.shards = expand_shards(urls)
        self.max_rois, self.roi_dim = max_rois, roi_dim
        self.skipped = SkipLog()
        self.entries: list[tuple[int, str, dict[str, tuple[int, int]]]] = []  # shard, key, ext -> (offset, size)
        for number, shard in enumerate(self.shards):
            self.entries.extend((number, key, members) for key, members in self._index(shard).items())
        if not self.entries:
            raise ValueError(f"no readable samples in {len(self.shards)} shards: {self.skipped.report()}")

    def _index(self, shard: str) -> dict[str, dict[str, tuple[int, int]]]:
        samples: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            size = Path(shard).stat().st_size
            with tarfile.open(shard, "r:") as tar:
                for info in tar:
                    if info.isreg() and "." in Path(info.name).name and info.offset_data + info.size <= size:
                        key, extension = _split_member(info.name)
                        samples.setdefault(key, {})[extension] = (info.offset_data, info.size)
        except (OSError, tarfile.TarError, EOFError) as error:
            self.skipped.add("unreadable shard data", f"{shard}: {error}")
        return samples

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self, index: int) -> str:
        number, key, _ = self.entries[index]
        return f"{self.shards[number]}:{key}"

    def read(self, index: int) -> Sample:
        return decode_webdataset_sample(self.members(index), self.max_rois, self.roi_dim)

    def key(self, index: int) -> str:
        """The WebDataset key of sample `index` (its members' shared name, without folders)."""
        return Path(self.entries[index][1]).name

    def members(self, index: int, extensions: Iterable[str] | None = None) -> dict:
        """The raw members of sample `index` (``{"__key__": ..., "jpg": bytes, ...}``), or only `extensions`."""
        number, _, members = self.entries[index]
        wanted = members if extensions is None else {e: members[e] for e in extensions if e in members}
        raw: dict = {"__key__": self.key(index)}
        with open(self.shards[number], "rb") as handle:
            for extension, (offset, size) in wanted.items():
                handle.seek(offset)
                raw[extension] = handle.read(size)
        return raw


def _split_member(name: str) -> tuple[str, str]:
    """ "dir/000001.roi.npy" -> ("dir/000001", "roi.npy"), as webdataset groups members."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()
