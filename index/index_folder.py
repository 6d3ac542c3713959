"""An index folder: ``manifest.sqlite`` (the truth), ``vectors.faiss`` (a cache of it) and ``index.json``.

Crash safety comes from one rule: the FAISS file is derived from the manifest and never the other way round.
The manifest commits in transactions that each bump its ``generation``. After a run, the FAISS file is written
atomically (temporary file, fsync, rename) and only then ``index.json`` records the generation it holds.
Whoever opens the folder compares the two: equal means the FAISS file is current; anything else (a run killed
before it wrote the FAISS file, or between the two writes) means the FAISS file is rebuilt from the committed
vectors. So a ``kill -9`` at any moment leaves a usable index, and the next run completes it.

One writer at a time holds an exclusive lock on ``.lock`` (released by the OS if the writer dies).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from softclip.atomic import write_json_atomically
from softclip.index import faiss_index, ondisk
from softclip.index.manifest import Manifest

if TYPE_CHECKING:
    import faiss

    from softclip.encoder import Encoder

INDEX_JSON = "index.json"
MANIFEST_FILE = "manifest.sqlite"
FAISS_FILE = "vectors.faiss"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1


class IndexMismatchError(ValueError):
    """The model at hand is not the one the index was built with."""


class IndexBusyError(BlockingIOError):
    """Another process is writing to the index folder."""


@dataclass
class IndexInfo:
    """The contents of ``index.json``."""

    model_id: str
    embed_dim: int
    factory: str = faiss_index.DEFAULT_FACTORY
    export_dir: str | None = None  # the ONNX export folder the index was built with, when known
    generation: int = -1  # the manifest generation ``vectors.faiss`` holds; -1: none written yet
    counts: dict[str, int] = field(default_factory=dict)
    shard: list[int] | None = None  # [i, n] for a shard folder
    on_disk_above: int | None = None  # above this many vectors the FAISS index lives on disk (None: never)
    on_disk: str | None = None  # the on-disk index folder holding ``generation``, when there is one
    format: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexInfo:
        """Parse ``index.json``; unknown keys are ignored so newer folders stay readable."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def read_info(index_dir: str | os.PathLike) -> IndexInfo:
    """The ``index.json`` of an index folder."""
    path = Path(index_dir) / INDEX_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{os.fspath(index_dir)!r} is not an index folder: it has no {INDEX_JSON}")
    try:
        return IndexInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a valid index description: {error}") from error


def check_model(info: IndexInfo, model_id: str, embed_dim: int, index_dir: str | os.PathLike) -> None:
    """Refuse a model whose id or embedding size differs from the index's, naming both."""
    if info.model_id == model_id and info.embed_dim == embed_dim:
        return
    raise IndexMismatchError(
        f"the index in {os.fspath(index_dir)!r} was built with model {info.model_id!r} (dimension "
        f"{info.embed_dim}), but the encoder given is {model_id!r} (dimension {embed_dim}); "
        "use the same model, or index into a new folder"
    )


