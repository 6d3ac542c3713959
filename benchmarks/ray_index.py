"""Indexing throughput: the single-machine path against Ray, same folder, same export, in one run.

Writes N SynthScenes JPEGs (``--size`` px), exports a freshly initialised model (``--model``) and indexes the
folder into new index folders, alternating ``build_index`` (decoding threads + one ONNX Runtime session in
this process) and ``build_index_on_ray`` (Ray Data tasks and an actor pool of encoders on a local
``ray.init(num_cpus=--cpus)``) for ``--repeats`` rounds; medians are reported, with Ray's start-up timed
apart (it is paid once per process, not per run). Both indexes are checked to hold the same files with
vectors within 1e-5, so the two rates are for the same work.

    python benchmarks/ray_index.py --n 1000 --model tiny-vit --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from softclip.export import OnnxEncoder, export_model
from softclip.index import build_index
from softclip.index.index_folder import MANIFEST_FILE
from softclip.index.manifest import Manifest
from softclip.index.ray_index import build_index_on_ray
from softclip.model import create_model
from softclip.training.synthetic import SynthConfig, SynthScenes, render_scene

JPEG_QUALITY = 90


def write_jpegs(folder: Path, count: int, size: int) -> None:
    """``count`` SynthScenes scenes rendered at ``size`` px as JPEG files under ``folder``."""
    scenes = SynthScenes(SynthConfig(image_size=size), length=count)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        render_scene(scenes.scene(index), size).save(folder / f"scene_{index:06d}.jpg", quality=JPEG_QUALITY)


def vectors_by_path(index_dir: Path) -> dict[str, np.ndarray]:
    with Manifest(index_dir / MANIFEST_FILE) as manifest:
        records = manifest.records()
        ids = [record.vector_id for record in records.values()]
        return dict(zip(records, manifest.vectors(ids)))


def largest_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between the two indexes' vectors of each file (same files asserted)."""
    left, right = vectors_by_path(a), vectors_by_path(b)
    assert sorted(left) == sorted(right), "the two indexes list different files"
    return max(float(np.abs(left[path] - right[path]).max()) for path in left)


def timed(run, *args, **kwargs) -> float:
    """Seconds that ``run(*args, **kwargs)`` takes."""
    started = time.perf_counter()
    run(*args, **kwargs)
    return time.perf_counter() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images")
    parser.add_argument("--size", type=int, default=256, help="image side in px")
    parser.add_argument("--model", default="tiny-vit", help="preset of the freshly initialised model")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-encoders", type=int, default=None, help="Ray encoder actors (default: softclip's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ray

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        write_jpegs(root / "photos", args.n, args.size)
        torch.manual_seed(0)
        export_dir = export_model(create_model(args.model), root / "export")
        ray_start = timed(ray.init, num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        local_runs, ray_runs = [], []
        ray_options = {"batch_size": args.batch_size, "max_encoders": args.max_encoders}
        for round_ in range(args.repeats):
            local_dir, ray_dir = root / f"local{round_}", root / f"ray{round_}"
            encoder = OnnxEncoder(export_dir)
            local_runs.append(timed(build_index, root / "photos", encoder, local_dir, batch_size=args.batch_size))
            ray_runs.append(timed(build_index_on_ray, root / "photos", export_dir, ray_dir, **ray_options))
            difference = largest_difference(local_dir, ray_dir)
            shutil.rmtree(local_dir)
            shutil.rmtree(ray_dir)
        ray.shutdown()
    local, on_ray = statistics.median(local_runs), statistics.median(ray_runs)
    print(
        f"{args.n} JPEGs of {args.size} px, {args.model} export (untrained), batch {args.batch_size}, "
        f"median of {args.repeats}; Ray: local instance with {args.cpus} CPUs, started in {ray_start:.1f} s, "
        f"encoder actors at most {args.max_encoders or 'the default'}\n"
    )
    print("| path | seconds | images/s | vs single machine |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| build_index (single machine) | {local:.1f} | {args.n / local:.1f} | 1.00x |")
    print(f"| build_index_on_ray | {on_ray:.1f} | {args.n / on_ray:.1f} | {local / on_ray:.2f}x |")
    print(f"\nlargest difference between the two indexes' vectors: {difference:.2e}")


if __name__ == "__main__":
    main()
