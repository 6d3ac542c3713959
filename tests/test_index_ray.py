"""Indexing on a local Ray instance: the same index as the local path, bad files reported, a killed worker retried.

One ``ray.init(num_cpus=2)`` serves the whole module (Ray takes seconds to start).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from softclip import create_model  # noqa: E402
from softclip.cli import main  # noqa: E402
from softclip.export import OnnxEncoder, export_model  # noqa: E402
from softclip.index import build_index  # noqa: E402
from softclip.index.index_folder import MANIFEST_FILE  # noqa: E402
from softclip.index.manifest import Manifest  # noqa: E402
from softclip.index.ray_index import build_index_on_ray  # noqa: E402
from softclip.training.synthetic import SynthConfig, SynthScenes  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # Ray workers import this test module's classes by value: it is not on their import path.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_model(create_model("tiny-vit"), tmp_path_factory.mktemp("export") / "tiny-vit")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    data = SynthScenes(SynthConfig(split="test"), length=40)
    for i in range(40):
        sub = folder / f"album{i % 3}"
        sub.mkdir(exist_ok=True)
        data[i].image.save(sub / f"scene{i:02d}.jpg" if i % 2 else sub / f"scene{i:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.png").write_text("not an image at all")
    return folder


@pytest.fixture(scope="module")
def local_index(export_dir: Path, photos: Path, tmp_path_factory) -> Path:
    index_dir = tmp_path_factory.mktemp("local") / "photos.idx"
    build_index(photos, OnnxEncoder(export_dir), index_dir, progress=False)
    return index_dir


def manifest_rows(index_dir: Path, root: str = "") -> dict[str, tuple]:
    """relative path -> (status, error, content hash, embedding or None) of every file of a manifest."""
    with Manifest(index_dir / MANIFEST_FILE) as manifest:
        rows = {}
        for path, record in manifest.records().items():
            vector = manifest.vectors([record.vector_id])[0] if record.vector_id is not None else None
            rows[path[len(root) :]] = (record.status, record.error, record.content_hash, vector)
        return rows


def assert_same_index(ray_index: Path, local_index: Path, ray_root: str = "") -> None:
    """Same files, statuses, reasons and hashes; embeddings within 1e-5."""
    on_ray, local = manifest_rows(ray_index, ray_root), manifest_rows(local_index)
    assert sorted(on_ray) == sorted(local)
    for path, (status, error, content, vector) in local.items():
        assert on_ray[path][:3] == (status, error, content), path
        if vector is not None:
            np.testing.assert_allclose(on_ray[path][3], vector, atol=1e-5)


def test_ray_builds_the_same_index_as_the_local_path_and_reruns_incrementally(
    export_dir: Path, photos: Path, local_index: Path, tmp_path: Path
) -> None:
    report = build_index_on_ray(photos, export_dir, tmp_path / "ray.idx", batch_size=8, progress=False)
    assert (report.added, report.embedded, report.total) == (40, 40, 40)
    assert sorted(os.path.basename(path) for path, _ in report.errors) == ["broken.jpg", "notes.png"]
    assert_same_index(tmp_path / "ray.idx", local_index)
    again = build_index_on_ray(photos, export_dir, tmp_path / "ray.idx", progress=False)
    assert (again.embedded, again.unchanged, again.total) == (0, 40, 40)  # the two bad files are tried again


def test_the_command_line_indexes_a_filesystem_uri_through_pyarrow(
    export_dir: Path, photos: Path, local_index: Path, tmp_path: Path
) -> None:
    uri = photos.as_uri()  # file:///...: the same code path as s3:// or gs://
    command = ["index", uri, "--model", str(export_dir), "--index", str(tmp_path / "uri.idx"), "--engine", "ray"]
    assert main(command + ["--batch-size", "16"]) == 0
    assert_same_index(tmp_path / "uri.idx", local_index, ray_root="file://")


class CrashOnceEncoder:
    """An ONNX encoder whose process dies (``os._exit``) on its second batch while the flag file exists."""

    def __init__(self, export_dir: str, flag: Path) -> None:
        self.inner = OnnxEncoder(export_dir)
        self.flag = flag
        self.batches = 0
        self.embed_dim, self.model_id = self.inner.embed_dim, self.inner.model_id
        self.preprocess_config, self.folder = self.inner.preprocess_config, self.inner.folder

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        self.batches += 1
        if self.batches == 2:
            try:
                os.unlink(self.flag)  # only one worker can take the flag: exactly one crash
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return self.inner.encode_images(pixels)


def make_crashing_encoder(flag: Path):
    return lambda export_dir: CrashOnceEncoder(export_dir, flag)


def test_a_worker_killed_mid_run_is_retried_and_the_index_is_complete(
    export_dir: Path, photos: Path, local_index: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "crash-once"
    flag.touch()
    report = build_index_on_ray(
        photos, export_dir, tmp_path / "ray.idx", batch_size=8, progress=False, make_encoder=make_crashing_encoder(flag)
    )
    assert not flag.exists()  # a worker did die
    assert (report.total, len(report.errors)) == (40, 2)
    assert_same_index(tmp_path / "ray.idx", local_index)
