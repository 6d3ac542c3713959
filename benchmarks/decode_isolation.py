"""What decoding in a child process costs: per-file time of HEIC, AVIF and DNG files decoded in a child decoder
(``decode_bytes``, the indexer's path) against the same decoding in this process (``decode_in_process``), and
JPEG/PNG, which stay in this process, through ``decode_bytes`` against Pillow directly (``decode_with_pillow``).

Files are photo-like pictures of ``--width`` x ``--height`` written by the libraries themselves (pillow-heif,
Pillow, tifffile for the DNG), decoded at the indexer's reduced size (``--min-side``, twice a 224-pixel model
input) and at full size. Each cell is the median of ``--repeats`` rounds of all ``--n`` files, the two ways
alternating; the child is started (and its start-up timed) before the rounds.

    python benchmarks/decode_isolation.py --n 20 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from softclip.index.decode import decode_bytes, decode_in_process, decode_with_pillow, shared_pool
from softclip.index.formats import register_plugins

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_index_formats import gradient_dng  # noqa: E402  (the DNG writer the tests use)


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width * 255, y / height * 255, np.full((height, width), 128.0)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))


def encoded(fmt: str, width: int, height: int, n: int, work: Path) -> list[tuple[bytes, str]]:
    files = []
    for seed in range(n):
        if fmt == "DNG":
            path = gradient_dng(work / f"{seed}.dng", preview=False, width=width, height=height)
            files.append((path.read_bytes(), str(path)))
            continue
        buffer = io.BytesIO()
        photo(width, height, seed).save(buffer, format=fmt, quality=90)
        files.append((buffer.getvalue(), f"{seed}.{fmt.lower()}"))
    return files


def per_file_ms(decode: Callable, files: list[tuple[bytes, str]], min_side: int | None) -> float:
    started = time.perf_counter()
    for data, name in files:
        decode(data, name, 100.0, min_side)
    return (time.perf_counter() - started) / len(files) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--min-side", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/softclip-decode-isolation"))
    args = parser.parse_args()
    register_plugins()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    shared_pool().decode(*encoded("PNG", 64, 64, 1, args.work)[0], 100.0)  # a PNG named .png stays here:
    shared_pool().decode(*encoded("HEIF", 64, 64, 1, args.work)[0], 100.0)  # so start the child with a HEIC
    print(f"child decoder start-up: {time.perf_counter() - started:.2f} s (once per decoding thread)")
    print(f"{args.n} files of {args.width}x{args.height}, median of {args.repeats} rounds, ms per file")
    print(f"{'format':<8} {'size':<8} {'decode_bytes':>13} {'direct':>8} {'ratio':>7}  (direct: in this process)")
    pairs = {"HEIF": (decode_bytes, decode_in_process), "AVIF": (decode_bytes, decode_in_process)}
    pairs |= {"DNG": (decode_bytes, decode_in_process)}
    pairs |= {"JPEG": (decode_bytes, decode_with_pillow), "PNG": (decode_bytes, decode_with_pillow)}
    for fmt, (through_api, direct) in pairs.items():
        files = encoded(fmt, args.width, args.height, args.n, args.work)
        for size, min_side in (("reduced", args.min_side), ("full", None)):
            api, here = [], []
            for _ in range(args.repeats):
                api.append(per_file_ms(through_api, files, min_side))
                here.append(per_file_ms(direct, files, min_side))
            first, second = statistics.median(api), statistics.median(here)
            print(f"{fmt:<8} {size:<8} {first:>13.1f} {second:>8.1f} {first / second:>7.2f}")


if __name__ == "__main__":
    main()