class IndexFolder:
    """An open index folder: its description, its manifest and (on demand) its FAISS index."""

    def __init__(self, path: Path, info: IndexInfo, manifest: Manifest, lock: _FolderLock | None) -> None:
        self.path = path
        self.info = info
        self.manifest = manifest
        self._lock = lock

    @classmethod
    def open_for_reading(cls, index_dir: str | os.PathLike) -> IndexFolder:
        """Open an existing index folder to search it."""
        path = Path(index_dir)
        info = read_info(path)
        return cls(path, info, Manifest(path / MANIFEST_FILE), None)

    @classmethod
    def open_for_writing(
        cls,
        index_dir: str | os.PathLike,
        model_id: str,
        embed_dim: int,
        factory: str | None = None,
        export_dir: str | None = None,
        shard: tuple[int, int] | None = None,
        on_disk_above: int | None = None,
    ) -> IndexFolder:
        """Open (creating it if new) an index folder for one writer; refuses a different model.

        ``on_disk_above``: above this many vectors, keep the FAISS index on disk (remembered in index.json).
        """
        path = Path(index_dir)
        path.mkdir(parents=True, exist_ok=True)
        lock = _FolderLock.acquire(path)
        try:
            info = _writer_info(path, model_id, embed_dim, factory, export_dir, shard)
            _set_on_disk_above(info, on_disk_above)
            _remove_stale_temporaries(path, info)
            write_json_atomically(path / INDEX_JSON, asdict(info))
            return cls(path, info, Manifest(path / MANIFEST_FILE), lock)
        except BaseException:
            lock.release()
            raise

    @property
    def writable(self) -> bool:
        """True when this process holds the folder's writer lock."""
        return self._lock is not None

    def close(self) -> None:
        """Close the manifest and release the writer lock."""
        self.manifest.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> IndexFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the FAISS cache --------------------------------------------------------------------------------------

    def faiss_is_current(self) -> bool:
        """The FAISS file holds exactly the committed vectors."""
        current = self.info.generation == self.manifest.generation
        return current and self._faiss_path().exists()

    def wants_on_disk(self, count: int) -> bool:
        """A FAISS index of ``count`` vectors belongs on disk in this folder."""
        return self.info.on_disk_above is not None and count > self.info.on_disk_above

    def load_faiss(self) -> faiss.Index | ondisk.OnDiskIndex:
        """The FAISS index of the committed vectors: the file when current, else rebuilt (and saved if we can).

        A reader takes an on-disk index even when a writer has committed since it was built: rebuilding one
        costs minutes, and hits whose files are gone are dropped by the manifest lookup.
        """
        if not self.writable:
            self.info = read_info(self.path)  # a writer may have moved on since we opened
        if self.faiss_is_current() or (self.info.on_disk and not self.writable and self._faiss_path().exists()):
            return self.read_faiss_file()
        index, generation = self.rebuild_faiss()
        self._save_if_possible(index, generation)
        return index

    def read_faiss_file(self) -> faiss.Index | ondisk.OnDiskIndex:
        """The FAISS file (or on-disk index) as it is on disk, current or not."""
        if self.info.on_disk:
            return ondisk.OnDiskIndex.open(self._faiss_path())
        return faiss_index.load_index(self._faiss_path())

    def rebuild_faiss(self) -> tuple[faiss.Index | ondisk.OnDiskIndex, int]:
        """(index of every committed vector with the folder's factory, the manifest generation it holds).

        Above ``on_disk_above`` vectors, a writer builds a new on-disk index folder; a reader rebuilds in memory.
        """
        with self.manifest.snapshot():
            generation = self.manifest.generation
            ids = self.manifest.vector_ids()
            if self.writable and self.wants_on_disk(len(ids)):
                return self._build_on_disk(ids), generation
            index = faiss_index.create_index(self.info.embed_dim, self.info.factory)
            if len(ids) and not index.is_trained:
                sample = np.random.default_rng(0).permutation(ids)[: faiss_index.TRAIN_SAMPLE]
                faiss_index.train_index(index, self.manifest.vectors(np.sort(sample)))
            for chunk_ids, chunk in self.manifest.iter_vectors():
                faiss_index.add_vectors(index, chunk_ids, chunk)
        return index, generation

    def commit_faiss(self, index: faiss.Index | ondisk.OnDiskIndex, generation: int) -> None:
        """Save ``index`` as the FAISS file holding manifest ``generation`` (writer only).

        An on-disk index is already written; naming its folder in ``index.json`` makes it the current one.
        """
        if not self.writable:
            raise RuntimeError("only the writer of an index folder may save its FAISS file")
        if isinstance(index, ondisk.OnDiskIndex):
            self.info.on_disk = index.folder.name
        else:
            faiss_index.save_index(index, self.path / FAISS_FILE)
            self.info.on_disk = None
        self.info.generation = generation
        self.info.counts = self.manifest.counts()
        write_json_atomically(self.path / INDEX_JSON, asdict(self.info))
        ondisk.remove_unused(self.path, keep=self.info.on_disk)
        if self.info.on_disk:
            (self.path / FAISS_FILE).unlink(missing_ok=True)

    def _faiss_path(self) -> Path:
        return self.path / (self.info.on_disk or FAISS_FILE)

    def _build_on_disk(self, ids: np.ndarray) -> ondisk.OnDiskIndex:
        """A new on-disk index folder of the committed vectors ``ids`` (inside a manifest snapshot)."""
        factory = self.info.factory
        if not ondisk.is_ivf_factory(factory):
            factory = ondisk.ondisk_factory(len(ids), self.info.embed_dim)
        sample = np.random.default_rng(0).permutation(ids)[: faiss_index.TRAIN_SAMPLE]
        train = self.manifest.vectors(np.sort(sample))
        return ondisk.build_ondisk(self.path, factory, train, self.manifest.iter_vectors(), len(ids))

    def _save_if_possible(self, index: faiss.Index, generation: int) -> None:
        """Save a rebuilt index, unless a writer is at work or has committed since the rebuild."""
        if self.writable:
            self.commit_faiss(index, generation)
            return
        try:
            lock = _FolderLock.acquire(self.path)
        except (IndexBusyError, OSError):  # busy, or a read-only folder
            return
        try:
            if self.manifest.generation == generation and read_info(self.path) == self.info:  # nobody moved on
                self._lock = lock
                self.commit_faiss(index, generation)
        except OSError:
            pass  # a folder we may read but not write: the rebuilt index still serves this process
        finally:
            self._lock = None
            lock.release()


