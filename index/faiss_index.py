"""FAISS as plain functions over numpy arrays; the factory string is the only index configuration.

The default (``factory=None`` or ``"Flat"``) is exact inner-product search, ``IndexIDMap2(IndexFlatIP)``:
on L2-normalised vectors that is cosine similarity. Any FAISS factory string works for large collections
(``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF256,PQ32"``, ...); indexes that need training are trained on a
random sample. Ids are the manifest's vector ids. GPU FAISS is used only to train IVF coarse quantizers,
and only when ``faiss.get_num_gpus() > 0``; the index itself always stays on the CPU so it can be saved.
faiss is imported inside each function, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from softclip.atomic import write_atomically

if TYPE_CHECKING:
    import faiss

DEFAULT_FACTORY = "Flat"
TRAIN_SAMPLE = 100_000  # vectors used to train IVF / PQ indexes
HNSW_EF_SEARCH = 128  # FAISS's default (16) loses recall at k beyond a few
IVF_MIN_PROBES = 8


def create_index(dim: int, factory: str | None = None) -> faiss.Index:
    """An empty inner-product index of ``dim`` that accepts ``add_with_ids``."""
    import faiss

    factory = factory or DEFAULT_FACTORY
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {_first_line(error)}") from error
    if faiss.try_extract_index_ivf(index) is None and not factory.startswith("IDMap"):
        index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)  # IVF keeps its own ids
    _skip_polysemous_training(index)
    _set_search_defaults(index)
    return index


def _skip_polysemous_training(index: faiss.Index) -> None:
    """PQ indexes train polysemous codes by default (minutes for PQ64) for a Hamming filter softclip never uses."""
    import faiss

    for part in (faiss.try_extract_index_ivf(index), getattr(index, "index", None)):
        if part is not None:
            part = faiss.downcast_index(part)
            if hasattr(part, "do_polysemous_training"):
                part.do_polysemous_training = False


def build_faiss_index(
    vectors: np.ndarray, ids: np.ndarray, factory: str | None = None, train_sample: int = TRAIN_SAMPLE, seed: int = 0
) -> faiss.Index:
    """An index holding ``vectors`` [N, D] under ``ids`` [N], trained first when the factory needs it."""
    vectors = _as_matrix(vectors)
    index = create_index(vectors.shape[1], factory)
    train_index(index, vectors, train_sample, seed)
    add_vectors(index, ids, vectors)
    return index


def train_index(index: faiss.Index, vectors: np.ndarray, train_sample: int = TRAIN_SAMPLE, seed: int = 0) -> None:
    """Train ``index`` on at most ``train_sample`` rows of ``vectors`` chosen at random (no-op if trained)."""
    if index.is_trained:
        return
    vectors = _as_matrix(vectors)
    if len(vectors) > train_sample:
        rows = np.random.default_rng(seed).choice(len(vectors), train_sample, replace=False)
        vectors = vectors[np.sort(rows)]
    try:
        _train_on_best_device(index, vectors)
    except RuntimeError as error:
        raise ValueError(f"cannot train this FAISS index on {len(vectors)} vectors: {_first_line(error)}") from error
    _set_search_defaults(index)


def add_vectors(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Add ``vectors`` [N, D] under int64 ``ids`` [N]."""
    vectors = _as_matrix(vectors)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    if len(ids) == 0:
        return
    if vectors.shape[1] != index.d:
        raise ValueError(f"vectors have dimension {vectors.shape[1]}, the index {index.d}")
    index.add_with_ids(vectors, ids)


def remove_vectors(index: faiss.Index, ids: np.ndarray) -> bool:
    """Remove ``ids``; False when this kind of index cannot remove (HNSW): rebuild it instead."""
    import faiss

    if len(ids) == 0:
        return True
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
    except RuntimeError:
        return False
    return True


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [Q, k], ids int64 [Q, k]) best first; missing results have id -1."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    queries = _as_matrix(queries)
    if queries.shape[1] != index.d:
        raise ValueError(f"query dimension {queries.shape[1]} does not match the index dimension {index.d}")
    if index.ntotal == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    scores, ids = index.search(queries, min(k, index.ntotal))
    return scores, ids


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id an ``IndexIDMap2`` or IVF index holds (int64, unsorted)."""
    import faiss

    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    invlists = faiss.extract_index_ivf(index).invlists
    lists = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)) for i in range(invlists.nlist)]
    return np.concatenate([np.asarray(ids, dtype=np.int64) for ids in lists]) if lists else np.zeros(0, np.int64)


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write the index atomically (temporary file in the same folder, fsync, rename)."""
    import faiss

    write_atomically(path, lambda tmp: faiss.write_index(index, tmp))


def load_index(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by ``save_index``."""
    import faiss

    return faiss.read_index(os.fspath(path))


def _set_search_defaults(index: faiss.Index) -> None:
    """Search breadth that FAISS stores inside the index file: nprobe for IVF, efSearch for HNSW."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, max(IVF_MIN_PROBES, ivf.nlist // 16))
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = HNSW_EF_SEARCH


def _train_on_best_device(index: faiss.Index, vectors: np.ndarray) -> None:
    """Train on the CPU, except the k-means of an IVF quantizer, which runs on the GPUs when there are any."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or faiss.get_num_gpus() == 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        index.train(vectors)
        return
    gpu_assigner = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    ivf.clustering_index = gpu_assigner  # SWIG holds no reference: ``gpu_assigner`` must outlive ``train``
    try:
        index.train(vectors)
    finally:
        ivf.clustering_index = None


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a [N, D] matrix of vectors, got shape {vectors.shape}")
    return vectors


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
