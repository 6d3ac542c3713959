"""Result thumbnails: made once per version of an image file, kept beside the index, served from Gradio's folder.

A result is never sent as the image file itself: a 12-megapixel photo is megabytes, and a browser cannot draw
HEIC, camera RAW or most TIFFs. Each indexed image gets a small WebP instead, decoded the way the indexer
decodes (by content, upright by its EXIF orientation, risky formats in a bounded child process). It is kept in
the index folder's ``thumbnails/``, named by the image's path, size and mtime, so it is made once and a restarted
app shows it at once. Gradio serves only its own folder, so each thumbnail shown is copied there under the hash
of its content. Every file is written under a temporary name and renamed into place: a file of that name is
always complete and never changes (a truncated response under load is impossible).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from softclip.atomic import write_atomically
from softclip.index.decode import decode_bytes, read_file

THUMBNAIL_FORMAT = "webp"
THUMBNAIL_QUALITY = 85
THUMBNAILS_FOLDER = "thumbnails"  # inside the index folder


def render_thumbnail(path: str, side: int, max_megapixels: float) -> Image.Image:
    """An upright RGB copy of an image file, at most ``side`` pixels wide and high (decoded at a reduced scale)."""
    data, _ = read_file(path)
    picture = decode_bytes(data, path, max_megapixels, min_side=side)
    picture.thumbnail((side, side))
    return picture


def thumbnail_bytes(path: str, side: int, max_megapixels: float) -> bytes:
    """The encoded thumbnail of an image file."""
    buffer = io.BytesIO()
    render_thumbnail(path, side, max_megapixels).save(buffer, format=THUMBNAIL_FORMAT, quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


def write_once(target: Path, data: bytes) -> None:
    """Write ``target`` atomically: readers see the whole file or none."""
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, lambda tmp: Path(tmp).write_bytes(data), durable=False)


class ThumbnailFiles:
    """Thumbnails of indexed images, kept in ``store`` and served from ``folder`` (Gradio's)."""

    def __init__(self, store: str | os.PathLike, folder: str | os.PathLike, side: int, max_megapixels: float) -> None:
        self.store = Path(store)
        self.folder = Path(folder)
        self.side = side
        self.max_megapixels = max_megapixels

    def stored_path(self, image_path: str) -> Path:
        """Where the thumbnail of the current version of ``image_path`` is kept (raises ``OSError`` if it is gone)."""
        status = os.stat(image_path)
        version = f"{image_path}\0{status.st_size}\0{status.st_mtime_ns}\0{self.side}"
        return self.store / f"{hashlib.sha256(version.encode()).hexdigest()[:40]}.{THUMBNAIL_FORMAT}"

    def make(self, image_path: str) -> Path:
        """The kept thumbnail of ``image_path``, made now if it is missing (``OSError``/``ImageDecodeError``)."""
        stored = self.stored_path(image_path)
        if not stored.exists():
            write_once(stored, thumbnail_bytes(image_path, self.side, self.max_megapixels))
        return stored

    def path_for(self, image_path: str) -> str:
        """The served thumbnail file of ``image_path``, named by its content's hash."""
        data = self.make(image_path).read_bytes()
        served = self.folder / f"{hashlib.sha256(data).hexdigest()}.{THUMBNAIL_FORMAT}"
        if not served.exists():  # Gradio may have cleared its folder since
            write_once(served, data)
        return str(served)


def thumbnail_store(index_dir: str | os.PathLike, fallback: str | os.PathLike) -> Path:
    """``thumbnails/`` in the index folder, or ``fallback`` when the index folder cannot be written."""
    store = Path(index_dir) / THUMBNAILS_FOLDER
    try:
        store.mkdir(exist_ok=True)
    except OSError:
        return Path(fallback)
    return store if os.access(store, os.W_OK) else Path(fallback)
