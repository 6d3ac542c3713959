"""Robust, parallel image decoding: every bad file becomes a ``(path, reason)``, never an exception.

Each file is read once: its bytes give both the content hash and the pixels. Pillow is asked for the header
first, so an image whose size exceeds ``max_megapixels`` is refused before a single pixel is decoded;
Pillow's own decompression-bomb errors are caught and recorded the same way. Given ``min_side``, a JPEG is
decoded at reduced size (DCT scaling by 1/2, 1/4 or 1/8, ``Image.draft``) while its shorter side stays at
least ``min_side``; other formats always decode in full. Decoding runs in a thread pool
(Pillow releases the GIL while decoding and resizing; on 2 cores threads beat a process pool, which must also
pickle every pixel array back) and yields results in input order while the caller runs inference.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import io
import math
import os
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from softclip.index.formats import is_raw_name, register_plugins
from softclip.index.isolated import ChildDecodeError, DecoderPool
from softclip.index.scan import ScannedFile
from softclip.transform import load_image

DEFAULT_MAX_MEGAPIXELS = 100.0
# Reduced JPEG decoding stops at twice the model's input side, so that the preprocessing's antialiased
# bicubic resize still does the last, largest step of the shrinking and the model sees nearly the pixels
# of a full decode (embedding cosine >= 0.99 measured, docs/results.md), at a fraction of the decoding time.
DRAFT_SIDE_FACTOR = 2
# Magic bytes of the formats decoded in this process, also to tell "not an image" from "an image Pillow cannot
# decode". MPO files (cameras' stereo and multi-picture JPEGs) start as JPEGs.
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
IN_PROCESS_FORMATS = frozenset(("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"))
# A RAW file's embedded preview stands in for the demosaiced image when its shorter side has at least this many
# pixels (cameras embed previews of 1 to 2 thousand pixels, and tiny ones for their own screens).
RAW_PREVIEW_MIN_SIDE = 448
# LibRaw's ``flip`` (the camera's orientation) as the transposition that makes its preview upright.
_LIBRAW_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}
# Python's warning filters are process-wide, so capturing Pillow's bomb warnings must not interleave.
_HEADER_LOCK = threading.Lock()

if TYPE_CHECKING:
    import rawpy
    from tqdm import tqdm

Preprocess = Callable[[Image.Image], np.ndarray]
# Reads one file: (its bytes, its path with the size and mtime of what was read). ``read_file`` for local
# paths; the Ray path passes a reader over a pyarrow filesystem, so both decode through ``decode_file``.
Reader = Callable[[str], tuple[bytes, ScannedFile]]


class ImageDecodeError(ValueError):
    """A file that cannot become an RGB image; ``reason`` says why in a few words."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class DecodedFile:
    """One file after reading and decoding: pixels ``[3, H, W]`` or an error reason."""

    file: ScannedFile  # size and mtime of the bytes actually read
    content_hash: str | None = None
    pixels: np.ndarray | None = None
    error: str | None = None
    vanished: bool = False  # the file was listed but gone when read


def content_hash(data: bytes) -> str:
    """The manifest's content hash: blake2b-128 of the file's bytes, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: str) -> str:
    """``content_hash`` of a file, read in chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_file(path: str) -> tuple[bytes, ScannedFile]:
    """The bytes of a file with the size and mtime of what was read (the file may change after a scan)."""
    with open(path, "rb") as stream:
        data = stream.read()
        status = os.fstat(stream.fileno())
    return data, ScannedFile(path, len(data), status.st_mtime_ns)


def draft_side(encoder: object) -> int | None:
    """The shorter side JPEGs may be decoded down to for ``encoder``: twice its input side (None: unknown)."""
    config = getattr(encoder, "preprocess_config", None)
    return None if config is None else DRAFT_SIDE_FACTOR * config.size


