"""Real data readers: CSV/TSV and WebDataset shards (streamed and indexed) yield the SynthScenes sample type;
corrupt samples are skipped and counted, never fatal. (VinVL: test_vinvl.py.)"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from softclip.training.csv_dataset import CsvDataset
from softclip.training.data import SkipLog, UnreadableSample, pad_rois
from softclip.training.scenes import SynthConfig
from softclip.training.shards import IndexedShards, WebDatasetShards, expand_shards
from softclip.training.synthetic import SynthScenes, write_split

CONFIG = SynthConfig(image_size=32)


def png_bytes(colour: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_table(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def assert_sample_shape(sample, max_rois: int = 10) -> None:
    assert sample.image.mode == "RGB"
    assert sample.rois.shape == (max_rois, 2052) and sample.rois.dtype == np.float32
    assert sample.roi_mask.shape == (max_rois,) and sample.roi_mask.dtype == np.bool_
    assert not sample.rois[~sample.roi_mask].any()
    assert isinstance(sample.caption, str) and sample.caption and isinstance(sample.tags, str)


# --------------------------------------------------------------------------------------------------- CSV


def test_csv_reads_what_write_split_writes(tmp_path: Path) -> None:
    table = CsvDataset(write_split(tmp_path, 6, seed=4, config=CONFIG))
    expected = SynthScenes(CONFIG, length=6, seed=4)
    assert len(table) == 6
    for i in range(6):
        sample, truth = table[i], expected[i]
        assert_sample_shape(sample)
        assert (sample.caption, sample.tags, sample.skipped) == (truth.caption, truth.tags, ())
        np.testing.assert_array_equal(sample.roi_mask, truth.roi_mask)
        np.testing.assert_array_equal(sample.rois, truth.rois)
        assert np.abs(np.asarray(sample.image, float) - np.asarray(truth.image, float)).mean() < 4  # JPEG
    assert table.texts(2) == [expected[2].caption, expected[2].tags]


def test_tsv_with_its_own_columns_absolute_paths_and_no_regions(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes((10, 200, 10)))
    absolute = tmp_path / "b.png"
    absolute.write_bytes(png_bytes((10, 10, 200)))
    rows = [["images/a.png", "a green square"], [str(absolute), 'a "blue", square']]
    table = CsvDataset(
        write_table(tmp_path / "pairs.tsv", ["image", "title"], rows, "\t"),
        image_column="image",
        caption_column="title",
    )
    first, second = table[0], table[1]
    assert first.image.getpixel((3, 3)) == (10, 200, 10) and second.image.getpixel((3, 3)) == (10, 10, 200)
    assert second.caption == 'a "blue", square' and first.tags == "" and not first.roi_mask.any()
    semicolons = write_table(tmp_path / "pairs.csv", ["image", "title"], rows, ";")
    assert CsvDataset(semicolons, image_column="image", caption_column="title", separator=";")[1].caption == rows[1][1]


def test_csv_roi_files_npz_and_truncation_to_max_rois(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(png_bytes())
    regions = np.random.default_rng(0).standard_normal((12, 2052)).astype(np.float32)
    np.savez(tmp_path / "x.npz", rois=regions)
    np.save(tmp_path / "y.npy", regions[:3])
    header = ["path", "text", "features", "labels"]
    rows = [
        ["x.png", "twelve", "x.npz", "red circle"],
        ["x.png", "three", "y.npy", "a, b, c"],
        ["x.png", "none", "", ""],
    ]
    table = CsvDataset(
        write_table(tmp_path / "t.csv", header, rows),
        image_column="path",
        caption_column="text",
        roi_column="features",
        tags_column="labels",
        max_rois=10,
    )
    many, few, none = table[0], table[1], table[2]
    np.testing.assert_array_equal(many.rois, regions[:10])
    assert many.roi_mask.all() and few.roi_mask.sum() == 3 and not none.roi_mask.any()
    assert few.tags == "a, b, c" and table.skipped.total == 0


def test_csv_missing_columns_are_named(tmp_path: Path) -> None:
    path = write_table(tmp_path / "t.csv", ["filepath", "title"], [["a.png", "x"]])
    with pytest.raises(ValueError, match=r"no column 'caption'.*\['filepath', 'title'\]"):
        CsvDataset(path)
    with pytest.raises(ValueError, match="no column 'rois'"):
        CsvDataset(path, caption_column="title", roi_column="rois")
    with pytest.raises(FileNotFoundError, match="table not found"):
        CsvDataset(tmp_path / "absent.csv")


def test_corrupt_csv_rows_are_skipped_counted_and_reported(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(png_bytes())
    (tmp_path / "truncated.png").write_bytes(png_bytes()[:40])
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 7), np.float32))
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    rows = [
        ["good.png", "fine", ""],
        ["missing.png", "no file", ""],
        ["truncated.png", "cut short", ""],
        ["text.jpg", "not an image", ""],
        ["good.png", "   ", ""],
        ["good.png", "bad regions", "wrong.npy"],
        ["good.png", "garbage regions", "garbage.npy"],
        ["good.png", "regions gone", "gone.npy"],
        ["good.png", "also fine", ""],
    ]
    table = CsvDataset(write_table(tmp_path / "t.csv", ["filepath", "caption", "roi_path"], rows))
    stand_in = table[1]
    assert stand_in.caption == "also fine"  # rows 1-7 are unreadable: the next readable one stands in
    assert stand_in.skipped == (
        "missing image",
        "unreadable image",
        "unreadable image",
        "empty caption",
        "bad roi features",
        "unreadable roi file",
        "missing roi file",
    )
    assert table.skipped.counts == {
        "missing image": 1,
        "unreadable image": 2,
        "empty caption": 1,
        "bad roi features": 1,
        "unreadable roi file": 1,
        "missing roi file": 1,
    }
    report = table.skipped.report()
    assert report.startswith("skipped 7 samples: 2 unreadable image") and "missing.png" in report
    main_process = SkipLog()
    main_process.add_sample(stand_in)
    assert main_process.total == 7
    assert table[0].caption == "fine" and table[0].skipped == ()


def test_a_table_of_only_unreadable_rows_raises(tmp_path: Path) -> None:
    table = CsvDataset(write_table(tmp_path / "t.csv", ["filepath", "caption"], [["a.png", "x"], ["b.png", "y"]]))
    with pytest.raises(RuntimeError, match="2 unreadable samples in a row.*missing image"):
        table[0]
    with pytest.raises(IndexError):
        table[2]


def test_pad_rois_rejects_wrong_shapes_and_non_finite_values() -> None:
    with pytest.raises(UnreadableSample, match=r"expected \(K, 2052\)"):
        pad_rois(np.zeros((3, 2048)))
    with pytest.raises(UnreadableSample, match="non-finite"):
        pad_rois(np.full((1, 2052), np.nan))
    rois, mask = pad_rois(np.ones((0, 2052)), max_rois=4)
    assert rois.shape == (4, 2052) and not mask.any()


# -------------------------------------------------------------------------------------------- WebDataset


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_split(tmp_path_factory.mktemp("wds"), 9, fmt="wds", config=CONFIG, shard_size=2)  # 5 shards


def test_expand_shards_brace_patterns_and_lists() -> None:
    assert expand_shards("d/s-{000..002}.tar") == ["d/s-000.tar", "d/s-001.tar", "d/s-002.tar"]
    assert expand_shards("a-{0..1}.tar::b.tar") == ["a-0.tar", "a-1.tar", "b.tar"]
    assert expand_shards(["x.tar", Path("y.tar")]) == ["x.tar", "y.tar"]
    with pytest.raises(ValueError, match="no shards"):
        expand_shards([])


def test_webdataset_streams_what_write_split_writes(shards: str) -> None:
    samples = list(WebDatasetShards(shards, shuffle_shards=False))
    expected = SynthScenes(CONFIG, length=9)
    assert [s.key for s in samples] == [f"{i:06d}" for i in range(9)]
    for sample, truth in zip(samples, expected, strict=True):
        assert_sample_shape(sample)
        assert (sample.caption, sample.tags) == (truth.caption, truth.tags)
        np.testing.assert_array_equal(sample.rois, truth.rois)


def test_ranks_and_workers_read_disjoint_shards_covering_all(shards: str) -> None:
    data = WebDatasetShards(shards, seed=3)
    data.set_epoch(1)
    parts = [data.shards_for(rank, 2, worker, 2) for rank in range(2) for worker in range(2)]
    assert sorted(s for part in parts for s in part) == sorted(data.shards)
    keys = [s.key for rank in range(2) for s in WebDatasetShards(shards, seed=3, rank=rank, world=2)]
    assert sorted(keys) == [f"{i:06d}" for i in range(9)]
    orders = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        orders.add(tuple(data.shards_for(0, 1)))
    assert len(orders) > 1  # the shard order changes with the epoch
    with pytest.raises(ValueError, match="5 shards cannot feed 6 ranks"):
        data.shards_for(5, 6)


def test_sample_shuffle_is_seeded(shards: str) -> None:
    def keys(seed: int) -> list[str]:
        return [s.key for s in WebDatasetShards(shards, shuffle=6, shuffle_shards=False, seed=seed)]

    assert keys(0) == keys(0) and sorted(keys(0)) == [f"{i:06d}" for i in range(9)]
    assert keys(0) != [f"{i:06d}" for i in range(9)] and keys(0) != keys(1)


def collect(batch: list) -> list:
    return batch


def test_dataloader_workers_split_the_shards(shards: str) -> None:
    loader = DataLoader(WebDatasetShards(shards), batch_size=2, num_workers=2, collate_fn=collect)
    keys = [sample.key for batch in loader for sample in batch]
    assert sorted(keys) == [f"{i:06d}" for i in range(9)]


@pytest.fixture()
def broken_shards(tmp_path: Path) -> str:
    regions = npy_bytes(np.ones((2, 2052), np.float32))
    write_tar(
        tmp_path / "part-0.tar",
        {
            "a.png": png_bytes(), "a.txt": b"good one", "a.roi.npy": regions, "a.tags.txt": b"red circle, blue star",
            "b.jpg": b"\xff\xd8 broken jpeg", "b.txt": b"broken image",
            "c.png": png_bytes(),
            "d.png": png_bytes(), "d.txt": b"bad regions", "d.roi.npy": b"nonsense",
            "e.txt": b"no image",
            "f.png": png_bytes(), "f.json": json.dumps({"key": "f", "caption": "caption from json"}).encode(),
        },
    )  # fmt: skip
    whole = write_tar(
        tmp_path / "part-1.tar",
        {"g.webp": png_bytes(), "g.txt": b"png bytes named webp", "h.png": png_bytes(), "h.txt": b"last"},
    )
    (tmp_path / "part-2.tar").write_bytes(whole.read_bytes()[:2580])  # cut inside h.png's data
    return str(tmp_path / "part-{0..2}.tar")


def test_corrupt_webdataset_samples_are_skipped_and_counted(broken_shards: str) -> None:
    data = WebDatasetShards(broken_shards, shuffle_shards=False)
    samples = list(data)
    assert [s.caption for s in samples[:4]] == ["good one", "caption from json", "png bytes named webp", "last"]
    assert samples[0].tags == "red circle, blue star" and samples[0].roi_mask.sum() == 2
    assert samples[1].skipped == ("unreadable image", "empty caption", "unreadable roi file", "missing image")
    assert data.skipped.counts["unreadable shard data"] >= 1 and data.skipped.total >= 5
    assert all(s.image.size == (16, 16) for s in samples)


def test_indexed_shards_give_random_access_with_the_same_samples(shards: str, broken_shards: str) -> None:
    indexed = IndexedShards(shards)
    assert len(indexed) == 9 and indexed[4].key == "000004"
    streamed = {s.key: s for s in WebDatasetShards(shards, shuffle_shards=False)}
    for i in (0, 8):
        assert indexed[i].caption == streamed[indexed[i].key].caption
        np.testing.assert_array_equal(indexed[i].rois, streamed[indexed[i].key].rois)
    broken = IndexedShards(broken_shards)
    captions = [broken[i].caption for i in range(len(broken))]
    assert {"good one", "caption from json", "png bytes named webp"} <= set(captions)
    assert broken.skipped.counts["unreadable image"] >= 1 and broken.skipped.counts["missing image"] >= 1
