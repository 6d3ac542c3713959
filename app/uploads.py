"""What the app accepts as an uploaded image: a regular file that Gradio itself placed in its upload folder.

The image events run with ``preprocess=False`` (the app decodes uploads itself, with its own limits), and
then Gradio checks only file references that carry its ``meta`` marker. So the reference a client sends is
checked here: its real path must lie inside Gradio's upload folder, it must open as a regular file without
following a symbolic link and without blocking (a FIFO or a device never is one), and it is read within a
byte and a time budget. Every reference that fails gets the same message, ``NOT_AN_UPLOAD``, whatever the
path names or whether it exists, so the app cannot be used to learn which files the server has.
"""

from __future__ import annotations

import io
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

NOT_AN_UPLOAD = "That image was not uploaded to this app: upload the image file itself, then try again."
READ_CHUNK = 1 << 20  # bytes read at a time, so the time budget is checked as the file is read
READ_SECONDS = 5.0  # an upload on local disk reads in milliseconds; a slow one is cut off rather than waited for
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class UploadRefused(ValueError):
    """A reference to something other than an upload this app received, or an upload over the byte budget."""


@dataclass(frozen=True)
class Upload:
    """The bytes of an uploaded file and the name it was uploaded under (never a server path)."""

    data: bytes
    name: str


def read_upload(payload: Any, upload_folder: str | os.PathLike, max_bytes: int) -> Upload:
    """The bytes of the upload Gradio's file ``payload`` refers to, at most ``max_bytes`` of them.

    ``payload`` None (nothing uploaded) raises ``ValueError`` asking for an upload; any reference that is not
    a regular file under ``upload_folder`` raises ``UploadRefused`` with ``NOT_AN_UPLOAD``.
    """
    if payload is None or (isinstance(payload, dict) and not payload.get("path")):
        raise ValueError("Upload an image first.")
    path = payload.get("path") if isinstance(payload, dict) else None
    if not isinstance(path, str):
        raise UploadRefused(NOT_AN_UPLOAD)
    descriptor = _open_upload(path, upload_folder)
    with os.fdopen(descriptor, "rb", buffering=0) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > max_bytes:
            raise UploadRefused(too_large(size, max_bytes))
        return Upload(_read_bounded(stream, max_bytes), os.path.basename(path))


def too_large(size: int, max_bytes: int) -> str:
    """The message for an upload of ``size`` bytes over the limit."""
    return f"The file is {size / 1e6:.1f} MB, the limit is {max_bytes / 1e6:g} MB."


def _open_upload(path: str, upload_folder: str | os.PathLike) -> int:
    """A descriptor open on the regular file at ``path`` if it lies inside ``upload_folder``, else refused."""
    try:
        real = os.path.realpath(path)
        folder = os.path.realpath(upload_folder)
        if os.path.commonpath([real, folder]) != folder or real == folder:
            raise UploadRefused(NOT_AN_UPLOAD)
        descriptor = os.open(real, _OPEN_FLAGS)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path, or paths on different drives
        raise UploadRefused(NOT_AN_UPLOAD) from error
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UploadRefused(NOT_AN_UPLOAD)
    return descriptor


def _read_bounded(stream: io.RawIOBase, max_bytes: int) -> bytes:
    """At most ``max_bytes`` from ``stream`` within ``READ_SECONDS``; a file still growing past that is refused."""
    deadline = time.monotonic() + READ_SECONDS
    chunks, total = [], 0
    while chunk := stream.read(min(READ_CHUNK, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise UploadRefused(too_large(total, max_bytes))
        if time.monotonic() > deadline:
            raise UploadRefused(f"Reading the upload took over {READ_SECONDS:g} s; upload it again.")
    return b"".join(chunks)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header, or None when no Pillow plugin recognises it.

    ``Image.open`` refuses images over twice Pillow's own pixel limit with its own wording; asking the
    format plugins directly reads the size without that check, so the app's megapixel limit (and its
    message) applies to every size.
    """
    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        try:
            if accept is None or accept(prefix):
                with factory(io.BytesIO(data), "") as image:  # reads the header only
                    return image.size
        except Exception:  # this plugin does not read it (or cannot): try the next, as Image.open does
            continue
    return None
