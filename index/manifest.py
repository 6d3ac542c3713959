"""The manifest: what an index folder knows about each file, and every embedding, in one SQLite database.

Tables: ``files`` (path, size, mtime_ns, content_hash, vector_id, status 'ok' or 'error', error reason),
``vectors`` (vector_id, float32 embedding bytes) and ``meta`` (key/value, among them ``generation``).

The manifest is the single source of truth of an index folder. Every change happens in one transaction that
also increments ``generation``; the FAISS file is only a cache of the committed vectors, tagged with the
generation it was built from (see ``softclip.index.index_folder``). SQLite runs in WAL mode, so readers see
the last committed state while a writer works, and a process killed at any moment leaves either the old or
the new state of each transaction, never a mix.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softclip.index.scan import ScannedFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT,
    vector_id INTEGER UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT
);
CREATE INDEX IF NOT EXISTS files_by_hash ON files (content_hash);
CREATE TABLE IF NOT EXISTS vectors (vector_id INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_FILE_COLUMNS = "path, size, mtime_ns, content_hash, vector_id, status, error"
_CHUNK = 900  # stays under SQLite's limit on query parameters


@dataclass(frozen=True)
class FileRecord:
    """One row of the ``files`` table."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    vector_id: int | None
    status: str  # 'ok' or 'error'
    error: str | None = None

    def matches(self, file: ScannedFile) -> bool:
        """Same size and mtime as a file on disk: taken as unchanged without reading it."""
        return self.size == file.size and self.mtime_ns == file.mtime_ns


