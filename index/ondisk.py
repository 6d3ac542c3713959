"""Indexes larger than memory: IVF-PQ whose inverted lists stay on disk, re-ranked with exact vectors.

An on-disk index is one folder, ``ondisk-<token>`` inside the index folder, written once and never changed:

- ``index.faiss``: the coarse quantizer and the PQ codebooks (a few MB); its inverted lists point to
- ``lists.ivfdata``: the PQ codes and ids of every vector (FAISS's ``OnDiskInvertedLists``, memory-mapped),
- ``vectors.npy`` float32 [N, D] and ``ids.npy`` int64 [N] (ascending): the exact vectors, memory-mapped.

A search asks IVF-PQ for the best ``rerank`` candidates, reads their exact vectors and scores them again,
so the top-k is exact within the candidate list; PQ's coarse scores only choose the candidates. Resident
memory is the quantizer, the codebooks and the pages the OS keeps cached, not N x D floats.

The folder is built chunk by chunk (never all vectors in memory): each chunk of rows goes into an in-memory
copy of the trained index, which is written to a part file; the parts are then merged, memory-mapped, into
one compact ``lists.ivfdata``. ``index.json`` naming the new folder is the commit (``index_folder``), so a
crash mid-build leaves the previous index in use and a stray folder that the next writer removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from softclip.index import faiss_index

if TYPE_CHECKING:
    import faiss

PREFIX = "ondisk-"
INDEX_FILE = "index.faiss"
LISTS_FILE = "lists.ivfdata"
VECTORS_FILE = "vectors.npy"
IDS_FILE = "ids.npy"
DEFAULT_RERANK = 300  # candidates re-scored exactly: recall@10 0.985 at 1M clustered vectors (docs/results.md)
PART_ROWS = 1_000_000  # rows per in-memory part while building: 72 MB of PQ64 codes and ids
PQ_TRAIN_PER_CODE = 39  # FAISS's k-means wants 39 training points per centroid


def ondisk_factory(count: int, dim: int) -> str:
    """IVF-PQ for ``count`` vectors of ``dim``: about 4 sqrt(N) lists, 64 sub-quantizers of 8 bits at most.

    Small collections get fewer lists and codes, so that training has enough points per centroid.
    """
    nlist = 2 ** max(0, round(math.log2(4 * math.sqrt(max(count, 1)))))
    while nlist > 1 and count < PQ_TRAIN_PER_CODE * nlist:
        nlist //= 2
    subquantizers = max(m for m in range(1, min(64, dim) + 1) if dim % m == 0)
    bits = max(1, min(8, int(math.log2(max(2, count // PQ_TRAIN_PER_CODE)))))
    return f"IVF{nlist},PQ{subquantizers}x{bits}np"


def is_ivf_factory(factory: str | None) -> bool:
    """True for factory strings that build an IVF index (the only kind with on-disk inverted lists)."""
    return bool(factory) and factory.split(",")[0].startswith("IVF")


class OnDiskIndex:
    """An on-disk index folder opened for search; ``search`` has the signature of a FAISS index's."""

    def __init__(self, folder: Path, index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, rerank: int) -> None:
        self.folder = folder
        self.index = index
        self.vectors = vectors  # float32 [N, D], memory-mapped
        self.ids = ids  # int64 [N] ascending, memory-mapped
        self.rerank = rerank
        self.d = int(index.d)
        self.ntotal = int(len(ids))
        self.is_trained = True

    @classmethod
    def open(cls, folder: str | os.PathLike, rerank: int = DEFAULT_RERANK) -> OnDiskIndex:
        """Open an on-disk index folder; the lists and vectors are memory-mapped, not read."""
        import faiss

        folder = Path(folder)
        with _faiss_prints_to_stderr():
            try:
                index = faiss.read_index(os.fspath(folder / INDEX_FILE))
            except RuntimeError:
                # The lists are named by absolute path; a moved index folder finds them beside index.faiss.
                index = faiss.read_index(os.fspath(folder / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR)
        vectors = _random_access(np.load(folder / VECTORS_FILE, mmap_mode="r"))
        ids = _random_access(np.load(folder / IDS_FILE, mmap_mode="r"))
        return cls(folder, index, vectors, ids, rerank)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [Q, k], ids int64 [Q, k]), best first, exact scores of the best candidates."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, candidates = self.index.search(queries, max(k, self.rerank))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, ids) in enumerate(zip(queries, candidates)):
            scores[row], found[row] = self._rescore(query, ids[ids >= 0], k)
        return scores, found

    def _rescore(self, query: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of ``ids`` by exact inner product, padded with (-inf, -1)."""
        rows = np.searchsorted(self.ids, ids)
        order = np.argsort(rows)  # reading the memory map in file order touches each page once
        exact = self.vectors[rows[order]] @ query  # [C]
        best = np.argsort(-exact, kind="stable")[:k]
        scores = np.full(k, -np.inf, dtype=np.float32)
        found = np.full(k, -1, dtype=np.int64)
        scores[: len(best)], found[: len(best)] = exact[best], ids[order][best]
        return scores, found


def _random_access(array: np.memmap) -> np.memmap:
    """Turn off read-ahead on a memory map: re-ranking reads a few hundred scattered rows per query, and
    read-ahead would page in (and count as resident) the neighbours of each, most of the file in the end."""
    advise = getattr(array._mmap, "madvise", None)
    if advise is not None and hasattr(mmap, "MADV_RANDOM"):
        advise(mmap.MADV_RANDOM)
    return array


@contextlib.contextmanager
def _faiss_prints_to_stderr() -> Iterator[None]:
    """FAISS's C++ code prints notes ("resizing ...", IO_FLAG_ONDISK_SAME_DIR) on standard output, where they
    would corrupt a command's output (`softclip search --json`): send file descriptor 1 to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        _flush_c_stdout()  # C's buffered stdout still holds FAISS's lines: out to stderr with them
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, TypeError, AttributeError):  # no process-wide C library handle (Windows): nothing to flush
        pass


