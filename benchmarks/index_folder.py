"""Folder indexing: end-to-end ``build_index`` images/s against the image encoder alone, in one run.

Writes N SynthScenes JPEGs (rendered at ``--size`` px, quality 90), exports a freshly initialised model with
``softclip.export.export_model`` and opens it with ``OnnxEncoder``. Three things are then timed on the same
files: ``build_index(folder, encoder, index_dir)`` into a new index folder (scan, read, hash, decode and
preprocess in worker threads, encode, manifest writes, FAISS file); ``encoder.encode_images`` alone on the
already preprocessed arrays, batch by batch as ``build_index`` feeds it; and ``decode_file`` (read, hash,
decode, preprocess) alone on one thread. ``IndexReport.seconds`` is the part of ``build_index`` spent in
its decode-embed-record loop, without the folder scan, the lock and the FAISS file. Model-only and
end-to-end runs alternate over ``--repeats`` rounds so their ratio holds on a busy machine; the medians are
reported. Files are read from the page cache (they were just written), so "I/O" here is the cost of system
calls and copies, not of a disk.

    python benchmarks/index_folder.py --n 2000 --model tiny-vit --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from softclip.export import OnnxEncoder, export_model
from softclip.index import build_index
from softclip.index.decode import DEFAULT_MAX_MEGAPIXELS, decode_file, default_workers
from softclip.index.scan import scan_folder
from softclip.model import create_model
from softclip.training.synthetic import SynthConfig, SynthScenes, render_scene

JPEG_QUALITY = 90


def write_jpegs(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` SynthScenes scenes rendered at ``size`` px as JPEG files under ``folder``."""
    scenes = SynthScenes(SynthConfig(image_size=size), length=count)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"scene_{index:06d}.jpg"
        render_scene(scenes.scene(index), size).save(path, quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def decode_serially(folder: Path, encoder: OnnxEncoder) -> tuple[np.ndarray, float]:
    """(pixels [N, 3, H, W], seconds): every file read, hashed, decoded and preprocessed on one thread."""
    files = scan_folder(folder).files
    started = time.perf_counter()
    decoded = [decode_file(file, encoder.preprocess, DEFAULT_MAX_MEGAPIXELS) for file in files]
    seconds = time.perf_counter() - started
    failed = [item.file.path for item in decoded if item.pixels is None]
    if failed:
        raise RuntimeError(f"{len(failed)} generated images failed to decode, e.g. {failed[0]}")
    return np.stack([item.pixels for item in decoded]), seconds


def time_encoder(encoder: OnnxEncoder, pixels: np.ndarray, batch_size: int) -> float:
    """Seconds to embed ``pixels`` [N, 3, H, W] in batches of ``batch_size``, as ``build_index`` calls it."""
    started = time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        encoder.encode_images(pixels[start : start + batch_size])
    return time.perf_counter() - started


@dataclass
class Timings:
    """Seconds per round of each timed run."""

    model_only: list[float] = field(default_factory=list)  # encode_images on preprocessed arrays
    end_to_end: list[float] = field(default_factory=list)  # the whole build_index call
    embed_loop: list[float] = field(default_factory=list)  # build_index's decode-embed-record loop alone


def time_build_index(
    folder: Path, encoder: OnnxEncoder, index_dir: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """(whole call, decode-embed-record loop) seconds of ``build_index`` into a new ``index_dir``."""
    started = time.perf_counter()
    report = build_index(folder, encoder, index_dir, batch_size=args.batch, workers=args.workers, progress=False)
    seconds = time.perf_counter() - started
    if report.errors or report.embedded != args.n:
        raise RuntimeError(f"build_index embedded {report.embedded} images with {len(report.errors)} errors")
    shutil.rmtree(index_dir)
    return seconds, report.seconds  # report.seconds leaves out the scan, the folder lock and the FAISS file


def alternate_runs(
    folder: Path, encoder: OnnxEncoder, pixels: np.ndarray, work: Path, args: argparse.Namespace
) -> Timings:
    """One encoder-only and one ``build_index`` run per round, the order flipped each round."""
    timings = Timings()
    for round_index in range(args.repeats):
        order = ("model", "index") if round_index % 2 == 0 else ("index", "model")
        for kind in order:
            if kind == "model":
                timings.model_only.append(time_encoder(encoder, pixels, args.batch))
                continue
            whole, loop = time_build_index(folder, encoder, work / f"index-{round_index}", args)
            timings.end_to_end.append(whole)
            timings.embed_loop.append(loop)
    return timings


def table(count: int, decode_seconds: float, timings: Timings, args: argparse.Namespace) -> str:
    """The markdown table: images/s, ms per image and time relative to the end-to-end run."""
    total, model = float(np.median(timings.end_to_end)), float(np.median(timings.model_only))
    rows = [
        (f"build_index end to end ({args.workers} decode threads)", total),
        ("build_index without scan, lock and FAISS file (IndexReport.seconds)", float(np.median(timings.embed_loop))),
        (f"encode_images only (preprocessed arrays, batch {args.batch})", model),
        ("decode_file only (read, hash, decode, preprocess; 1 thread)", decode_seconds),
    ]
    lines = ["| what | images/s | ms/image | time vs end to end |", "| --- | ---: | ---: | ---: |"]
    for name, seconds in rows:
        lines.append(f"| {name} | {count / seconds:,.1f} | {1000 * seconds / count:.2f} | {seconds / total:.0%} |")
    overhead = 1000 * (total - model) / count
    lines.append(f"\nOutside the model: {overhead:.2f} ms/image, {(total - model) / total:.0%} of the end-to-end time.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="JPEG files to index")
    parser.add_argument("--size", type=int, default=256, help="side of the generated images in pixels")
    parser.add_argument("--model", default="tiny-vit", help="preset to export (freshly initialised)")
    parser.add_argument("--batch", type=int, default=32, help="encoder batch, also build_index's batch_size")
    parser.add_argument("--workers", type=int, default=default_workers(), help="build_index decode threads")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of model-only and end-to-end runs")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        folder = work / "images"
        jpeg_kb = np.mean([path.stat().st_size for path in write_jpegs(folder, args.n, args.size)]) / 1000
        export_dir = export_model(create_model(args.model), work / "export")
        encoder = OnnxEncoder(export_dir, threads=args.threads, batch_size=args.batch)
        pixels, decode_seconds = decode_serially(folder, encoder)
        time_encoder(encoder, pixels[: args.batch], args.batch)  # warm-up: ONNX Runtime allocates on first run
        timings = alternate_runs(folder, encoder, pixels, work, args)
    print(
        f"{args.n} SynthScenes JPEGs at {args.size} px ({jpeg_kb:.1f} kB each); {args.model} export "
        f"(input {encoder.image_size} px) on ONNX Runtime, {args.threads} threads; median of {args.repeats} rounds\n"
    )
    print(table(args.n, decode_seconds, timings, args))


if __name__ == "__main__":
    main()
