"""Indexes larger than memory: IVF-PQ with on-disk inverted lists, exact re-ranking, folder integration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, ColourHistogramEncoder, write_image

from softclip.index import ImageIndex, build_index, faiss_index
from softclip.index import ondisk as ondisk_module
from softclip.index.index_folder import FAISS_FILE, MANIFEST_FILE, read_info
from softclip.index.manifest import Manifest
from softclip.index.ondisk import OnDiskIndex, build_ondisk, ondisk_factory

COLOUR_NAMES = sorted(COLOURS)


def clustered_unit_vectors(count: int, dim: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Vectors around a few shared centres, as embeddings of a photo collection are."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, clusters, count)] + rng.standard_normal((count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def chunks_of(ids: np.ndarray, vectors: np.ndarray, size: int):
    for start in range(0, len(ids), size):
        yield ids[start : start + size], vectors[start : start + size]


def make_folder(root: Path, count: int) -> list[Path]:
    return [write_image(root / f"img{i:04d}.png", COLOUR_NAMES[i % len(COLOUR_NAMES)], seed=i) for i in range(count)]


def test_the_factory_fits_the_collection_size() -> None:
    assert ondisk_factory(1_000_000, 512) == "IVF4096,PQ64x8np"
    assert ondisk_factory(50, 32) == "IVF1,PQ32x1np"  # too few vectors for more lists or longer codes
    assert ondisk_factory(20_000, 48).startswith("IVF512,PQ48x8")


def test_on_disk_search_with_reranking_reaches_the_recall_of_exact_search(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ondisk_module, "PART_ROWS", 3000)  # several parts, merged into one lists file
    database, queries = clustered_unit_vectors(12_000, 64, seed=1), clustered_unit_vectors(50, 64, seed=2)
    ids = np.arange(5, 5 + 2 * len(database), 2, dtype=np.int64)  # ids that are not row numbers
    index = build_ondisk(tmp_path, "IVF64,PQ16x8np", database[::4], chunks_of(ids, database, 2500), len(ids))
    files = {path.name: path.stat().st_size for path in index.folder.iterdir()}
    assert set(files) == {"index.faiss", "lists.ivfdata", "vectors.npy", "ids.npy"}  # the parts are merged
    assert files["lists.ivfdata"] == len(ids) * (16 + 8)  # PQ codes and ids, packed
    _, found = faiss_index.search(OnDiskIndex.open(index.folder), queries, 10)
    exact = ids[np.argsort(-(queries @ database.T), axis=1)[:, :10]]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.95
    scores, _ = index.search(queries[:1], 3)
    np.testing.assert_allclose(scores[0], np.sort(queries[0] @ database.T)[::-1][:3], rtol=1e-5)  # exact scores


def test_a_collection_above_the_threshold_is_searched_on_disk(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 40)
    build_index(tmp_path / "photos", encoder, tmp_path / "flat.idx", progress=False)
    report = build_index(tmp_path / "photos", encoder, tmp_path / "disk.idx", on_disk_above=20, progress=False)
    assert report.total == 40
    info = read_info(tmp_path / "disk.idx")
    assert info.on_disk and info.on_disk_above == 20 and not (tmp_path / "disk.idx" / FAISS_FILE).exists()
    flat, disk = ImageIndex.open(tmp_path / "flat.idx", encoder), ImageIndex.open(tmp_path / "disk.idx", encoder)
    with flat, disk:
        assert len(disk) == 40
        for query in ("red", "blue + 2:green - black", "yellow"):  # weighted queries too
            on_disk, exact = disk.search_text(query, k=5), flat.search_text(query, k=5)
            assert [hit.path for hit in on_disk] == [hit.path for hit in exact]
            np.testing.assert_allclose([hit.score for hit in on_disk], [hit.score for hit in exact], rtol=1e-5)


def test_reruns_rebuild_the_on_disk_index_and_drop_the_old_one(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    paths = make_folder(tmp_path / "photos", 30)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx", on_disk_above=10, progress=False)
    first = read_info(tmp_path / "idx").on_disk
    paths[0].unlink()
    write_image(tmp_path / "photos" / "new.png", "cyan", seed=99)
    report = build_index(tmp_path / "photos", encoder, tmp_path / "idx", progress=False)  # threshold remembered
    assert (report.added, report.removed, report.total) == (1, 1, 30)
    info = read_info(tmp_path / "idx")
    assert info.on_disk != first and [p.name for p in (tmp_path / "idx").glob("ondisk-*")] == [info.on_disk]
    with ImageIndex.open(tmp_path / "idx", encoder) as index:
        hits = index.search_text("cyan", k=30)
        assert str(tmp_path / "photos" / "new.png") in [hit.path for hit in hits]
        assert str(paths[0]) not in [hit.path for hit in hits]


def test_a_crash_while_building_keeps_the_previous_index_usable(
    tmp_path: Path, encoder: ColourHistogramEncoder, monkeypatch
) -> None:
    make_folder(tmp_path / "photos", 30)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx", on_disk_above=10, progress=False)
    before = read_info(tmp_path / "idx").on_disk
    write_image(tmp_path / "photos" / "new.png", "cyan", seed=99)

    def killed(*args: object) -> None:  # the process dies after the part files were written
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ondisk_module, "_merge_parts", killed)
        with pytest.raises(KeyboardInterrupt):
            build_index(tmp_path / "photos", encoder, tmp_path / "idx", progress=False)
    assert read_info(tmp_path / "idx").on_disk == before
    with ImageIndex.open(tmp_path / "idx", encoder) as index:
        assert len(index) == 30 and index.search_text("red", k=3)  # the last complete index still answers
    report = build_index(tmp_path / "photos", encoder, tmp_path / "idx", progress=False)
    assert report.embedded == 0 and report.total == 31  # the new file's vector was committed before the crash
    assert len(list((tmp_path / "idx").glob("ondisk-*"))) == 1


def test_a_moved_index_folder_still_finds_its_lists(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 30)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx", on_disk_above=10, progress=False)
    with ImageIndex.open(tmp_path / "idx", encoder) as index:
        expected = index.search_text("green", k=5)
    shutil.move(tmp_path / "idx", tmp_path / "moved")
    with ImageIndex.open(tmp_path / "moved", encoder) as index:
        assert [hit.path for hit in index.search_text("green", k=5)] == [hit.path for hit in expected]


def test_faiss_notes_never_reach_standard_output(tmp_path: Path, encoder: ColourHistogramEncoder, capfd) -> None:
    make_folder(tmp_path / "photos", 30)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx", on_disk_above=10, progress=False)
    shutil.move(tmp_path / "idx", tmp_path / "moved")  # opening a moved on-disk index makes FAISS print a note
    with ImageIndex.open(tmp_path / "moved", encoder) as index:
        index.search_text("green", k=5)
    captured = capfd.readouterr()
    assert captured.out == ""  # `softclip search --json` prints nothing but its JSON
    assert "IO_FLAG_ONDISK_SAME_DIR" in captured.err  # the note is kept, on stderr


def test_below_the_threshold_the_index_stays_in_memory(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 12)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx", on_disk_above=20, progress=False)
    info = read_info(tmp_path / "idx")
    assert info.on_disk is None and (tmp_path / "idx" / FAISS_FILE).is_file()
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["on_disk_above"] == 20
    with Manifest(tmp_path / "idx" / MANIFEST_FILE) as manifest:
        assert info.generation == manifest.generation


def test_a_negative_threshold_is_refused_before_any_work(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    make_folder(tmp_path / "photos", 3)
    with pytest.raises(ValueError, match="on_disk_above must be 0 or more"):
        build_index(tmp_path / "photos", encoder, tmp_path / "idx", on_disk_above=-1, progress=False)
    assert encoder.images_encoded == 0
