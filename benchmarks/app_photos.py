"""The app over a library of 12-megapixel photos in a real browser: time to first results, cold and warm, and
the size of the thumbnail cache.

Writes ``--n`` photo-like JPEGs of ``--width`` x ``--height`` pixels (default 2,000 of 4000x3000, quality 90:
a few smooth scenes with blurred shapes and sensor-like noise, each file with its own mark and one of four
EXIF orientations), exports a freshly initialised tiny-vit, and indexes them with ``build_index``. Then the app
runs in its own process and Debian's Chromium, driven by Playwright, types each of ``--queries`` text queries
and clicks Search; the time is from the click to the moment the browser has drawn all ``--k`` result images.

- cold: an empty thumbnail cache (``index/thumbnails`` removed) and a freshly started app: every result is
  decoded from its 12-megapixel file on first view.
- warm: the app started again, the same queries: the thumbnails come from the cache beside the index.

Finally every photo's thumbnail is made (as a user would warm the whole cache), timed, and the cache's size on
disk is reported. The photos are kept in ``--work`` and reused by the next run with the same size.

    python benchmarks/app_photos.py --n 2000 --work /var/tmp/softclip-photos
    python benchmarks/app_photos.py --n 100 --width 2000 --height 1500     # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import served_app  # beside this script
from PIL import Image, ImageDraw, ImageFilter
from served_app import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
QUERIES = [
    "a dog on a beach",
    "sunset over the sea",
    "a red car in a street",
    "mountains under snow",
    "a birthday cake",
    "a cat on a sofa",
    "trees in autumn",
    "a city at night",
]
# The app clears the previous results before it searches: a search's results are those drawn after that.
WATCH_FOR_CLEARED_RESULTS = """() => {
    window.resultsCleared = document.querySelectorAll('#results img').length === 0;
    const observer = new MutationObserver(() => {
        if (document.querySelectorAll('#results img').length > 0) return;
        window.resultsCleared = true;
        observer.disconnect();
    });
    observer.observe(document.body, {childList: true, subtree: true});
}"""
NEW_RESULTS_DRAWN = """(count) => {
    const images = [...document.querySelectorAll('#results img')];
    return window.resultsCleared && images.length >= count && images.every(i => i.complete && i.naturalWidth > 0);
}"""
ORIENTATIONS = (1, 6, 3, 8)
SCENES = 8
JPEG_QUALITY = 90


def scene(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth photo-like scene: sky-to-ground gradient and blurred shapes, drawn small and enlarged, plus noise."""
    rng = np.random.default_rng(seed)
    small = Image.new("RGB", (width // 8, height // 8))
    draw = ImageDraw.Draw(small)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    for row in range(small.height):
        colour = top + (bottom - top) * row / small.height
        draw.line([(0, row), (small.width, row)], fill=tuple(int(c) for c in colour))
    for _ in range(12):
        x, y = rng.integers(0, small.width), rng.integers(0, small.height)
        size = rng.integers(small.width // 20, small.width // 5)
        draw.ellipse([x, y, x + size, y + size], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    big = small.filter(ImageFilter.GaussianBlur(2)).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
    return np.clip(np.asarray(big, np.int16) + noise, 0, 255).astype(np.uint8)


def write_photo(args: tuple[Path, int, int, int]) -> None:
    """One photo: a scene with a mark of its own (so every file differs) and an EXIF orientation."""
    path, width, height, index = args
    pixels = _scene_cached(width, height, index % SCENES).copy()
    x, y = (index * 97) % (width - 400), (index * 61) % (height - 300)
    pixels[y : y + 300, x : x + 400] = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
    exif = Image.Exif()
    exif[0x0112] = ORIENTATIONS[index % len(ORIENTATIONS)]
    Image.fromarray(pixels).save(path, quality=JPEG_QUALITY, exif=exif)


_SCENES: dict[tuple[int, int, int], np.ndarray] = {}


def _scene_cached(width: int, height: int, seed: int) -> np.ndarray:
    key = (width, height, seed)
    if key not in _SCENES:
        _SCENES[key] = scene(width, height, seed)
    return _SCENES[key]


def write_photos(folder: Path, n: int, width: int, height: int, processes: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"IMG_{index:05d}.jpg" for index in range(n)]
    missing = [(path, width, height, index) for index, path in enumerate(paths) if not path.exists()]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for _ in pool.imap_unordered(write_photo, missing, chunksize=8):
            pass
    return paths


def build(work: Path, photos: Path) -> tuple[Path, Path, float]:
    """A fresh tiny-vit checkpoint, its export, and the index of ``photos``; returns (index, checkpoint, seconds)."""
    import torch

    from softclip.export import OnnxEncoder, export_model
    from softclip.index import build_index
    from softclip.model import create_model
    from softclip.save import save_pretrained
    from softclip.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = create_model("tiny-vit")
    model.tokenizer = Tokenizer.train(QUERIES * 3, vocab_size=300)
    checkpoint = save_pretrained(model, work / "checkpoint")
    encoder = OnnxEncoder(export_model(checkpoint, work / "export"))
    index = work / "index"
    shutil.rmtree(index, ignore_errors=True)
    started = time.perf_counter()
    report = build_index(photos, encoder, index, progress=False)
    assert not report.errors, report.errors[:3]
    return index, checkpoint, time.perf_counter() - started


@contextlib.contextmanager
def app_process(index: Path, checkpoint: Path) -> Iterator[str]:
    """The app serving ``index`` in its own process, until the block ends."""
    port = free_port()
    options = ["--serve", str(port), "--index", str(index), "--checkpoint", str(checkpoint)]
    with served_app.app_process(__file__, options, port) as url:
        yield url


def serve_until_stopped(index: Path, checkpoint: Path, port: int) -> None:
    from softclip.app.app import build_blocks, serve
    from softclip.app.state import AppState

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    state = AppState.load(index, checkpoint)
    demo = serve(build_blocks(state), port=port, block=False)
    print("serving", demo.local_url, flush=True)
    signal.sigwait({signal.SIGTERM})
    demo.close()


def seconds_to_results(url: str, queries: list[str], k: int) -> list[float]:
    """For each query: seconds from clicking Search to all ``k`` result images drawn by the browser."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.locator("#query textarea").wait_for()
            for query in queries:
                page.locator("#query textarea").fill(query)
                page.evaluate(WATCH_FOR_CLEARED_RESULTS)
                started = time.perf_counter()
                page.locator("#search").click()
                page.wait_for_function(NEW_RESULTS_DRAWN, arg=k, polling=10)
                times.append(time.perf_counter() - started)
        finally:
            browser.close()
    return times


def make_every_thumbnail(index: Path, photos: list[Path]) -> float:
    """Seconds to make the kept thumbnails still missing (what warming the whole cache costs)."""
    from softclip.app.state import THUMBNAIL_SIDE
    from softclip.app.thumbnails import ThumbnailFiles
    from softclip.index.decode import DEFAULT_MAX_MEGAPIXELS, default_workers

    store = index / "thumbnails"
    thumbnails = ThumbnailFiles(store, store, THUMBNAIL_SIDE, DEFAULT_MAX_MEGAPIXELS)
    started = time.perf_counter()
    with ThreadPoolExecutor(default_workers()) as pool:
        list(pool.map(lambda path: thumbnails.make(os.fspath(path)), photos))
    return time.perf_counter() - started


def folder_bytes(folder: Path) -> tuple[int, int]:
    files = [path for path in folder.glob("*.webp")]
    return len(files), sum(path.stat().st_size for path in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="photos")
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=len(QUERIES))
    parser.add_argument("--k", type=int, default=12, help="results per search (the app's default)")
    parser.add_argument("--work", type=Path, default=Path("softclip-app-photos"), help="folder kept between runs")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="processes writing photos")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_until_stopped(args.index, args.checkpoint, args.serve)
    photos_dir = args.work / f"photos-{args.width}x{args.height}"
    started = time.perf_counter()
    photos = write_photos(photos_dir, args.n, args.width, args.height, args.processes)
    written = time.perf_counter() - started
    # Only this run's files: a folder kept from a larger run holds more.
    for extra in sorted(photos_dir.glob("IMG_*.jpg"))[args.n :]:
        extra.unlink()
    photo_bytes = sum(path.stat().st_size for path in photos)
    index, checkpoint, index_seconds = build(args.work, photos_dir)
    queries = (QUERIES * (args.queries // len(QUERIES) + 1))[: args.queries]
    shutil.rmtree(index / "thumbnails", ignore_errors=True)
    with app_process(index, checkpoint) as url:
        cold = seconds_to_results(url, queries, args.k)
    shown_count, shown_bytes = folder_bytes(index / "thumbnails")
    with app_process(index, checkpoint) as url:
        warm = seconds_to_results(url, queries, args.k)
    every = make_every_thumbnail(index, photos)
    count, size = folder_bytes(index / "thumbnails")
    megapixels = args.width * args.height / 1e6
    print(f"photos: {args.n} x {megapixels:.0f} MP JPEG, {photo_bytes / 1e9:.2f} GB (written in {written:.0f} s)")
    print(f"index: built in {index_seconds:.0f} s ({args.n / index_seconds:.1f} photos/s)")
    print(f"{'time to first results (s), k=' + str(args.k):<36} {'median':>8} {'min':>8} {'max':>8}")
    for name, times in (("cold (thumbnails made on view)", cold), ("warm (thumbnails from the cache)", warm)):
        print(f"{name:<36} {statistics.median(times):>8.2f} {min(times):>8.2f} {max(times):>8.2f}")
    print(f"cold / warm (median): {statistics.median(cold) / statistics.median(warm):.1f}x over {len(queries)} queries")
    print(f"thumbnails made by the searches: {shown_count}, {shown_bytes / 1e6:.2f} MB")
    print(
        f"thumbnail cache for all {count} photos: {size / 1e6:.1f} MB ({size / max(1, count) / 1e3:.1f} kB each, "
        f"{size / max(1, photo_bytes):.2%} of the photos); the {count - shown_count} not yet shown made in "
        f"{every:.0f} s ({(count - shown_count) / every:.1f}/s)"
    )


if __name__ == "__main__":
    main()