def _writer_info(
    path: Path, model_id: str, embed_dim: int, factory: str | None, export_dir: str | None, shard: tuple | None
) -> IndexInfo:
    """The folder's description, new or existing, updated with what this writer brings."""
    if factory:
        faiss_index.create_index(embed_dim, factory)  # a bad factory string fails before any work is done
    if not (path / INDEX_JSON).is_file():
        return IndexInfo(model_id, embed_dim, factory or faiss_index.DEFAULT_FACTORY, export_dir, shard=_list(shard))
    info = read_info(path)
    check_model(info, model_id, embed_dim, path)
    if factory and factory != info.factory:
        info.factory, info.generation = factory, -1  # the FAISS file is rebuilt with the new factory
    info.export_dir = export_dir or info.export_dir
    return info


def _list(shard: tuple[int, int] | None) -> list[int] | None:
    return None if shard is None else [int(shard[0]), int(shard[1])]


def _set_on_disk_above(info: IndexInfo, on_disk_above: int | None) -> None:
    """Record a new on-disk threshold; the FAISS index is rebuilt when it changes which kind it should be."""
    if on_disk_above is None or on_disk_above == info.on_disk_above:
        return
    if on_disk_above < 0:
        raise ValueError(f"on_disk_above must be 0 or more, got {on_disk_above}")
    info.on_disk_above, info.generation = int(on_disk_above), -1


def _remove_stale_temporaries(path: Path, info: IndexInfo) -> None:
    """Temporary files and on-disk index folders left by a writer that was killed mid-write."""
    for stale in path.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    ondisk.remove_unused(path, keep=info.on_disk)


class _FolderLock:
    """An exclusive, non-blocking ``flock`` on the folder's ``.lock`` file (a no-op where flock is missing)."""

    def __init__(self, descriptor: int | None) -> None:
        self._descriptor = descriptor

    @classmethod
    def acquire(cls, folder: Path) -> _FolderLock:
        try:
            import fcntl
        except ImportError:
            return cls(None)
        descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise IndexBusyError(f"another process is updating the index in {os.fspath(folder)!r}") from None
        return cls(descriptor)

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor drops the flock
            self._descriptor = None


def open_export_encoder(info: IndexInfo, index_dir: str | os.PathLike) -> Encoder:
    """The ONNX encoder of the export folder that ``index.json`` names, checked against the index."""
    if not info.export_dir:
        raise ValueError(f"the index in {os.fspath(index_dir)!r} names no export folder: pass an encoder")
    if not Path(info.export_dir).is_dir():
        raise FileNotFoundError(f"the export folder {info.export_dir!r} named by the index no longer exists")
    from softclip.export import OnnxEncoder  # onnxruntime loads only when an index actually needs it

    encoder = OnnxEncoder(info.export_dir)
    check_model(info, encoder.model_id, int(encoder.embed_dim), index_dir)
    return encoder
