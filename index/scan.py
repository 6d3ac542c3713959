"""Find the image files under a folder.

The walk is recursive and sorted, skips hidden files and folders (names starting with a dot), follows symbolic
links to files and folders, and never enters the same real folder twice (it tracks each folder's
``(st_dev, st_ino)``), so a link pointing back up the tree cannot loop. Folders that cannot be listed and
links that point nowhere are reported, never raised.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from softclip.index.formats import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ScannedFile:
    """One image file as found on disk: absolute path (links not resolved), size in bytes, mtime in ns."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    """The image files under a root, sorted by path, and what could not be read while walking."""

    root: str
    files: list[ScannedFile] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unreadable_dirs: list[str] = field(default_factory=list)


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has one of the indexed extensions (any case) and is not hidden."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_folder(root: str | os.PathLike) -> ScanResult:
    """Walk ``root`` recursively and return every image file under it, sorted by path."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise NotADirectoryError(f"cannot index {os.fspath(root)!r}: not a folder")
    result = ScanResult(root=os.path.abspath(root_path))
    seen_dirs: set[tuple[int, int]] = set()
    pending = [result.root]
    while pending:
        folder = pending.pop()
        subfolders = _scan_one_folder(folder, seen_dirs, result)
        pending.extend(reversed(subfolders))
    result.files.sort(key=lambda f: f.path)
    return result


def scan_paths(paths: Iterable[str | os.PathLike]) -> ScanResult:
    """Stat an explicit list of image files (no walking); missing or non-image paths become errors."""
    result = ScanResult(root="")
    for path in sorted({os.path.abspath(p) for p in paths}):
        if not is_image_path(path):
            result.errors.append((path, "not an image file name (unknown extension or hidden)"))
            continue
        _add_file(path, result)
    return result


def _scan_one_folder(folder: str, seen_dirs: set[tuple[int, int]], result: ScanResult) -> list[str]:
    """Record the image files directly in ``folder``; return its not-yet-visited subfolders, sorted."""
    try:
        folder_stat = os.stat(folder)
        if (folder_stat.st_dev, folder_stat.st_ino) in seen_dirs:
            return []
        seen_dirs.add((folder_stat.st_dev, folder_stat.st_ino))
        with os.scandir(folder) as listing:
            entries = sorted((entry for entry in listing if not entry.name.startswith(".")), key=lambda e: e.name)
    except OSError as error:
        result.errors.append((folder, f"cannot list folder: {_os_reason(error)}"))
        result.unreadable_dirs.append(folder)
        return []
    subfolders = []
    for entry in entries:
        if entry.is_dir():  # follows links; the directory's d_type usually spares a stat call
            subfolders.append(entry.path)
        elif is_image_path(entry.name):
            _add_file(entry.path, result, entry)
    return subfolders


def _add_file(path: str, result: ScanResult, entry: os.DirEntry | None = None) -> None:
    try:
        file_stat = entry.stat() if entry is not None else os.stat(path)  # both follow links
    except OSError as error:
        reason = "broken symbolic link" if os.path.islink(path) else _os_reason(error)
        result.errors.append((path, reason))
        return
    if stat.S_ISREG(file_stat.st_mode):
        result.files.append(ScannedFile(path, file_stat.st_size, file_stat.st_mtime_ns))


def _os_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    return error.strerror or str(error)