def load_rgb(source: str | os.PathLike | Image.Image, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """An upright RGB image from a path or PIL image, or ``ImageDecodeError`` saying what is wrong."""
    if isinstance(source, Image.Image):
        return _to_rgb(source, "<image>")
    path = os.fspath(source)
    try:
        data, _ = read_file(path)
    except FileNotFoundError as error:
        raise ImageDecodeError(path, "no such file") from error
    except OSError as error:
        raise ImageDecodeError(path, _io_reason(error)) from error
    return decode_bytes(data, path, max_megapixels)


def decode_bytes(
    data: bytes, name: str, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode an encoded image (first frame) to upright RGB, refusing bombs before decoding pixels.

    JPEG, PNG, GIF, BMP, WebP and TIFF (known by their content) decode in this process; every other format
    and anything named as camera RAW decodes in a child process bounded in time and memory
    (``softclip.index.isolated``). With ``min_side``, the image comes back no smaller than needed for a
    shorter side of ``min_side`` (JPEGs decode at a reduced DCT scale); ``min_side=None`` gives full size.
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    if decodes_in_process(data, name):
        return decode_with_pillow(data, name, max_megapixels, min_side)
    try:
        return shared_pool().decode(data, name, max_megapixels, min_side)
    except ChildDecodeError as error:
        raise ImageDecodeError(name, error.reason) from None


def decodes_in_process(data: bytes, name: str) -> bool:
    """True for the common formats whose decoders Pillow ships and fuzzes (not for a RAW file name)."""
    return _known_format(data) in IN_PROCESS_FORMATS and not is_raw_name(name)


@functools.cache
def shared_pool() -> DecoderPool:
    """The process's child decoders (``decode_bytes`` sends them what it does not decode itself), stopped at exit."""
    pool = DecoderPool(decode_in_child)
    atexit.register(pool.close)
    return pool


def decode_in_child(data: bytes, name: str, max_megapixels: float, min_side: int | None) -> Image.Image:
    """What a child decoder runs: ``decode_in_process``, shrunk to what ``min_side`` needs before it is sent back."""
    return shrink(decode_in_process(data, name, max_megapixels, min_side), min_side)


def decode_in_process(
    data: bytes, name: str, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, min_side: int | None = None
) -> Image.Image:
    """``decode_bytes`` without a child process (what the child runs): RAW through rawpy, the rest by content.

    A RAW file name is tried with LibRaw first; a file LibRaw does not take, whatever its name, is decoded by
    what its content is, and one that Pillow cannot identify is offered to LibRaw last.
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    register_plugins()
    if is_raw_name(name) and (image := decode_raw(data, name, max_megapixels, min_side)) is not None:
        return image
    try:
        return decode_with_pillow(data, name, max_megapixels, min_side)
    except ImageDecodeError:
        if is_raw_name(name) or (image := decode_raw(data, name, max_megapixels, min_side)) is None:
            raise
        return image


def decode_with_pillow(
    data: bytes, name: str, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, min_side: int | None = None
) -> Image.Image:
    """Pillow's decoding of ``data``: header first (size check), then pixels, reduced for JPEGs (``draft_jpeg``)."""
    image = _open_header(data, name)
    _check_size(*image.size, name, max_megapixels)
    if min_side is not None:
        draft_jpeg(image, min_side)
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(name, f"decompression bomb: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(name, f"truncated or corrupt {image.format or 'image'} data: {error}") from error
    return _to_rgb(image, name)


def decode_raw(data: bytes, name: str, max_megapixels: float, min_side: int | None) -> Image.Image | None:
    """A camera RAW file as upright RGB: its embedded preview JPEG when that is large enough, else demosaiced.

    None when LibRaw does not recognise the data. Demosaicing runs at half size when that still leaves a
    shorter side of ``min_side``.
    """
    import rawpy

    try:
        raw = rawpy.imread(io.BytesIO(data))
    except (rawpy.LibRawFileUnsupportedError, rawpy.LibRawIOError, rawpy.LibRawDataError):
        return None
    with raw:
        _check_size(raw.sizes.width, raw.sizes.height, name, max_megapixels)
        preview = raw_preview(raw, name, max_megapixels, min_side or RAW_PREVIEW_MIN_SIDE)
        if preview is not None:
            return preview
        half = min_side is not None and min(raw.sizes.width, raw.sizes.height) // 2 >= min_side
        try:
            pixels = raw.postprocess(half_size=half, use_camera_wb=True, output_bps=8)  # applies the orientation
        except rawpy.LibRawError as error:
            raise ImageDecodeError(name, f"corrupt RAW data: {type(error).__name__}: {error}") from error
    return Image.fromarray(pixels).convert("RGB")


def raw_preview(raw: rawpy.RawPy, name: str, max_megapixels: float, min_side: int) -> Image.Image | None:
    """The embedded preview of a RAW file, upright, if it has one whose shorter side is ``min_side`` or more."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError, rawpy.LibRawIOError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            image = decode_with_pillow(thumb.data, name, max_megapixels, min_side)
        except ImageDecodeError:
            return None  # a broken preview: demosaic instead
        upright = _has_orientation(thumb.data)
    else:
        image, upright = Image.fromarray(thumb.data).convert("RGB"), False
    if min(image.size) < min_side:
        return None
    flip = _LIBRAW_FLIPS.get(raw.sizes.flip)
    return image if upright or flip is None else image.transpose(flip)


def shrink(image: Image.Image, min_side: int | None) -> Image.Image:
    """``image`` reduced by a whole factor (box filter) while its shorter side stays ``min_side`` or more."""
    factor = 1 if min_side is None else min(image.size) // max(1, min_side)
    return image.reduce(factor) if factor > 1 else image


def draft_jpeg(image: Image.Image, min_side: int) -> None:
    """Ask a JPEG not yet loaded to decode at a reduced size whose shorter side stays ``min_side`` or more.

    EXIF orientation is applied after decoding and turns the image by right angles at most, so the shorter
    side of the stored image is the shorter side of the upright one.
    """
    if image.format not in ("JPEG", "MPO") or min(image.size) <= min_side:
        return
    scale = min_side / min(image.size)
    image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))


def decode_file(
    file: ScannedFile,
    preprocess: Preprocess,
    max_megapixels: float,
    min_side: int | None = None,
    reader: Reader | None = None,
) -> DecodedFile:
    """Read, hash, decode and preprocess one file; any failure is recorded in the result (see ``decode_bytes``).

    ``reader`` reads the file (default: ``read_file``, from the local filesystem).
    """
    try:
        data, read = (reader or read_file)(file.path)
    except OSError as error:
        return DecodedFile(file, error=_io_reason(error), vanished=isinstance(error, FileNotFoundError))
    result = DecodedFile(read, content_hash=content_hash(data))
    try:
        image = decode_bytes(data, file.path, max_megapixels, min_side)
    except ImageDecodeError as error:
        result.error = error.reason
        return result
    except Exception as error:  # a Pillow plugin can raise nearly anything on hostile input
        result.error = f"cannot decode: {type(error).__name__}: {error}"
        return result
    try:
        result.pixels = np.asarray(preprocess(image), dtype=np.float32)
    except Exception as error:
        result.error = f"preprocessing failed: {type(error).__name__}: {error}"
    return result


def decode_files(
    files: Iterable[ScannedFile],
    preprocess: Preprocess,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    workers: int | None = None,
    lookahead: int = 64,
    min_side: int | None = None,
) -> Iterator[DecodedFile]:
    """``decode_file`` over many files in a thread pool, results in input order, at most ``lookahead`` ahead."""
    workers = default_workers() if workers is None else workers
    decode = functools.partial(decode_file, preprocess=preprocess, max_megapixels=max_megapixels, min_side=min_side)
    if workers <= 1:
        yield from map(decode, files)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="softclip-decode")
    try:
        remaining = iter(files)
        pending: deque[Future[DecodedFile]] = deque(pool.submit(decode, file) for file in islice(remaining, lookahead))
        while pending:
            result = pending.popleft().result()
            for file in islice(remaining, 1):
                pending.append(pool.submit(decode, file))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def batched(items: Iterable[DecodedFile], size: int) -> Iterator[list[DecodedFile]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def progress_bar(total: int, enabled: bool | None) -> tqdm:
    """A tqdm bar counting images (it shows images/s); ``enabled=None`` shows it when stderr is a terminal."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, unit="img", desc="embedding", disable=not show or total == 0, smoothing=0.1)


def default_workers() -> int:
    """Decoding threads: one per core the process may use, at most 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(16, cores or 1))


def _open_header(data: bytes, name: str) -> Image.Image:
    """``Image.open`` (reads the header only), with Pillow's bomb warnings captured rather than printed."""
    try:
        with _HEADER_LOCK, warnings.catch_warnings():
            # Our own ``max_megapixels`` check below is the policy; Pillow's warning threshold is not.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.seek(0)  # first frame of a GIF or multi-page TIFF
            return image
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(name, f"decompression bomb: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError(name, _unidentified_reason(data)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(name, f"corrupt image header: {error}") from error


def _check_size(width: int, height: int, name: str, max_megapixels: float) -> None:
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        size = f"{width}x{height} is {megapixels:.1f} megapixels"
        raise ImageDecodeError(name, f"decompression bomb: {size}, over max_megapixels={max_megapixels:g}")


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    try:
        return load_image(image)
    except (ValueError, OSError) as error:
        raise ImageDecodeError(name, f"unsupported pixel mode {image.mode!r}: {error}") from error


def _known_format(data: bytes) -> str | None:
    """The format ``data`` starts like, among those of ``_SIGNATURES`` and WebP (None: another one)."""
    kind = next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WEBP"
    return kind


def _has_orientation(jpeg: bytes) -> bool:
    """True when a JPEG carries an EXIF orientation other than 'upright' (decoding has applied it)."""
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            return image.getexif().get(ExifTags.Base.Orientation, 1) != 1
    except Exception:
        return False


def _unidentified_reason(data: bytes) -> str:
    kind = _known_format(data)
    if kind is None:
        return "not an image (no known image format)"
    return f"unsupported {kind} variant: {_plugin_error(kind, data)}"


def _plugin_error(kind: str, data: bytes) -> str:
    """Pillow hides why its plugin refused a file; ask the plugin directly for its message."""
    factory = Image.OPEN.get(kind, (None, None))[0]
    try:
        if factory is not None:
            factory(io.BytesIO(data), "")
    except Exception as error:
        return str(error) or type(error).__name__
    return "Pillow cannot decode this pixel mode or compression"


def _io_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, FileNotFoundError):
        return "file vanished during indexing"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not a file"
    return f"cannot read file: {error.strerror or error}"
