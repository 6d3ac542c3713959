"""Scale-out: embed shards of a folder in separate processes or machines, then merge them into one index.

A file belongs to shard ``i`` of ``n`` when a hash of its path is ``i`` modulo ``n``: the shards split the
sorted file list evenly, and a file stays in its shard when others are added, so rerunning a shard stays
incremental. Every process must see the folder under the same path. Each shard is a complete index folder
(``index_dir/shard-0000i-of-0000n``); ``merge_shards`` joins them, numbering vectors by path exactly as a
single run over the whole folder does, so a sharded embed plus a merge equals a single run.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from softclip.index.index_folder import MANIFEST_FILE, IndexFolder, IndexInfo, check_model, read_info
from softclip.index.manifest import FileRecord, Manifest
from softclip.index.scan import ScannedFile

_COPY_CHUNK = 4096


@dataclass
class MergeReport:
    """What ``merge_shards`` wrote: file counts and the (path, reason) of every file that failed."""

    index_dir: str
    shards: int
    files: int
    vectors: int
    errors: list[tuple[str, str]]
    seconds: float


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(i, n)`` as ints, or a ValueError naming what is wrong."""
    try:
        i, n = (int(value) for value in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (i, n), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got ({i}, {n})")
    return i, n


def shard_of(path: str, count: int) -> int:
    """The shard (of ``count``) that a file path belongs to; stable across runs and machines."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def in_shard(path: str, shard: tuple[int, int]) -> bool:
    """True when ``path`` belongs to ``shard=(i, n)``."""
    i, n = check_shard(shard)
    return shard_of(path, n) == i


def select_shard(files: list[ScannedFile], shard: tuple[int, int]) -> list[ScannedFile]:
    """The files of one shard, in their original (sorted) order."""
    i, n = check_shard(shard)
    return [file for file in files if shard_of(file.path, n) == i]


def shard_dir(index_dir: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """The folder that shard ``(i, n)`` of ``index_dir`` is written to."""
    i, n = check_shard(shard)
    return Path(index_dir) / f"shard-{i:05d}-of-{n:05d}"


def find_shard_dirs(index_dir: str | os.PathLike) -> list[Path]:
    """The shard folders inside ``index_dir``, sorted."""
    return sorted(path for path in Path(index_dir).glob("shard-*-of-*") if path.is_dir())


def merge_shards(
    shard_dirs: list[str | os.PathLike], out: str | os.PathLike, factory: str | None = None
) -> MergeReport:
    """Join finished shard folders into the index folder ``out``, replacing what ``out`` held.

    All shards of one ``n`` must be given, built with one model, and each must have finished its run.
    """
    started = time.perf_counter()
    dirs = [Path(path) for path in shard_dirs]
    infos = _check_shards(dirs)
    manifests = [Manifest(path / MANIFEST_FILE) for path in dirs]
    try:
        rows = _rows_by_path(manifests, dirs)
        first = infos[0]
        with IndexFolder.open_for_writing(
            out, first.model_id, first.embed_dim, factory or first.factory, first.export_dir
        ) as folder:
            with folder.manifest.transaction():
                folder.manifest.clear()
                for start in range(0, len(rows), _COPY_CHUNK):
                    _copy_rows(rows[start : start + _COPY_CHUNK], manifests, folder.manifest)
            index, generation = folder.rebuild_faiss()
            folder.commit_faiss(index, generation)
            counts, errors = folder.manifest.counts(), folder.manifest.errors()
    finally:
        for manifest in manifests:
            manifest.close()
    seconds = time.perf_counter() - started
    return MergeReport(os.fspath(out), len(dirs), counts["files"], counts["ok"], errors, seconds)


def _check_shards(dirs: list[Path]) -> list[IndexInfo]:
    """Every shard of one split, one model, each finished; else a ValueError saying which is not."""
    if not dirs:
        raise ValueError("merge_shards needs at least one shard folder")
    infos = [read_info(path) for path in dirs]
    for path, info in zip(dirs, infos):
        if info.shard is None:
            raise ValueError(f"{os.fspath(path)!r} is not a shard folder (its index.json names no shard)")
        check_model(info, infos[0].model_id, infos[0].embed_dim, path)
        _check_finished(path, info)
    counts = {info.shard[1] for info in infos}
    if len(counts) != 1:
        raise ValueError(f"the shard folders come from different splits: n = {sorted(counts)}")
    count = counts.pop()
    present = [info.shard[0] for info in infos]
    missing = sorted(set(range(count)) - set(present))
    if missing or len(present) != count:
        raise ValueError(f"a merge needs each of the {count} shards once; missing {missing}, given {sorted(present)}")
    return infos


def _check_finished(path: Path, info: IndexInfo) -> None:
    with Manifest(path / MANIFEST_FILE) as manifest:
        if manifest.generation != info.generation:
            raise ValueError(f"shard {os.fspath(path)!r} did not finish its run: run its indexing command again")


def _rows_by_path(manifests: list[Manifest], dirs: list[Path]) -> list[tuple[FileRecord, int]]:
    """(row, index of its shard) for every file of every shard, sorted by path."""
    rows = [(record, position) for position, manifest in enumerate(manifests) for record in manifest.records().values()]
    rows.sort(key=lambda row: row[0].path)
    for (a, i), (b, j) in zip(rows, rows[1:]):
        if a.path == b.path:
            raise ValueError(f"{a.path!r} is in two shards: {os.fspath(dirs[i])!r} and {os.fspath(dirs[j])!r}")
    return rows


def _copy_rows(rows: list[tuple[FileRecord, int]], sources: list[Manifest], target: Manifest) -> None:
    """Copy rows (sorted by path) into ``target``, which numbers the vectors in that order."""
    vectors = {}
    for position, source in enumerate(sources):
        ids = [record.vector_id for record, where in rows if where == position and record.status == "ok"]
        vectors.update({(position, vector_id): row for vector_id, row in zip(ids, source.vectors(ids))})
    for record, position in rows:
        file = ScannedFile(record.path, record.size, record.mtime_ns)
        if record.status == "ok":
            target.put_vector(file, record.content_hash, vectors[(position, record.vector_id)])
        else:
            target.put_error(file, record.content_hash, record.error or "unknown error")
