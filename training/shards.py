"""WebDataset tar shards: `WebDatasetShards` streams them, `IndexedShards` reads them with random access."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from torch.utils.data import IterableDataset

from softclip.config import MAX_ROIS, ROI_DIM
from softclip.training.data import (
    SkipLog,
    SkippingDataset,
    UnreadableSample,
    checked_caption,
    image_from_bytes,
    load_roi_file,
    no_rois,
    pad_rois,
)
from softclip.training.sample import Sample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # WebDataset image members, in order of preference


def expand_shards(urls: str | Iterable[str]) -> list[str]:
    """Shard paths from a brace pattern ("shard-{000000..000009}.tar"), several joined by "::", or a list."""
    from webdataset.shardlists import expand_urls

    shards = expand_urls(urls) if isinstance(urls, str) else [str(u) for u in urls]
    if not shards:
        raise ValueError(f"no shards in {urls!r}")
    return shards


def decode_webdataset_sample(raw: dict, max_rois: int = MAX_ROIS, roi_dim: int = ROI_DIM) -> Sample:
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
        rois, mask = no_rois(max_rois, roi_dim)
    tags = raw["tags.txt"].decode("utf-8", "replace") if "tags.txt" in raw else str(metadata.get("tags", ""))
    image = image_from_bytes(raw[extension], f"{key}.{extension}")
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
        max_rois: int = MAX_ROIS,
        roi_dim: int = ROI_DIM,
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

    def __init__(self, urls: str | Iterable[str], *, max_rois: int = MAX_ROIS, roi_dim: int = ROI_DIM):
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
