"""Index folders: incremental runs, renames, model mismatch, shards and merge, crash safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, ColourHistogramEncoder, write_image

from softclip.index import (
    ImageIndex,
    IndexBusyError,
    IndexMismatchError,
    build_index,
    faiss_index,
    find_shard_dirs,
    merge_shards,
    shard_dir,
)
from softclip.index.build import IndexWriter
from softclip.index.index_folder import FAISS_FILE, INDEX_JSON, MANIFEST_FILE, read_info
from softclip.index.manifest import Manifest

COLOUR_NAMES = sorted(COLOURS)


def make_folder(root: Path, count: int, size: int = 16) -> list[Path]:
    """``count`` distinct images in a few sub-folders."""
    return [
        write_image(root / f"album{i % 3}" / f"img{i:04d}.png", COLOUR_NAMES[i % len(COLOUR_NAMES)], seed=i, size=size)
        for i in range(count)
    ]


def manifest_state(index_dir: Path) -> dict[str, tuple]:
    """path -> (status, error, vector_id, content_hash, vector bytes) of every file in a manifest."""
    with Manifest(index_dir / MANIFEST_FILE) as manifest:
        records = manifest.records()
        state = {}
        for path, record in records.items():
            vector = manifest.vectors([record.vector_id])[0].tobytes() if record.vector_id is not None else None
            state[path] = (record.status, record.error, record.vector_id, record.content_hash, vector)
        return state


def assert_faiss_matches_manifest(index_dir: Path) -> None:
    """The FAISS file is current and holds exactly the manifest's vectors under the manifest's ids."""
    info = read_info(index_dir)
    with Manifest(index_dir / MANIFEST_FILE) as manifest:
        assert info.generation == manifest.generation
        ids = manifest.vector_ids()
        index = faiss_index.load_index(index_dir / FAISS_FILE)
        assert sorted(faiss_index.index_ids(index)) == sorted(ids)
        if len(ids):
            vectors = manifest.vectors(ids)
            _, found = faiss_index.search(index, vectors, 1)
            np.testing.assert_array_equal(manifest.vectors(found[:, 0]), vectors)  # each finds itself (or a copy)
        assert info.counts["ok"] == len(ids)


def test_first_run_indexes_everything(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 10)
    report = build_index(tmp_path / "photos", encoder, tmp_path / "idx", batch_size=4, workers=2)
    assert (report.added, report.total, report.embedded, report.errors) == (10, 10, 10, [])
    info = json.loads((tmp_path / "idx" / INDEX_JSON).read_text())
    assert info["model_id"] == encoder.model_id and info["embed_dim"] == 32 and info["factory"] == "Flat"
    assert info["counts"] == {"files": 10, "ok": 10, "errors": 0}
    assert_faiss_matches_manifest(tmp_path / "idx")


def test_incremental_run_handles_add_modify_delete_rename_touch_and_copy(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    a, b, c, d, e, _ = make_folder(photos, 6)
    build_index(photos, ColourHistogramEncoder(), tmp_path / "idx", workers=2)
    before = manifest_state(tmp_path / "idx")

    write_image(c, "black", seed=99)  # modified content
    os.utime(c, ns=(10**18, 10**18))
    b.unlink()  # deleted
    renamed = photos / "moved" / "renamed.png"
    renamed.parent.mkdir()
    a.rename(renamed)  # renamed into another folder
    os.utime(d, ns=(2 * 10**18, 2 * 10**18))  # touched only
    shutil.copy(e, photos / "copy_of_e.png")  # a copy: known content under a new path
    new = write_image(photos / "new.png", "cyan", seed=1234)  # new

    counting = ColourHistogramEncoder()
    report = build_index(photos, counting, tmp_path / "idx", workers=2)
    assert (report.added, report.updated, report.renamed, report.removed) == (2, 1, 1, 1)
    assert report.unchanged == 3 and report.errors == []  # the touched file and two untouched ones
    assert counting.images_encoded == report.embedded == 2  # only the modified and the new file
    after = manifest_state(tmp_path / "idx")
    assert set(after) == set(before) - {os.fspath(a), os.fspath(b)} | {
        os.fspath(renamed),
        os.fspath(photos / "copy_of_e.png"),
        os.fspath(new),
    }
    assert after[os.fspath(renamed)] == before[os.fspath(a)]  # same vector id, same vector: not re-embedded
    assert after[os.fspath(d)] == before[os.fspath(d)]
    assert after[os.fspath(photos / "copy_of_e.png")][4] == before[os.fspath(e)][4]
    assert after[os.fspath(c)][2] != before[os.fspath(c)][2]  # a changed file gets a new vector id
    assert_faiss_matches_manifest(tmp_path / "idx")


def test_a_rerun_without_changes_embeds_and_writes_nothing(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 5)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx")
    faiss_mtime = (tmp_path / "idx" / FAISS_FILE).stat().st_mtime_ns
    generation = read_info(tmp_path / "idx").generation
    counting = ColourHistogramEncoder()
    report = build_index(tmp_path / "photos", counting, tmp_path / "idx")
    assert (report.unchanged, report.embedded, counting.image_calls) == (5, 0, 0)
    assert read_info(tmp_path / "idx").generation == generation
    assert (tmp_path / "idx" / FAISS_FILE).stat().st_mtime_ns == faiss_mtime


def test_a_bad_file_that_is_fixed_gets_indexed(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    photos = tmp_path / "photos"
    make_folder(photos, 2)
    (photos / "later.png").write_bytes(b"not yet")
    first = build_index(photos, encoder, tmp_path / "idx")
    assert [Path(path).name for path, _ in first.errors] == ["later.png"]
    write_image(photos / "later.png", "red")
    second = build_index(photos, encoder, tmp_path / "idx")
    assert (second.errors, second.updated, second.total) == ([], 1, 3)


def test_a_different_model_is_refused_naming_both(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 3)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx")
    smaller = ColourHistogramEncoder(embed_dim=16)
    with pytest.raises(IndexMismatchError) as error:
        build_index(tmp_path / "photos", smaller, tmp_path / "idx")
    message = str(error.value)
    assert encoder.model_id in message and smaller.model_id in message and "32" in message and "16" in message
    other_weights = ColourHistogramEncoder(seed=1)
    with pytest.raises(IndexMismatchError, match=other_weights.model_id):
        ImageIndex.open(tmp_path / "idx", encoder=other_weights)


def test_changing_the_factory_rebuilds_faiss_without_embedding(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 20)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx")
    counting = ColourHistogramEncoder()
    report = build_index(tmp_path / "photos", counting, tmp_path / "idx", factory="HNSW8")
    assert counting.image_calls == 0 and report.unchanged == 20
    assert read_info(tmp_path / "idx").factory == "HNSW8"
    import faiss

    index = faiss_index.load_index(tmp_path / "idx" / FAISS_FILE)
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat)
    assert_faiss_matches_manifest(tmp_path / "idx")


def test_a_bad_factory_fails_before_embedding(tmp_path: Path) -> None:
    make_folder(tmp_path / "photos", 3)
    counting = ColourHistogramEncoder()
    with pytest.raises(ValueError, match="invalid FAISS factory string 'IVF,Nonsense'"):
        build_index(tmp_path / "photos", counting, tmp_path / "idx", factory="IVF,Nonsense")
    assert counting.image_calls == 0


def test_too_few_vectors_to_train_gives_a_clear_error_and_keeps_the_embeddings(tmp_path: Path) -> None:
    make_folder(tmp_path / "photos", 10)
    with pytest.raises(ValueError, match="cannot train this FAISS index on 10 vectors"):
        build_index(tmp_path / "photos", ColourHistogramEncoder(), tmp_path / "idx", factory="IVF64,Flat")
    counting = ColourHistogramEncoder()
    build_index(tmp_path / "photos", counting, tmp_path / "idx", factory="IVF2,Flat")
    assert counting.image_calls == 0  # the embeddings were committed before FAISS failed
    assert_faiss_matches_manifest(tmp_path / "idx")


def test_sharded_embed_and_merge_equals_a_single_run(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    make_folder(photos, 30)
    (photos / "broken.png").write_bytes(b"nope")
    build_index(photos, ColourHistogramEncoder(), tmp_path / "single")
    sharded = tmp_path / "sharded"
    sizes = [build_index(photos, ColourHistogramEncoder(), sharded, shard=(i, 3)).total for i in range(3)]
    assert sum(sizes) == 30 and min(sizes) > 0
    assert find_shard_dirs(sharded) == [shard_dir(sharded, (i, 3)) for i in range(3)]
    report = merge_shards(find_shard_dirs(sharded), sharded)
    assert (report.files, report.vectors, report.shards) == (31, 30, 3)
    assert [Path(path).name for path, _ in report.errors] == ["broken.png"]
    assert manifest_state(sharded) == manifest_state(tmp_path / "single")  # paths, ids, hashes, vector bytes
    assert_faiss_matches_manifest(sharded)


def test_merge_refuses_missing_or_unfinished_shards(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 6)
    for i in range(2):
        build_index(tmp_path / "photos", encoder, tmp_path / "idx", shard=(i, 3))
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        merge_shards(find_shard_dirs(tmp_path / "idx"), tmp_path / "idx")
    with pytest.raises(ValueError, match="0 <= i < n"):
        build_index(tmp_path / "photos", encoder, tmp_path / "idx", shard=(3, 3))


def test_sigkill_mid_run_leaves_a_usable_index_that_the_next_run_completes(tmp_path: Path) -> None:
    photos, index_dir = tmp_path / "photos", tmp_path / "idx"
    make_folder(photos, 240, size=8)
    worker = Path(__file__).with_name("index_crash_worker.py")
    process = subprocess.Popen([sys.executable, os.fspath(worker), os.fspath(photos), os.fspath(index_dir)])
    try:
        committed = _wait_for_first_commit(index_dir / MANIFEST_FILE, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert 0 < committed < 240

    with ImageIndex.open(index_dir, encoder=ColourHistogramEncoder()) as index:
        partial = len(index)  # rebuilt from the committed vectors
        assert partial >= committed
        assert index.search_text("red", k=3)[0].score > 0.5

    counting = ColourHistogramEncoder()
    report = build_index(photos, counting, index_dir, batch_size=32)
    assert report.unchanged == partial and counting.images_encoded == 240 - partial
    assert report.total == 240 and report.errors == []
    assert_faiss_matches_manifest(index_dir)
    build_index(photos, ColourHistogramEncoder(), tmp_path / "reference", batch_size=32)
    resumed, reference = manifest_state(index_dir), manifest_state(tmp_path / "reference")
    assert {path: state[4] for path, state in resumed.items()} == {path: state[4] for path, state in reference.items()}
    assert not list(index_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments_never_corrupt_the_index(tmp_path: Path) -> None:
    photos, index_dir = tmp_path / "photos", tmp_path / "idx"
    make_folder(photos, 240, size=8)
    worker = Path(__file__).with_name("index_crash_worker.py")
    rng = np.random.default_rng(0)
    for _ in range(6):
        process = subprocess.Popen([sys.executable, os.fspath(worker), os.fspath(photos), os.fspath(index_dir)])
        time.sleep(rng.uniform(0.5, 4.0))  # anywhere from start-up to the final FAISS write
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        if (index_dir / INDEX_JSON).exists():
            with ImageIndex.open(index_dir, encoder=ColourHistogramEncoder()) as index:
                with Manifest(index_dir / MANIFEST_FILE) as manifest:
                    assert len(index) == manifest.counts()["ok"]
    report = build_index(photos, ColourHistogramEncoder(), index_dir)
    assert report.total == 240 and report.errors == []
    assert_faiss_matches_manifest(index_dir)


def _wait_for_first_commit(manifest_path: Path, process: subprocess.Popen, timeout: float = 60) -> int:
    """Poll the manifest (read-only) until the worker has committed its first batch; return the count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the indexing worker ended before it could be killed"
        if manifest_path.exists():
            try:
                with sqlite3.connect(f"file:{manifest_path}?mode=ro", uri=True) as db:
                    count = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0  # tables not created yet
            if count:
                return count
        time.sleep(0.01)
    raise AssertionError("the indexing worker committed nothing in time")


def test_a_second_writer_is_refused_while_one_is_at_work(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 2)
    with IndexWriter.open(tmp_path / "idx", encoder):
        with pytest.raises(IndexBusyError, match="another process is updating the index"):
            build_index(tmp_path / "photos", encoder, tmp_path / "idx")
    assert build_index(tmp_path / "photos", encoder, tmp_path / "idx").total == 2  # the lock is released


def test_importing_softclip_index_loads_neither_faiss_nor_onnxruntime() -> None:
    code = "import sys, softclip.index; print(sorted({'faiss', 'onnxruntime'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_local_run_imports_neither_ray_nor_pyarrow(tmp_path: Path) -> None:
    make_folder(tmp_path / "photos", 3)
    code = (
        "import sys; sys.path.insert(0, 'tests'); from conftest import ColourHistogramEncoder; "
        "from softclip.index import build_index; import softclip.index.ray_index; "
        f"build_index({str(tmp_path / 'photos')!r}, ColourHistogramEncoder(), {str(tmp_path / 'idx')!r}); "
        "print(sorted({'ray', 'pyarrow'} & set(sys.modules)))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
