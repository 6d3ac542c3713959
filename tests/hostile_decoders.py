"""Decoders that misbehave on purpose, for test_index_formats: child decoders import this module by name."""

from __future__ import annotations

import os
import time

from PIL import Image

from softclip.index.decode import decode_in_process


def misbehave_by_name(data: bytes, name: str, max_megapixels: float, min_side: int | None) -> Image.Image:
    """Hang, crash or exhaust memory when the file name says so; decode normally otherwise."""
    base = os.path.basename(name)
    if base.startswith("hang"):
        time.sleep(3600)
    if base.startswith("crash"):
        os.abort()
    if base.startswith("hog"):
        hoard = bytearray(1 << 30)  # 1 GiB, over the test's memory bound
        hoard[-1] = 1
    return decode_in_process(data, name, max_megapixels, min_side)
