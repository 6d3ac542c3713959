"""Indexing Pillow's own test images: every format, fuzzed and broken files, as a new user's hardest folder.

Pillow's source distribution carries ``Tests/images`` (about 1,000 files); get it with

    pip download --no-binary :all: --no-deps pillow==$(python -c "import PIL; print(PIL.__version__)")
    tar xzf pillow-*.tar.gz --wildcards '*/Tests/images'

The reference is what Pillow, with the plugins softclip registers (HEIC/HEIF, JPEG XL), can load: each file,
whatever its extension, is opened, its first frame loaded and converted to RGB in a separate reference process
(restarted when a file crashes or hangs it, with a memory cap) under Pillow's own decompression-bomb limit.
``build_index`` then runs over the folder, and the table gives the share of loadable files it indexed, the
loadable files it missed (by extension), what it indexed that the reference could not load, its time and its
peak memory (``ru_maxrss`` of this process and of its child decoders).

    python benchmarks/pillow_corpus.py --images pillow-12.3.0/Tests/images
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from softclip.index import build_index
from softclip.index.decode import shared_pool

REFERENCE_SECONDS = 20.0
REFERENCE_MEMORY = 4 << 30
# The reference process: reads file paths on stdin, answers "ok" or the error for each on stdout.
REFERENCE = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({REFERENCE_MEMORY}, {REFERENCE_MEMORY}))
from PIL import Image
import pillow_heif, pillow_jxl
pillow_heif.register_heif_opener()
for line in sys.stdin:
    try:
        with Image.open(line.rstrip("\\n")) as image:
            image.seek(0)
            image.convert("RGB").load()
        print("ok", flush=True)
    except BaseException as error:
        print(type(error).__name__, flush=True)
"""


class MeanColourEncoder:
    """A stand-in model (the decoders are what is measured): mean colour of a 32 px image, padded to 8 dims."""

    model_id = "mean-colour-8"
    embed_dim = 8

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((32, 32)), np.float32).transpose(2, 0, 1) / 255.0

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        vectors = np.concatenate([pixels.mean(axis=(2, 3)), np.ones((len(pixels), 5), np.float32)], axis=1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.encode_images(np.ones((len(texts), 3, 1, 1), np.float32))


def reference_loadable(files: list[Path]) -> dict[Path, str]:
    """file -> 'ok' or why the reference could not load it ('crashed', 'timed out' included)."""
    results: dict[Path, str] = {}
    pending = list(files)
    while pending:
        process = subprocess.Popen(
            [sys.executable, "-c", REFERENCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        while pending:
            path = pending.pop(0)
            process.stdin.write(f"{path}\n")
            process.stdin.flush()
            answer = _read_line(process, REFERENCE_SECONDS)
            results[path] = answer or ("timed out" if process.poll() is None else "crashed")
            if answer is None:
                process.kill()
                break
        process.stdin.close()  # the end of the list: the reference process exits
        process.wait()
    return results


def _read_line(process: subprocess.Popen, seconds: float) -> str | None:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(seconds):
            return None
    line = process.stdout.readline().strip()
    return line or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="Pillow's Tests/images folder")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args()
    files = sorted(path for path in args.images.rglob("*") if path.is_file() and not path.name.startswith("."))
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        report = build_index(args.images, MeanColourEncoder(), Path(work) / "idx", workers=args.workers, progress=False)
        seconds = time.perf_counter() - started
    shared_pool().close()  # its children's peak memory is counted once they have ended
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    started = time.perf_counter()
    reference = reference_loadable(files)  # after the peak was read: its processes are not the indexer's
    reference_seconds = time.perf_counter() - started
    loadable = {str(path.absolute()) for path, answer in reference.items() if answer == "ok"}
    failed = {path for path, _ in report.errors}
    scanned_ok = report.added + report.updated  # copies of embedded content are indexed too
    indexed = {str(path.absolute()) for path in files} - failed - _not_scanned(files, args.images)
    missed = sorted(loadable - indexed)
    extra = sorted(indexed - loadable)
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    rows = {
        "files in the folder": len(files),
        "loadable by Pillow + plugins (reference)": len(loadable),
        "indexed": len(indexed),
        "indexed / loadable": f"{len(loadable & indexed) / max(1, len(loadable)):.1%}",
        "loadable but not indexed": len(missed),
        "indexed, not loadable by the reference": len(extra),
        "named in the report as not indexed": len(report.errors),
        "index time (s)": f"{seconds:.1f}",
        "peak memory of one process (GB)": f"{peak / 1e6:.2f}",
        "reference time (s)": f"{reference_seconds:.1f}",
    }
    assert scanned_ok == len(indexed), (scanned_ok, len(indexed))
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:<{width}}  {value}")
    by_extension = collections.Counter(Path(path).suffix.lower() or "(none)" for path in missed)
    print("missed, by extension:", ", ".join(f"{ext} {n}" for ext, n in by_extension.most_common()) or "none")
    if args.json:
        print(json.dumps({"rows": rows, "missed": missed, "extra": extra}, indent=1))


def _not_scanned(files: list[Path], root: Path) -> set[str]:
    """Files the scan did not pick up (an extension that is not indexed)."""
    from softclip.index.scan import scan_folder

    scanned = {file.path for file in scan_folder(root).files}
    return {str(path.absolute()) for path in files} - scanned


if __name__ == "__main__":
    main()
