"""Indexing runs: bring an index folder up to date with the image files on disk.

A run compares the scanned files with the manifest. Files whose size and mtime are unchanged are left alone.
Every other file is a candidate: if its size matches an embedded file, it is hashed first, and a candidate
whose content is already embedded is not decoded again (an unchanged file that was merely touched, a renamed
or moved file, which keeps its vector id, or a copy, which gets the stored vector under a new id). Manifest
rows whose files are gone are then dropped. The remaining candidates are decoded in worker threads and
embedded in batches, each batch committed in its own transaction. At the end the FAISS file is brought up to
date (see ``softclip.index.index_folder`` for why a crash at any point is harmless).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from softclip.encoder import is_export_dir
from softclip.index import faiss_index
from softclip.index.decode import (
    DEFAULT_MAX_MEGAPIXELS,
    DecodedFile,
    batched,
    decode_files,
    default_workers,
    draft_side,
    hash_file,
    progress_bar,
)
from softclip.index.index_folder import IndexFolder
from softclip.index.manifest import FileRecord
from softclip.index.scan import ScannedFile, ScanResult, scan_folder
from softclip.index.shards import check_shard, in_shard, select_shard, shard_dir

if TYPE_CHECKING:
    import faiss

    from softclip.encoder import Encoder

DEFAULT_BATCH_SIZE = 32

# One batch out of an embedding step: each decoded file with its float32 [D] embedding, or None where it
# failed (``DecodedFile.error`` says why). Every way of embedding yields these; one commit step records them.
EmbeddedBatch = list[tuple[DecodedFile, "np.ndarray | None"]]
# An embedding step: the files to embed and the run's options in, embedded batches out (in any order).
Embedder = Callable[[list[ScannedFile], "RunOptions"], Iterator[EmbeddedBatch]]


@dataclass
class IndexReport:
    """What one indexing run did. ``errors`` holds (path, reason) for every file that could not be indexed."""

    index_dir: str
    added: int = 0  # new paths (embedded, or a copy of embedded content)
    updated: int = 0  # known paths whose content changed
    renamed: int = 0  # moved or renamed files, recognised by content hash (not re-embedded)
    removed: int = 0  # files gone from disk, dropped with their vectors
    unchanged: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    embedded: int = 0  # images that went through the encoder
    total: int = 0  # vectors in the index after the run
    seconds: float = 0.0


@dataclass
class RunOptions:
    """How a run decodes and embeds."""

    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_megapixels <= 0:
            raise ValueError(f"max_megapixels must be positive, got {self.max_megapixels}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")


def build_index(
    folder: str | os.PathLike | ScanResult,
    encoder: Encoder,
    index_dir: str | os.PathLike,
    factory: str | None = None,
    shard: tuple[int, int] | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool | None = None,
    on_disk_above: int | None = None,
    embed: Embedder | None = None,
) -> IndexReport:
    """Index every image under ``folder`` into ``index_dir``, incrementally.

    Reruns embed only new or changed files, drop deleted ones and recognise renamed ones. ``factory`` is a
    FAISS factory string (default: exact search); changing it rebuilds the FAISS file without re-embedding.
    ``shard=(i, n)`` indexes only shard ``i`` of ``n`` into ``index_dir/shard-0000i-of-0000n``
    (see ``merge_shards``). Above ``on_disk_above`` vectors the FAISS index is IVF-PQ with its lists on disk
    (``softclip.index.ondisk``). ``folder`` may also be a listing already made (``ScanResult``, e.g. of a
    remote filesystem), and ``embed`` another embedding step (``softclip.index.ray_index``).
    """
    options = RunOptions(max_megapixels, batch_size, workers, progress)
    shard = None if shard is None else check_shard(shard)
    scan = folder if isinstance(folder, ScanResult) else scan_folder(folder)
    files = scan.files if shard is None else select_shard(scan.files, shard)
    target = Path(index_dir) if shard is None else shard_dir(index_dir, shard)
    with IndexWriter.open(target, encoder, factory=factory, shard=shard, on_disk_above=on_disk_above) as writer:
        known = writer.known_under(scan.root, shard=shard, skip_dirs=scan.unreadable_dirs)
        report = writer.update(files, known, options, embed)
    report.errors[:0] = scan.errors
    return report


class IndexWriter:
    """One writing session on an index folder: manifest updates, then one FAISS update in ``finish``."""

    def __init__(self, folder: IndexFolder, encoder: Encoder | None) -> None:
        self.folder = folder
        self.encoder = encoder
        self.manifest = folder.manifest
        self._start_generation = self.manifest.generation
        self._faiss_was_current = folder.faiss_is_current()
        self._added_ids: list[int] = []
        self._removed_ids: list[int] = []

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike,
        encoder: Encoder,
        factory: str | None = None,
        shard: tuple[int, int] | None = None,
        on_disk_above: int | None = None,
    ) -> IndexWriter:
        """Lock ``index_dir`` for writing (creating it if new); refuses an encoder of another model."""
        model_id, embed_dim = encoder.model_id, int(encoder.embed_dim)
        export_dir = _export_dir_of(encoder)
        folder = IndexFolder.open_for_writing(index_dir, model_id, embed_dim, factory, export_dir, shard, on_disk_above)
        return cls(folder, encoder)

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        try:
            if exc_type is None:
                self.finish()
        finally:
            self.folder.close()

    def known_under(
        self, root: str, shard: tuple[int, int] | None = None, skip_dirs: Iterable[str] = ()
    ) -> dict[str, FileRecord]:
        """Manifest rows under ``root`` (of one shard), except under folders that could not be listed."""
        known = self.manifest.records(under=root)
        if shard is not None:
            known = {path: record for path, record in known.items() if in_shard(path, shard)}
        for folder in skip_dirs:
            prefix = folder.rstrip(os.sep) + os.sep
            known = {path: record for path, record in known.items() if not path.startswith(prefix)}
        return known

    def update(
        self,
        files: list[ScannedFile],
        known: dict[str, FileRecord],
        options: RunOptions,
        embed: Embedder | None = None,
    ) -> IndexReport:
        """Bring the rows in ``known`` in line with ``files``: rows without a file are dropped.

        ``embed`` is the embedding step (default: ``embed_locally``, in this process).
        """
        started = time.perf_counter()
        report = IndexReport(index_dir=os.fspath(self.folder.path))
        candidates: list[tuple[ScannedFile, FileRecord | None]] = []
        for file in files:
            record = known.get(file.path)
            if record is not None and record.status == "ok" and record.matches(file):
                report.unchanged += 1
            else:
                candidates.append((file, record))
        on_disk = {file.path for file in files}
        vanished = [record for path, record in known.items() if path not in on_disk]
        to_embed = self._reuse_known_content(candidates, vanished, options, report)
        self._embed(to_embed, options, report, embed)
        report.total = self.manifest.counts()["ok"]
        report.seconds = time.perf_counter() - started
        return report

    def remove(self, paths: Iterable[str]) -> int:
        """Drop files (by path) and their vectors; returns how many rows were removed."""
        wanted = list(self.manifest.records_for(os.path.abspath(path) for path in paths))
        with self.manifest.transaction():
            self._removed_ids += self.manifest.delete(wanted)
        return len(wanted)

    def finish(self) -> None:
        """Make the FAISS file hold every committed vector: patch it when it was current, else rebuild."""
        generation = self.manifest.generation
        if generation == self._start_generation and self._faiss_was_current:
            return
        index = self._patched_faiss() if self._faiss_was_current else None
        if index is None:
            index, generation = self.folder.rebuild_faiss()
        self.folder.commit_faiss(index, generation)
        self._start_generation, self._faiss_was_current = generation, True
        self._added_ids, self._removed_ids = [], []

    # ---- the two phases of a run ------------------------------------------------------------------------------

    def _reuse_known_content(
        self,
        candidates: list[tuple[ScannedFile, FileRecord | None]],
        vanished: list[FileRecord],
        options: RunOptions,
        report: IndexReport,
    ) -> list[tuple[ScannedFile, FileRecord | None]]:
        """Commit touches, renames, copies and deletions; return the candidates that need the encoder."""
        hashes = self._hash_possible_duplicates([file for file, _ in candidates], options)
        if not hashes and not vanished:
            return candidates  # nothing to reuse or drop: no transaction, the generation stays
        rename_sources = _RenameSources(vanished)
        to_embed = []
        with self.manifest.transaction():
            for file, record in candidates:
                content = hashes.get(file.path)
                if content is None or not self._reuse(file, record, content, rename_sources, report):
                    to_embed.append((file, record))
            gone = [record.path for record in vanished if record.path not in rename_sources.claimed]
            self._removed_ids += self.manifest.delete(gone)
            report.removed += len(gone)
        return to_embed

    def _reuse(
        self,
        file: ScannedFile,
        record: FileRecord | None,
        content: str,
        rename_sources: _RenameSources,
        report: IndexReport,
    ) -> bool:
        """Record ``file`` without the encoder if its content is known; False when it must be embedded."""
        if record is not None and record.status == "ok" and record.content_hash == content:
            self.manifest.touch(file)
            report.unchanged += 1
        elif (source := rename_sources.claim(content)) is not None:
            self._removed_ids += _as_list(self.manifest.move(source.path, file))
            report.renamed += 1
        elif (source := self.manifest.ok_by_hash(content)) is not None:
            self._store_vector(file, content, self.manifest.vectors([source.vector_id])[0])
            report.added += int(record is None)
            report.updated += int(record is not None)
        else:
            return False
        return True

    def _hash_possible_duplicates(self, files: list[ScannedFile], options: RunOptions) -> dict[str, str]:
        """Content hashes of the files whose size matches an embedded file (no other file can be a duplicate)."""
        sizes = self.manifest.ok_sizes()
        maybe = [file.path for file in files if file.size in sizes]
        if not maybe:
            return {}
        with ThreadPoolExecutor(options.workers or default_workers()) as pool:
            hashes = list(pool.map(_hash_or_none, maybe))
        return {path: content for path, content in zip(maybe, hashes) if content is not None}

    def _embed(
        self,
        to_embed: list[tuple[ScannedFile, FileRecord | None]],
        options: RunOptions,
        report: IndexReport,
        embed: Embedder | None,
    ) -> None:
        """Embed the files (in this process unless ``embed`` says otherwise); commit each batch as it comes."""
        if not to_embed:
            return
        was_known = {file.path: record is not None for file, record in to_embed}
        embed = embed or self.embed_locally
        with progress_bar(len(to_embed), options.progress) as bar:
            for batch in embed([file for file, _ in to_embed], options):
                self._commit_batch(batch, was_known, report)
                bar.update(len(batch))

    def embed_locally(self, files: list[ScannedFile], options: RunOptions) -> Iterator[EmbeddedBatch]:
        """Decode in worker threads while the encoder runs, ``options.batch_size`` files a batch."""
        if self.encoder is None:
            raise RuntimeError("this index writer has no encoder to embed images with")
        lookahead = max(2 * options.batch_size, 4 * (options.workers or default_workers()))
        min_side = draft_side(self.encoder)
        decoded = decode_files(
            files, self.encoder.preprocess, options.max_megapixels, options.workers, lookahead, min_side
        )
        for batch in batched(decoded, options.batch_size):
            embeddings = iter(self._encode([item.pixels for item in batch if item.pixels is not None]))
            yield [(item, next(embeddings) if item.pixels is not None else None) for item in batch]

    def _commit_batch(self, batch: EmbeddedBatch, was_known: dict[str, bool], report: IndexReport) -> None:
        """Record every file of an embedded batch in one transaction."""
        report.embedded += sum(embedding is not None for _, embedding in batch)
        with self.manifest.transaction():
            for item, embedding in batch:
                if embedding is not None and not np.isfinite(embedding).all():
                    item.error, embedding = "the encoder returned a non-finite embedding", None
                if embedding is None:
                    self._record_failure(item, was_known[item.file.path], report)
                else:
                    self._store_vector(item.file, item.content_hash, self._checked(embedding))
                    report.added += int(not was_known[item.file.path])
                    report.updated += int(was_known[item.file.path])

    def _record_failure(self, item: DecodedFile, known: bool, report: IndexReport) -> None:
        """A file that vanished leaves the manifest; any other failure is stored with its reason."""
        report.errors.append((item.file.path, item.error))
        if item.vanished:
            self._removed_ids += self.manifest.delete([item.file.path])
            report.removed += int(known)
        else:
            self._removed_ids += _as_list(self.manifest.put_error(item.file, item.content_hash, item.error))

    def _encode(self, pixels: list[np.ndarray]) -> np.ndarray:
        """float32 [B, D] embeddings of [3, H, W] pixel arrays."""
        if not pixels:
            return np.zeros((0, self.folder.info.embed_dim), dtype=np.float32)
        return np.asarray(self.encoder.encode_images(np.stack(pixels)), dtype=np.float32)

    def _checked(self, embedding: np.ndarray) -> np.ndarray:
        """An embedding of the index's dimension, or an error naming both shapes (a wrong encoder)."""
        dim = self.folder.info.embed_dim
        if embedding.shape != (dim,):
            raise RuntimeError(f"the encoder returned embeddings of shape {embedding.shape}, expected ({dim},)")
        return embedding

    def _store_vector(self, file: ScannedFile, content: str, embedding: np.ndarray) -> None:
        vector_id, replaced = self.manifest.put_vector(file, content, embedding)
        self._added_ids.append(vector_id)
        self._removed_ids += _as_list(replaced)

    def _patched_faiss(self) -> faiss.Index | None:
        """The current FAISS file with this session's changes applied, or None when it cannot be patched.

        On-disk indexes are written once and rebuilt on change (their lists file is not crash-safe to edit).
        """
        if self.folder.info.on_disk or self.folder.wants_on_disk(self.manifest.counts()["ok"]):
            return None
        index = self.folder.read_faiss_file()  # as of the start of this session
        removed = set(self._removed_ids)
        added = [vector_id for vector_id in self._added_ids if vector_id not in removed]
        if not faiss_index.remove_vectors(index, np.asarray(sorted(removed), dtype=np.int64)):
            return None
        if added and not index.is_trained:
            return None
        faiss_index.add_vectors(index, np.asarray(added, dtype=np.int64), self.manifest.vectors(added))
        return index


class _RenameSources:
    """Embedded files that are gone from disk: a new file with the same content takes one over (a rename)."""

    def __init__(self, vanished: list[FileRecord]) -> None:
        self._by_hash: dict[str, list[FileRecord]] = defaultdict(list)
        for record in vanished:
            if record.status == "ok" and record.content_hash:
                self._by_hash[record.content_hash].append(record)
        self.claimed: set[str] = set()

    def claim(self, content: str) -> FileRecord | None:
        """A vanished row with this content, now taken; None when there is none left."""
        if not self._by_hash.get(content):
            return None
        record = self._by_hash[content].pop(0)
        self.claimed.add(record.path)
        return record


def _export_dir_of(encoder: Encoder) -> str | None:
    """The ONNX export folder an encoder reads, when it is one (recorded in index.json)."""
    for name in ("export_dir", "folder"):
        path = getattr(encoder, name, None)
        if isinstance(path, (str, os.PathLike)) and is_export_dir(path):
            return os.path.abspath(path)
    return None


def _hash_or_none(path: str) -> str | None:
    try:
        return hash_file(path)
    except OSError:
        return None  # decoding will record why the file cannot be read


def _as_list(vector_id: int | None) -> list[int]:
    return [] if vector_id is None else [vector_id]
