"""Result thumbnails as files in Gradio's cache folder, each written once and atomically.

Returned as PIL images, results would be encoded by Gradio for every request and written over the same
content-named file while another request may be downloading it (a truncated response under load). Here each
thumbnail is encoded once per version of its image file, written under a temporary name and renamed into
a name made of its content's hash: a file of that name is always complete and never changes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from softclip.index import ImageDecodeError
from softclip.transform import load_image

THUMBNAIL_FORMAT = "webp"
THUMBNAIL_QUALITY = 85
MAX_REMEMBERED = 50_000  # image versions whose thumbnail file is remembered (about 10 MB of keys)


def render_thumbnail(path: str, side: int, max_megapixels: float) -> Image.Image:
    """An upright RGB copy of an image file, at most ``side`` pixels wide and high (JPEGs decode at a reduced scale)."""
    with Image.open(path) as image:
        width, height = image.size
        if width * height > max_megapixels * 1e6:
            raise ImageDecodeError(path, f"{width}x{height} is over the {max_megapixels:g} megapixel limit")
        image.draft("RGB", (side, side))  # lets the JPEG decoder skip detail the thumbnail would drop
        picture = load_image(image)
        picture.thumbnail((side, side))
        return picture.copy()


class ThumbnailFiles:
    """Thumbnail files of indexed images in ``folder``, made on first use and reused while the image is unchanged."""

    def __init__(self, folder: str | os.PathLike, side: int, max_megapixels: float) -> None:
        self.folder = Path(folder)
        self.side = side
        self.max_megapixels = max_megapixels
        self._made: OrderedDict[tuple[str, int, int], str] = OrderedDict()  # (path, mtime, size) -> thumbnail
        self._lock = threading.Lock()

    def path_for(self, image_path: str) -> str:
        """The thumbnail file of ``image_path`` (raises ``OSError`` or ``ImageDecodeError`` when it cannot be read)."""
        status = os.stat(image_path)
        version = (image_path, status.st_mtime_ns, status.st_size)
        with self._lock:
            made = self._made.get(version)
        if made is not None and os.path.exists(made):  # Gradio may have cleared its cache since
            return made
        made = self._write(render_thumbnail(image_path, self.side, self.max_megapixels))
        with self._lock:
            self._made[version] = made
            while len(self._made) > MAX_REMEMBERED:
                self._made.popitem(last=False)
        return made

    def _write(self, picture: Image.Image) -> str:
        buffer = io.BytesIO()
        picture.save(buffer, format=THUMBNAIL_FORMAT, quality=THUMBNAIL_QUALITY)
        data = buffer.getvalue()
        target = self.folder / f"{hashlib.sha256(data).hexdigest()}.{THUMBNAIL_FORMAT}"
        if not target.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor, staging = tempfile.mkstemp(dir=self.folder, prefix=".thumbnail-")
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
            os.replace(staging, target)  # readers see the whole file or none
        return str(target)