def build_ondisk(
    index_dir: str | os.PathLike,
    factory: str,
    train_vectors: np.ndarray,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    count: int,
) -> OnDiskIndex:
    """Write a new on-disk index folder inside ``index_dir`` holding ``count`` vectors.

    ``chunks`` yields (ids int64 [n], vectors float32 [n, D]) with ascending ids, ``count`` rows in all;
    ``train_vectors`` is the sample IVF-PQ is trained on.
    """
    folder = Path(index_dir) / f"{PREFIX}{secrets.token_hex(4)}"
    folder.mkdir()
    try:
        template = faiss_index.create_index(train_vectors.shape[1], factory)
        faiss_index.train_index(template, train_vectors)
        parts = _write_parts(folder, template, chunks, count)
        with _faiss_prints_to_stderr():
            _merge_parts(folder, template, parts)
        _sync_folder(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return OnDiskIndex.open(folder)


def remove_unused(index_dir: str | os.PathLike, keep: str | None) -> None:
    """Delete the on-disk index folders of ``index_dir`` other than ``keep`` (old builds, crashed builds).

    A reader that still has an old one open keeps its memory maps: the files go when it closes them.
    """
    for folder in Path(index_dir).glob(f"{PREFIX}*"):
        if folder.name != keep and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _write_parts(
    folder: Path, template: faiss.Index, chunks: Iterable[tuple[np.ndarray, np.ndarray]], count: int
) -> list[Path]:
    """Fill ``vectors.npy`` / ``ids.npy`` and write the PQ codes as part indexes of ``PART_ROWS`` rows."""
    import faiss

    vectors = np.lib.format.open_memmap(folder / VECTORS_FILE, "w+", np.float32, (count, template.d))
    ids = np.lib.format.open_memmap(folder / IDS_FILE, "w+", np.int64, (count,))
    parts: list[Path] = []
    part, written = faiss.clone_index(template), 0
    for chunk_ids, chunk in chunks:
        if written + len(chunk_ids) > count or (written and chunk_ids[0] <= ids[written - 1]):
            raise ValueError("the vectors to index changed while the on-disk index was built")
        vectors[written : written + len(chunk)], ids[written : written + len(chunk)] = chunk, chunk_ids
        faiss_index.add_vectors(part, chunk_ids, chunk)
        written += len(chunk_ids)
        if part.ntotal >= PART_ROWS:
            parts.append(_save_part(folder, part, len(parts)))
            part = faiss.clone_index(template)
    if written != count:
        raise ValueError(f"expected {count} vectors for the on-disk index, got {written}")
    parts.append(_save_part(folder, part, len(parts)))
    vectors.flush()
    ids.flush()
    return parts


def _save_part(folder: Path, part: faiss.Index, number: int) -> Path:
    import faiss

    path = folder / f"part-{number:05d}.faiss"
    faiss.write_index(part, os.fspath(path))
    return path


def _merge_parts(folder: Path, template: faiss.Index, parts: list[Path]) -> None:
    """Merge the parts' inverted lists into one ``lists.ivfdata`` and write ``index.faiss`` pointing to it."""
    import faiss

    opened = [faiss.read_index(os.fspath(path), faiss.IO_FLAG_MMAP) for path in parts]  # kept alive for SWIG
    lists = faiss.InvertedListsPtrVector()
    for part in opened:
        lists.push_back(faiss.extract_index_ivf(part).invlists)
    ivf = faiss.extract_index_ivf(template)
    on_disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, os.fspath((folder / LISTS_FILE).absolute()))
    total = on_disk.merge_from_multiple(lists.data(), lists.size(), False, False)
    ivf.replace_invlists(on_disk, True)
    on_disk.this.disown()  # the index owns the lists now
    ivf.ntotal = template.ntotal = total
    faiss.write_index(template, os.fspath(folder / INDEX_FILE))
    del opened, lists
    for path in parts:
        path.unlink()


def _sync_folder(folder: Path) -> None:
    """Make every file of a finished build durable before ``index.json`` names it."""
    for path in folder.iterdir():
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())
    if os.name == "posix":
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
