"""Vector search: exact Flat vs HNSW32 vs IVF-PQ, built and searched through ``softclip.index.faiss_index``.

The database holds N random 512-d unit vectors under ids 0..N-1. Queries are, by default, noisy copies of
database vectors (``normalize(x + noise * u)`` with ``u`` a random unit vector; noise 1.0 puts the source
vector at cosine ~0.71 from its query, far above every other vector), so each query has one planted match
as well as its exact top-k; ``--random-queries`` draws fresh random unit vectors instead. Uniform random
vectors have no cluster structure, which makes them the hardest case for approximate indexes: embeddings
of real photos usually reach a higher recall at the same settings.

All indexes are built first, then searched round-robin (query by query for latency, index by index in
each repeat for batch throughput), so the ratios between them hold on a busy machine. Recall@k is
measured against the Flat index's exact top-k; "source in top-k" is how often the planted match is found.
Search breadth is what softclip stores in each index (IVF nprobe, HNSW efSearch). The IVF-PQ list count
scales with N (about 4 sqrt(N), a power of two, at least 39 training vectors per list). Its factory string
ends in ``np`` ("no polysemous"): a plain ``PQ64`` makes FAISS also run polysemous training, minutes of
single-threaded simulated annealing on the 64 codebooks whatever N is, for a Hamming pre-filter that
softclip's search never switches on.

    python benchmarks/search.py --n 1000000 --queries 1000 --threads 4
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from softclip.index import faiss_index

DIM = 512
CHUNK = 100_000  # rows generated at a time, so N = 1M never holds a float64 copy


@dataclass
class BuiltIndex:
    """One index under test and what it cost to build."""

    factory: str
    index: faiss.Index
    train_seconds: float
    add_seconds: float
    megabytes: float
    latencies: list[float] = field(default_factory=list)  # seconds per single-query search
    batch_seconds: list[float] = field(default_factory=list)  # seconds per search of the whole query batch


def unit_vectors(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    """float32 [count, dim] rows drawn uniformly on the unit sphere."""
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, CHUNK):
        block = rng.standard_normal((min(CHUNK, count - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def noisy_copies(
    rng: np.random.Generator, database: np.ndarray, count: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """(queries [count, D], source ids [count]): unit vectors near ``count`` distinct database rows."""
    sources = rng.choice(len(database), size=count, replace=False)
    queries = database[sources] + noise * unit_vectors(rng, count, database.shape[1])
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), sources.astype(np.int64)


def ivf_pq_factory(n: int, pq_bytes: int = 64) -> str:
    """``"IVF{nlist},PQ{pq_bytes}np"``, nlist the power of two nearest 4 sqrt(n) with 39 vectors per list."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    while nlist > 1 and n < 39 * nlist:  # FAISS's k-means wants at least 39 training points per centroid
        nlist //= 2
    return f"IVF{nlist},PQ{pq_bytes}np"


def build(factory: str, vectors: np.ndarray, ids: np.ndarray, train_sample: int) -> BuiltIndex:
    """Create, train and fill one index the way softclip does, timing training and adding apart."""
    index = faiss_index.create_index(vectors.shape[1], factory)
    started = time.perf_counter()
    faiss_index.train_index(index, vectors, train_sample)
    trained = time.perf_counter()
    faiss_index.add_vectors(index, ids, vectors)
    added = time.perf_counter()
    return BuiltIndex(factory, index, trained - started, added - trained, saved_megabytes(index))


def saved_megabytes(index: faiss.Index) -> float:
    """Size of the index file that ``save_index`` writes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.faiss"
        faiss_index.save_index(index, path)
        return path.stat().st_size / 1e6


def search_params(index: faiss.Index) -> str:
    """The search breadth stored in the index: IVF nprobe or HNSW efSearch ("exact" for Flat)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return f"nprobe {ivf.nprobe} of {ivf.nlist}"
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if hasattr(inner, "hnsw"):
        return f"efSearch {inner.hnsw.efSearch}"
    return "exact"


def time_single_queries(built: list[BuiltIndex], queries: np.ndarray, k: int) -> None:
    """Search one query at a time, visiting every index for each query before the next."""
    for row in range(len(queries)):
        query = queries[row : row + 1]
        for entry in built:
            started = time.perf_counter()
            faiss_index.search(entry.index, query, k)
            entry.latencies.append(time.perf_counter() - started)


