"""Image-tower throughput: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, on the same model and batch.

For each model (freshly initialised: speed does not depend on the weights' values) it exports the image
tower, quantises it, and times each runtime on random pixels. Achieved GFLOP/s counts the image tower's
FLOPs with torch's FlopCounterMode and is set against the fp32 matrix-multiply peak (2048^3
``torch.matmul``) measured in the same run on the same threads. The last column is the largest absolute
difference of the embeddings from torch's on the timed batch.

    python benchmarks/embed.py --model tiny-vit ViT-B-32 --batch 32 --threads 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from softclip.export.exporter import DEFAULT_OPSET, ImageTower, export_tower, quantize_graph_int8
from softclip.export.folder import IMAGE_INPUT, IMAGE_OUTPUT
from softclip.export.onnx_encoder import CPU_PROVIDER, open_session
from softclip.model import SoftCLIP, create_model

MATMUL_SIZE = 2048


@dataclass
class Timing:
    runtime: str
    seconds_per_batch: float
    max_abs_diff: float


def time_call(run: Callable[[], object], min_seconds: float, min_runs: int = 3) -> float:
    """Median seconds per call of ``run`` over at least ``min_runs`` calls and ``min_seconds``, after one warm-up."""
    run()
    durations: list[float] = []
    while len(durations) < min_runs or sum(durations) < min_seconds:
        start = time.perf_counter()
        run()
        durations.append(time.perf_counter() - start)
    return float(np.median(durations))


def matmul_peak_gflops(min_seconds: float) -> float:
    """GFLOP/s of a 2048^3 float32 ``torch.matmul`` on the current torch threads."""
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    seconds = time_call(lambda: torch.matmul(a, b), min_seconds)
    return 2 * MATMUL_SIZE**3 / seconds / 1e9


def image_tower_flops(model: SoftCLIP, pixels: torch.Tensor) -> float:
    """FLOPs of one image through the image tower (matrix products, convolutions and attention)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.encode_image(pixels)
    return counter.get_total_flops() / len(pixels)


def export_image_graphs(model: SoftCLIP, folder: Path) -> dict[str, Path]:
    """The image tower as an fp32 graph and its int8 quantisation: {"fp32": path, "int8": path}."""
    size = model.config.vision.image_size
    paths = {precision: folder / f"image_{precision}.onnx" for precision in ("fp32", "int8")}
    example = torch.randn(2, 3, size, size)
    export_tower(ImageTower(model), example, (IMAGE_INPUT, IMAGE_OUTPUT), paths["fp32"], DEFAULT_OPSET)
    shutil.copyfile(paths["fp32"], paths["int8"])
    quantize_graph_int8(paths["int8"])
    return paths


def time_runtimes(
    model: SoftCLIP, pixels: torch.Tensor, graphs: dict[str, Path], threads: int, seconds: float
) -> list[Timing]:
    """A ``Timing`` for torch eager and for each ONNX graph, on the same pixels."""

    def torch_embed() -> np.ndarray:
        with torch.no_grad():
            return model.encode_image(pixels).numpy()

    expected = torch_embed()
    timings = [Timing("torch eager fp32", time_call(torch_embed, seconds), 0.0)]
    for precision, path in graphs.items():
        session = open_session(path, [CPU_PROVIDER], threads)
        feed = {IMAGE_INPUT: pixels.numpy()}
        measured = session.run(None, feed)[0]
        seconds_per_batch = time_call(lambda session=session, feed=feed: session.run(None, feed), seconds)
        timings.append(Timing(f"onnxruntime {precision}", seconds_per_batch, float(np.abs(measured - expected).max())))
    return timings


def benchmark_model(name: str, batch: int, threads: int, seconds: float, peak: float) -> list[str]:
    """Table rows for one model preset."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = model.config.vision.image_size
    pixels = torch.randn(batch, 3, size, size)
    flops = image_tower_flops(model, pixels[:1])
    with tempfile.TemporaryDirectory() as folder:
        timings = time_runtimes(model, pixels, export_image_graphs(model, Path(folder)), threads, seconds)
    rows = []
    for timing in timings:
        images_per_second = batch / timing.seconds_per_batch
        gflops = flops * images_per_second / 1e9
        rows.append(
            f"| {name} | {flops / 1e9:.3f} | {timing.runtime} | {batch} | {images_per_second:,.1f} | "
            f"{1000 * timing.seconds_per_batch:.1f} | {gflops:.1f} | {100 * gflops / peak:.0f}% | "
            f"{timing.max_abs_diff:.1e} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["tiny-vit"], help="preset names, e.g. tiny-vit ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ORT threads")
    parser.add_argument("--seconds", type=float, default=3.0, help="least time spent timing each runtime")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.seconds)
    print(f"fp32 matmul peak ({MATMUL_SIZE}^3, {args.threads} threads): {peak:.1f} GFLOP/s\n")
    print("| model | GFLOP/image | runtime | batch | images/s | ms/batch | GFLOP/s | of peak | max abs diff |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.model:
        for row in benchmark_model(name, args.batch, args.threads, args.seconds, peak):
            print(row, flush=True)


if __name__ == "__main__":
    main()
