"""Indexed TSV files as VinVL writes them: rows found by byte offset (`.lineidx`), and writing such files."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from softclip.atomic import write_text_atomically

_KEY_READ = 256  # bytes read at a row's start to find its key


def encode_floats(values: np.ndarray) -> str:
    """Base64 of float32 values, as VinVL writes features."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.float32).tobytes()).decode("ascii")


def write_tsv(path: str | Path, rows: Iterable[Sequence[object]]) -> Path:
    """Tab-separated `rows` and their `.lineidx` (the byte offset of each row), as scene_graph_benchmark writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets, position = [], 0
    with open(path, "wb") as handle:
        for row in rows:
            line = ("\t".join(map(str, row)) + "\n").encode("utf-8")
            offsets.append(position)
            handle.write(line)
            position += len(line)
    lineidx_path(path).write_text("".join(f"{offset}\n" for offset in offsets))
    return path


def write_imageid2idx(folder: str | Path, keys: Sequence[str]) -> Path:
    """`imageid2idx.json` of a download chunk: each image id -> its row."""
    path = Path(folder) / "imageid2idx.json"
    path.write_text(json.dumps({key: row for row, key in enumerate(keys)}))
    return path


# ----------------------------------------------------------------------------------------- indexed TSV rows


def lineidx_path(tsv: Path) -> Path:
    return tsv.with_suffix(".lineidx")


def scan_offsets(tsv: Path) -> np.ndarray:
    """The byte offset of every row of `tsv`, read through once."""
    offsets, position = [], 0
    with open(tsv, "rb") as handle:
        for line in handle:
            offsets.append(position)
            position += len(line)
    return np.array(offsets, dtype=np.int64)


def load_offsets(tsv: Path) -> tuple[np.ndarray, bool]:
    """(row offsets of `tsv`, whether its .lineidx had to be built). A built index is saved when the folder allows."""
    index = lineidx_path(tsv)
    if not index.is_file():
        offsets = scan_offsets(tsv)
        _save_offsets(index, offsets)
        return offsets, True
    try:
        offsets = np.array(index.read_text().split(), dtype=np.int64)
    except ValueError as error:
        raise ValueError(f"{index} is not a list of byte offsets ({error}); delete it to rebuild it") from error
    size = tsv.stat().st_size
    if size and (not len(offsets) or offsets[0] != 0 or offsets[-1] >= size or np.any(np.diff(offsets) <= 0)):
        raise ValueError(f"{index} does not match {tsv.name} ({size} bytes); delete it to rebuild it")
    return offsets, False


def _save_offsets(index: Path, offsets: np.ndarray) -> None:
    try:  # each rank building it at once writes its own temporary file
        write_text_atomically(index, "".join(f"{offset}\n" for offset in offsets.tolist()))
    except OSError:
        pass  # a read-only folder: the index lives in memory only


class TsvRows:
    """Random access to the rows of a TSV file through its `.lineidx`."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        self.offsets, self.built_index = load_offsets(path)

    def __len__(self) -> int:
        return len(self.offsets)

    def row(self, number: int) -> list[bytes]:
        """The columns of row `number`."""
        start = int(self.offsets[number])
        end = int(self.offsets[number + 1]) if number + 1 < len(self.offsets) else self.size
        with open(self.path, "rb") as handle:  # one open per read: safe in forked DataLoader workers
            handle.seek(start)
            return handle.read(end - start).rstrip(b"\r\n").split(b"\t")

    def keys(self) -> list[str]:
        """The first column of every row, read at each row's start (the file is not read through)."""
        keys = []
        with open(self.path, "rb", buffering=0) as handle:  # unbuffered: a few bytes per row, not 8 KiB
            for offset in self.offsets.tolist():
                keys.append(self._key_at(handle, offset))
        return keys

    def _key_at(self, handle, offset: int) -> str:
        handle.seek(max(offset - 1, 0))
        head = handle.read(_KEY_READ + 1)
        if offset and head[:1] != b"\n":
            raise ValueError(f"{lineidx_path(self.path)} does not match {self.path.name}; delete it to rebuild it")
        head = head[1:] if offset else head
        while b"\t" not in head and b"\n" not in head and (more := handle.read(_KEY_READ)):
            head += more  # a key longer than one read
        return head.split(b"\t", 1)[0].split(b"\n", 1)[0].strip().decode("utf-8", "replace")