def time_batches(built: list[BuiltIndex], queries: np.ndarray, k: int, repeats: int) -> list[np.ndarray]:
    """Search the whole batch ``repeats`` times per index, round-robin; returns each index's ids [Q, k]."""
    found = [faiss_index.search(entry.index, queries, k)[1] for entry in built]  # also warms caches up
    for _ in range(repeats):
        for entry in built:
            started = time.perf_counter()
            faiss_index.search(entry.index, queries, k)
            entry.batch_seconds.append(time.perf_counter() - started)
    return found


def exact_ids(
    built: list[BuiltIndex], found: list[np.ndarray], database: np.ndarray, queries: np.ndarray, k: int
) -> np.ndarray:
    """The exact top-k ids [Q, k]: the Flat index's results when it is among those tested."""
    for entry, ids in zip(built, found):
        if entry.factory == "Flat":
            return ids
    flat = faiss_index.build_faiss_index(database, np.arange(len(database), dtype=np.int64))
    return faiss_index.search(flat, queries, k)[1]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k ids that ``found`` [Q, k] also returns."""
    hits = [len(np.intersect1d(row, truth)) for row, truth in zip(found, exact)]
    return float(np.mean(hits)) / exact.shape[1]


def source_found(found: np.ndarray, sources: np.ndarray | None) -> str:
    """How often the planted source vector is among the results ("-" for random queries)."""
    if sources is None:
        return "-"
    return f"{np.mean((found == sources[:, None]).any(axis=1)):.3f}"


def table_row(entry: BuiltIndex, found: np.ndarray, exact: np.ndarray, sources: np.ndarray | None) -> str:
    """One markdown row: build cost, size, latency percentiles, batch rate and recall of one index."""
    latencies_ms = 1000 * np.asarray(entry.latencies)
    queries_per_second = len(found) / float(np.median(entry.batch_seconds))
    return (
        f"| {entry.factory} | {search_params(entry.index)} | {entry.train_seconds:.1f} | {entry.add_seconds:.1f} | "
        f"{entry.megabytes:,.1f} | {np.percentile(latencies_ms, 50):.2f} | {np.percentile(latencies_ms, 99):.2f} | "
        f"{queries_per_second:,.0f} | {recall_at_k(found, exact):.3f} | {source_found(found, sources)} |"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--noise", type=float, default=1.0, help="query = normalize(source + noise * unit vector)")
    parser.add_argument("--random-queries", action="store_true", help="random unit queries, not noisy copies")
    parser.add_argument("--factories", nargs="+", help="FAISS factory strings (default: Flat HNSW32 IVF-PQ for N)")
    parser.add_argument("--repeats", type=int, default=3, help="timed searches of the whole batch per index")
    parser.add_argument("--train-sample", type=int, default=faiss_index.TRAIN_SAMPLE)
    parser.add_argument("--threads", type=int, default=faiss.omp_get_max_threads(), help="FAISS OpenMP threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("n", "queries", "k", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.queries > args.n:
        parser.error(f"--queries ({args.queries}) must not exceed --n ({args.n})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    database = unit_vectors(rng, args.n)
    if args.random_queries:
        queries, sources = unit_vectors(rng, args.queries), None
    else:
        queries, sources = noisy_copies(rng, database, args.queries, args.noise)
    factories = args.factories or ["Flat", "HNSW32", ivf_pq_factory(args.n)]
    ids = np.arange(args.n, dtype=np.int64)
    built = [build(factory, database, ids, args.train_sample) for factory in factories]
    time_single_queries(built, queries, args.k)
    found = time_batches(built, queries, args.k, args.repeats)
    exact = exact_ids(built, found, database, queries, args.k)
    kind = "random unit vectors" if sources is None else f"noisy copies of database vectors (noise {args.noise})"
    print(
        f"N = {args.n:,} x {DIM}-d unit vectors; {args.queries} queries: {kind}; k = {args.k}; {args.threads} threads\n"
    )
    print(
        f"| index | search | train s | add s | file MB | p50 ms (1 query) | p99 ms (1 query) | "
        f"queries/s (batch of {args.queries}) | recall@{args.k} vs exact | source in top-{args.k} |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for entry, ids_found in zip(built, found):
        print(table_row(entry, ids_found, exact, sources))


if __name__ == "__main__":
    main()
