"""Folder indexing: end-to-end ``build_index`` images/s against the image encoder alone, in one run.

Writes N JPEGs (quality 90): SynthScenes rendered at ``--size`` px, or with ``--photo`` camera-like photos
of ``--photo-size`` pixels (a sky-to-ground gradient, a dozen blurred objects, fine texture and sensor
noise; ``--scenes`` distinct scenes, each written with several EXIF orientations so that the files differ).
It exports a freshly initialised model with ``softclip.export.export_model`` (``--int8``: quantised) and
opens it with ``OnnxEncoder``. Three things are then timed on the same files: ``build_index(folder,
encoder, index_dir)`` into a new index folder (scan, read, hash, decode and preprocess in worker threads,
encode, manifest writes, FAISS file); ``encoder.encode_images`` alone on the already preprocessed arrays,
batch by batch as ``build_index`` feeds it; and ``decode_file`` (read, hash, decode, preprocess) alone on
one thread, at the reduced JPEG size ``build_index`` uses and at full size. The embeddings of the two
decodings are compared (cosine, mean and min). ``IndexReport.seconds`` is the part of ``build_index`` spent in
its decode-embed-record loop, without the folder scan, the lock and the FAISS file. Model-only and
end-to-end runs alternate over ``--repeats`` rounds so their ratio holds on a busy machine; the medians are
reported. Files are read from the page cache (they were just written), so "I/O" here is the cost of system
calls and copies, not of a disk.

    python benchmarks/index_folder.py --n 2000 --model tiny-vit --repeats 3
    python benchmarks/index_folder.py --photo --n 64 --model ViT-B-32 --int8 --threads 2 --workers 2
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
from PIL import Image, ImageDraw, ImageFilter

from softclip.export import OnnxEncoder, export_model
from softclip.index import build_index
from softclip.index.decode import DEFAULT_MAX_MEGAPIXELS, decode_file, default_workers, draft_side
from softclip.index.scan import scan_folder
from softclip.model import create_model
from softclip.training.render import render_scene
from softclip.training.scenes import SynthConfig
from softclip.training.synthetic import SynthScenes

JPEG_QUALITY = 90
EXIF_ORIENTATION = 0x0112
ORIENTATIONS = (1, 6, 3, 8)  # upright, and turned 90, 180, 270 degrees as cameras store them


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


def camera_like_photo(width: int, height: int, seed: int) -> Image.Image:
    """A ``width x height`` RGB scene with what decoding at reduced size can lose: edges, texture and noise."""
    rng = np.random.default_rng(seed)
    small_w, small_h = width // 8, height // 8
    rows = np.linspace(0, 1, small_h)[:, None, None]  # [h, 1, 1]
    sky, ground, horizon = rng.uniform(60, 230, 3), rng.uniform(30, 180, 3), rng.uniform(0.3, 0.7)
    backdrop = np.where(rows < horizon, sky * (1 - 0.4 * rows), ground * (0.7 + 0.5 * rows)) * np.ones((1, small_w, 1))
    image = Image.fromarray(backdrop.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        left, top = rng.uniform(0, small_w), rng.uniform(0, small_h)
        box = (left, top, left + rng.uniform(0.05, 0.3) * small_w, top + rng.uniform(0.05, 0.4) * small_h)
        colour = tuple(int(value) for value in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.0)).resize((width, height), Image.Resampling.BICUBIC)
    texture = Image.fromarray(rng.standard_normal((height // 4, width // 4), dtype=np.float32))
    texture = np.asarray(texture.resize((width, height), Image.Resampling.BILINEAR))[..., None]  # [H, W, 1]
    noise = rng.standard_normal((height, width, 3), dtype=np.float32)
    return Image.fromarray((np.asarray(image, np.float32) + 12 * texture + 4 * noise).clip(0, 255).astype(np.uint8))


def write_photos(folder: Path, count: int, size: tuple[int, int], scenes: int) -> list[Path]:
    """``count`` camera-like JPEGs of ``size`` under ``folder``: ``scenes`` scenes, in turn in each orientation."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [camera_like_photo(*size, seed) for seed in range(min(scenes, count))]
    paths = []
    for index in range(count):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ORIENTATIONS[(index // len(photos)) % len(ORIENTATIONS)]
        path = folder / f"photo_{index:06d}.jpg"
        photos[index % len(photos)].save(path, quality=JPEG_QUALITY, exif=exif)
        paths.append(path)
    return paths


def decode_serially(folder: Path, encoder: OnnxEncoder, min_side: int | None) -> tuple[np.ndarray, float]:
    """(pixels [N, 3, H, W], seconds): every file read, hashed, decoded and preprocessed on one thread."""
    files = scan_folder(folder).files
    started = time.perf_counter()
    decoded = [decode_file(file, encoder.preprocess, DEFAULT_MAX_MEGAPIXELS, min_side) for file in files]
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


@dataclass
class Decoding:
    """Serial decoding at the reduced size ``build_index`` uses and at full size, and how the results differ."""

    reduced_seconds: float
    full_seconds: float
    pixel_levels: float  # mean absolute difference of the model inputs, in 0-255 levels
    cosines: np.ndarray  # [N] between the embeddings of the two decodings of each file
    other_files_cosine: float  # mean cosine between embeddings of different files: what "far" is for this model


def embed_all(encoder: OnnxEncoder, pixels: np.ndarray, batch: int) -> np.ndarray:
    """[N, D] embeddings of ``pixels`` [N, 3, H, W], ``batch`` at a time."""
    return np.concatenate(
        [encoder.encode_images(pixels[start : start + batch]) for start in range(0, len(pixels), batch)]
    )


def compare_decodings(folder: Path, encoder: OnnxEncoder, batch: int) -> tuple[np.ndarray, Decoding]:
    """The reduced-size pixels [N, 3, H, W] and the ``Decoding`` comparison."""
    reduced, reduced_seconds = decode_serially(folder, encoder, draft_side(encoder))
    full, full_seconds = decode_serially(folder, encoder, None)
    levels = 255 * np.asarray(encoder.preprocess_config.std, dtype=np.float32)[:, None, None]  # undo normalising
    reduced_embeds, full_embeds = embed_all(encoder, reduced, batch), embed_all(encoder, full, batch)
    similarity = full_embeds @ full_embeds.T  # [N, N]
    others = similarity[~np.eye(len(full), dtype=bool)]
    return reduced, Decoding(
        reduced_seconds,
        full_seconds,
        pixel_levels=float((np.abs(reduced - full) * levels).mean()),
        cosines=(reduced_embeds * full_embeds).sum(axis=1),
        other_files_cosine=float(others.mean()) if others.size else float("nan"),
    )


def table(count: int, decoding: Decoding, timings: Timings, args: argparse.Namespace) -> str:
    """The markdown table: images/s, ms per image and time relative to the end-to-end run."""
    total, model = float(np.median(timings.end_to_end)), float(np.median(timings.model_only))
    rows = [
        (f"build_index end to end ({args.workers} decode threads)", total),
        ("build_index without scan, lock and FAISS file (IndexReport.seconds)", float(np.median(timings.embed_loop))),
        (f"encode_images only (preprocessed arrays, batch {args.batch})", model),
        (
            "decode_file only, JPEGs at reduced size (read, hash, decode, preprocess; 1 thread)",
            decoding.reduced_seconds,
        ),
        ("decode_file only, at full size (1 thread)", decoding.full_seconds),
    ]
    lines = ["| what | images/s | ms/image | time vs end to end |", "| --- | ---: | ---: | ---: |"]
    for name, seconds in rows:
        lines.append(f"| {name} | {count / seconds:,.1f} | {1000 * seconds / count:.2f} | {seconds / total:.0%} |")
    overhead = 1000 * (total - model) / count
    lines.append(f"\nOutside the model: {overhead:.2f} ms/image, {(total - model) / total:.0%} of the end-to-end time.")
    lines.append(f"End to end at {model / total:.0%} of the model's own throughput.")
    lines.append(
        f"Reduced-size vs full-size decoding: model input differs by {decoding.pixel_levels:.2f} of 255 levels on "
        f"average; embedding cosine mean {decoding.cosines.mean():.5f}, min {decoding.cosines.min():.5f} over "
        f"{count} images (between different files: mean {decoding.other_files_cosine:.5f})."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="JPEG files to index")
    parser.add_argument("--size", type=int, default=256, help="side of the generated SynthScenes images in pixels")
    parser.add_argument("--photo", action="store_true", help="camera-like photos instead of SynthScenes scenes")
    parser.add_argument("--photo-size", type=int, nargs=2, default=(4000, 3000), metavar=("W", "H"))
    parser.add_argument("--scenes", type=int, default=8, help="distinct camera-like scenes among the --n photos")
    parser.add_argument("--model", default="tiny-vit", help="preset to export (freshly initialised)")
    parser.add_argument("--checkpoint", help="a checkpoint folder or Hub id to export instead of a fresh --model")
    parser.add_argument("--int8", action="store_true", help="export with int8 weights")
    parser.add_argument("--batch", type=int, default=32, help="encoder batch, also build_index's batch_size")
    parser.add_argument("--workers", type=int, default=default_workers(), help="build_index decode threads")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of model-only and end-to-end runs")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.scenes < 1:
        parser.error("--n, --scenes and --repeats must be at least 1")
    return args


def write_images(folder: Path, args: argparse.Namespace) -> str:
    """Write the ``--n`` JPEGs; returns what they are, in words."""
    if args.photo:
        paths = write_photos(folder, args.n, tuple(args.photo_size), args.scenes)
        what = f"camera-like photos of {args.photo_size[0]}x{args.photo_size[1]} ({args.scenes} scenes)"
    else:
        paths = write_jpegs(folder, args.n, args.size)
        what = f"SynthScenes JPEGs at {args.size} px"
    return f"{args.n} {what}, {np.mean([path.stat().st_size for path in paths]) / 1000:,.1f} kB each"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        folder = work / "images"
        images = write_images(folder, args)
        source = args.checkpoint or create_model(args.model)
        export_dir = export_model(source, work / "export", int8=args.int8)
        encoder = OnnxEncoder(export_dir, threads=args.threads, batch_size=args.batch)
        pixels, decoding = compare_decodings(folder, encoder, args.batch)  # also warms ONNX Runtime up
        timings = alternate_runs(folder, encoder, pixels, work, args)
    model = args.checkpoint or f"{args.model} (untrained)"
    print(
        f"{images}; {model} {encoder.info['precision']} export (input {encoder.image_size} px) on ONNX Runtime, "
        f"{args.threads} threads; median of {args.repeats} rounds\n"
    )
    print(table(args.n, decoding, timings, args))
    parity = encoder.info["parity"]
    print(
        f"The export's embeddings vs the torch model's (export.json): mean cosine {parity['mean_cosine']:.5f}, "
        f"min {parity['min_cosine']:.5f}."
    )


if __name__ == "__main__":
    main()
