"""Image-tower throughput: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, on the same model and batch.

For each model (freshly initialised: speed does not depend on the weights' values) it exports the image
tower at the exporter's opset and at each ``--compare-opsets`` opset (fp32 only, to show what the opset
changes), quantises the default one to int8, and times each runtime on random pixels. The runtimes take
turns, one timing each per round, over ``--rounds`` rounds, and the median is reported, so that a machine
shared with other jobs slows all of them alike. Achieved GFLOP/s counts the image tower's FLOPs with torch's
FlopCounterMode and is set against the fp32 matrix-multiply peak (2048^3 ``torch.matmul``) measured in the
same run on the same threads. "vs torch" is the ratio of images/s to torch eager's; the last column is the
largest absolute difference of the embeddings from torch's on the timed batch.

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


@dataclass
class Runtime:
    """One way of embedding the timed batch: a name and a call returning [B, D] embeddings."""

    name: str
    embed: Callable[[], np.ndarray]


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


def export_image_graphs(model: SoftCLIP, folder: Path, compare_opsets: list[int]) -> dict[str, Path]:
    """The image tower as ONNX graphs, by runtime name: fp32 at each opset, int8 at the exporter's default."""
    size = model.config.vision.image_size
    example = torch.randn(2, 3, size, size)
    paths = {}
    for opset in [DEFAULT_OPSET, *compare_opsets]:
        path = paths[f"onnxruntime fp32, opset {opset}"] = folder / f"image_fp32_opset{opset}.onnx"
        export_tower(ImageTower(model), example, (IMAGE_INPUT, IMAGE_OUTPUT), path, opset)
    int8 = paths[f"onnxruntime int8, opset {DEFAULT_OPSET}"] = folder / "image_int8.onnx"
    shutil.copyfile(folder / f"image_fp32_opset{DEFAULT_OPSET}.onnx", int8)
    quantize_graph_int8(int8)
    return paths


def runtimes(model: SoftCLIP, pixels: torch.Tensor, graphs: dict[str, Path], threads: int) -> list[Runtime]:
    """Torch eager and one ONNX Runtime session per graph, each embedding the same ``pixels``."""

    def torch_embed() -> np.ndarray:
        with torch.no_grad():
            return model.encode_image(pixels).numpy()

    found = [Runtime("torch eager fp32", torch_embed)]
    feed = {IMAGE_INPUT: pixels.numpy()}
    for name, path in graphs.items():
        session = open_session(path, [CPU_PROVIDER], threads)
        found.append(Runtime(name, lambda session=session: session.run(None, feed)[0]))
    return found


def time_runtimes(candidates: list[Runtime], seconds: float, rounds: int) -> list[Timing]:
    """A ``Timing`` per runtime: the median over ``rounds`` rounds in which each runtime is timed in turn."""
    expected = candidates[0].embed()
    differences = [float(np.abs(runtime.embed() - expected).max()) for runtime in candidates]
    per_round = [[time_call(runtime.embed, seconds) for runtime in candidates] for _ in range(rounds)]
    medians = np.median(np.asarray(per_round), axis=0)
    return [Timing(run.name, float(s), diff) for run, s, diff in zip(candidates, medians, differences)]


def benchmark_model(name: str, args: argparse.Namespace, peak: float) -> list[str]:
    """Table rows for one model preset."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = model.config.vision.image_size
    pixels = torch.randn(args.batch, 3, size, size)
    flops = image_tower_flops(model, pixels[:1])
    with tempfile.TemporaryDirectory() as folder:
        graphs = export_image_graphs(model, Path(folder), args.compare_opsets)
        timings = time_runtimes(runtimes(model, pixels, graphs, args.threads), args.seconds, args.rounds)
    rows = []
    for timing in timings:
        images_per_second = args.batch / timing.seconds_per_batch
        gflops = flops * images_per_second / 1e9
        rows.append(
            f"| {name} | {flops / 1e9:.3f} | {timing.runtime} | {args.batch} | {images_per_second:,.1f} | "
            f"{timings[0].seconds_per_batch / timing.seconds_per_batch:.2f}x | {1000 * timing.seconds_per_batch:.1f} | "
            f"{gflops:.1f} | {100 * gflops / peak:.0f}% | {timing.max_abs_diff:.1e} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["tiny-vit"], help="preset names, e.g. tiny-vit ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ORT threads")
    parser.add_argument("--seconds", type=float, default=3.0, help="least time spent timing each runtime per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which every runtime is timed in turn")
    parser.add_argument(
        "--compare-opsets", type=int, nargs="*", default=[18], help="also time fp32 graphs exported at these opsets"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.seconds)
    print(f"fp32 matmul peak ({MATMUL_SIZE}^3, {args.threads} threads): {peak:.1f} GFLOP/s\n")
    print(
        "| model | GFLOP/image | runtime | batch | images/s | vs torch | ms/batch | GFLOP/s | of peak | max abs diff |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.model:
        for row in benchmark_model(name, args, peak):
            print(row, flush=True)


if __name__ == "__main__":
    main()