class Manifest:
    """An open manifest database. Writes go through ``with manifest.transaction():`` blocks."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses no commit
        if not self._has_schema():
            self._db.executescript(_SCHEMA)
        self._in_transaction = False

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- transactions and metadata ----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together (and bump ``generation``) or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
            self._set_meta("generation", str(self.generation + 1))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one consistent committed state, even while another process commits."""
        if self._in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")  # nothing was written: this only ends the read snapshot

    @property
    def generation(self) -> int:
        """How many transactions have committed; the FAISS file records the one it was built from."""
        return int(self.get_meta("generation") or 0)

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _has_schema(self) -> bool:
        row = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        return row is not None

    # ---- reading files ----------------------------------------------------------------------------------------

    def records(self, under: str | None = None) -> dict[str, FileRecord]:
        """Every file row, or those whose path lies under the folder ``under``, by path."""
        if under is None:
            rows = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM files")
        else:
            low = under.rstrip(os.sep) + os.sep
            high = low[:-1] + chr(ord(os.sep) + 1)  # every path starting with ``low`` sorts in [low, high)
            rows = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE path >= ? AND path < ?", (low, high))
        return {row[0]: FileRecord(*row) for row in rows}

    def records_for(self, paths: Iterable[str]) -> dict[str, FileRecord]:
        """The rows of the given paths that exist, by path."""
        found = {}
        for chunk in _chunks(list(paths)):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE path IN ({marks})", chunk)
            found.update({row[0]: FileRecord(*row) for row in rows})
        return found

    def ok_by_hash(self, content_hash: str) -> FileRecord | None:
        """An embedded file with this content, if any."""
        query = f"SELECT {_FILE_COLUMNS} FROM files WHERE content_hash = ? AND status = 'ok' LIMIT 1"
        row = self._db.execute(query, (content_hash,)).fetchone()
        return FileRecord(*row) if row else None

    def ok_sizes(self) -> set[int]:
        """Sizes of all embedded files: a new file of another size cannot be a copy or a rename of one."""
        return {row[0] for row in self._db.execute("SELECT DISTINCT size FROM files WHERE status = 'ok'")}

    def paths_for(self, vector_ids: Iterable[int]) -> dict[int, str]:
        """The path of each vector id that exists."""
        found = {}
        for chunk in _chunks([int(i) for i in vector_ids]):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT vector_id, path FROM files WHERE vector_id IN ({marks})", chunk)
            found.update(dict(rows))
        return found

    def counts(self) -> dict[str, int]:
        """Number of files, of embedded files and of files that failed."""
        rows = dict(self._db.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall())
        return {"files": sum(rows.values()), "ok": rows.get("ok", 0), "errors": rows.get("error", 0)}

    def errors(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that failed, sorted by path."""
        return list(self._db.execute("SELECT path, error FROM files WHERE status = 'error' ORDER BY path"))

    # ---- reading vectors --------------------------------------------------------------------------------------

    def vector_ids(self) -> np.ndarray:
        """Every vector id, ascending, int64 [N]."""
        rows = self._db.execute("SELECT vector_id FROM vectors ORDER BY vector_id").fetchall()
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    def vectors(self, vector_ids: Iterable[int]) -> np.ndarray:
        """float32 [N, D] embeddings of the given ids, in the order given (every id must exist)."""
        wanted = [int(i) for i in vector_ids]
        by_id: dict[int, bytes] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            by_id.update(
                self._db.execute(f"SELECT vector_id, embedding FROM vectors WHERE vector_id IN ({marks})", chunk)
            )
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise KeyError(f"vector ids not in the manifest: {missing[:10]}")
        return _stack_embeddings([by_id[i] for i in wanted])

    def iter_vectors(self, chunk_size: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (ids int64 [n], embeddings float32 [n, D]) in chunks, ascending ids."""
        last = -1
        while True:
            query = "SELECT vector_id, embedding FROM vectors WHERE vector_id > ? ORDER BY vector_id LIMIT ?"
            rows = self._db.execute(query, (last, chunk_size)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield np.asarray([r[0] for r in rows], dtype=np.int64), _stack_embeddings([r[1] for r in rows])

    # ---- writing (inside ``transaction()``) -------------------------------------------------------------------

    def put_vector(self, file: ScannedFile, content_hash: str, embedding: np.ndarray) -> tuple[int, int | None]:
        """Record an embedded file under a fresh vector id; returns (new id, the id it replaced or None)."""
        self._require_transaction()
        old_id = self._drop_vector_of(file.path)
        vector_id = self._next_vector_id()
        blob = np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
        self._db.execute("INSERT INTO vectors (vector_id, embedding) VALUES (?, ?)", (vector_id, blob))
        self._upsert(file, content_hash, vector_id, "ok", None)
        return vector_id, old_id

    def put_error(self, file: ScannedFile, content_hash: str | None, reason: str) -> int | None:
        """Record a file that failed; returns the vector id it had before (now dropped) or None."""
        self._require_transaction()
        old_id = self._drop_vector_of(file.path)
        self._upsert(file, content_hash, None, "error", reason)
        return old_id

    def touch(self, file: ScannedFile) -> None:
        """New size/mtime for a file whose content did not change."""
        self._require_transaction()
        self._db.execute(
            "UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", (file.size, file.mtime_ns, file.path)
        )

    def move(self, old_path: str, file: ScannedFile) -> int | None:
        """A renamed or moved file: its row (and vector id) now belongs to ``file``; returns the id a row at
        the new path had and lost, or None."""
        self._require_transaction()
        replaced = self.delete([file.path]) if file.path != old_path else []
        self._db.execute(
            "UPDATE files SET path = ?, size = ?, mtime_ns = ? WHERE path = ?",
            (file.path, file.size, file.mtime_ns, old_path),
        )
        return replaced[0] if replaced else None

    def delete(self, paths: Iterable[str]) -> list[int]:
        """Drop files and their vectors; returns the vector ids removed."""
        self._require_transaction()
        removed = []
        for path in paths:
            old_id = self._drop_vector_of(path)
            self._db.execute("DELETE FROM files WHERE path = ?", (path,))
            removed += [] if old_id is None else [old_id]
        return removed

    def clear(self) -> None:
        """Drop every file and vector (vector ids start again at 0)."""
        self._require_transaction()
        self._db.execute("DELETE FROM files")
        self._db.execute("DELETE FROM vectors")
        self._db.execute("DELETE FROM meta WHERE key = 'next_vector_id'")

    def _upsert(
        self, file: ScannedFile, content_hash: str | None, vector_id: int | None, status: str, error: str | None
    ) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (file.path, file.size, file.mtime_ns, content_hash, vector_id, status, error),
        )

    def _drop_vector_of(self, path: str) -> int | None:
        row = self._db.execute("SELECT vector_id FROM files WHERE path = ?", (path,)).fetchone()
        if row is None or row[0] is None:
            return None
        self._db.execute("DELETE FROM vectors WHERE vector_id = ?", (row[0],))
        self._db.execute("UPDATE files SET vector_id = NULL WHERE path = ?", (path,))
        return row[0]

    def _next_vector_id(self) -> int:
        """Ids only grow (until ``clear``): an id removed from FAISS is never handed to another file."""
        vector_id = int(self.get_meta("next_vector_id") or 0)
        self._set_meta("next_vector_id", str(vector_id + 1))
        return vector_id

    def _require_transaction(self) -> None:
        if not self._in_transaction:
            raise RuntimeError("manifest writes must happen inside `with manifest.transaction():`")


def _chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _stack_embeddings(blobs: list[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.frombuffer(blob, dtype=np.float32) for blob in blobs])
