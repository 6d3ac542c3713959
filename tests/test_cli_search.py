"""The search engine end to end through the CLI, on a real ONNX export of a tiny model and a real FAISS index."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from softclip import create_model
from softclip.cli import main
from softclip.export import OnnxEncoder, export_model
from softclip.index import ImageIndex
from softclip.tokenizer import Tokenizer
from softclip.training.scenes import SynthConfig
from softclip.training.synthetic import SynthScenes


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny-vit")
    data = SynthScenes(SynthConfig(split="test"), length=200)
    model.tokenizer = Tokenizer.train([t for i in range(200) for t in data.texts(i)], vocab_size=400)
    return export_model(model, tmp_path_factory.mktemp("export") / "tiny-vit")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    data = SynthScenes(SynthConfig(split="test"), length=24)
    for i in range(24):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        data[i].image.save(sub / f"scene{i:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def index_dir(export_dir: Path, photos: Path, tmp_path_factory) -> Path:
    index = tmp_path_factory.mktemp("index") / "photos"
    assert main(["index", str(photos), "--model", str(export_dir), "--index", str(index)]) == 0
    return index


def run_json(capsys, *args: str):
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_index_records_bad_files_and_searches_by_text(index_dir: Path, photos: Path, capsys) -> None:
    with ImageIndex.open(index_dir) as index:
        assert len(index) == 24
    hits = run_json(capsys, "search", str(index_dir), "a red circle", "-k", "5", "--json")
    assert len(hits) == 5
    assert all(Path(hit["path"]).is_file() and hit["path"].endswith(".png") for hit in hits)
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)


def test_text_search_equals_exact_search(index_dir: Path, export_dir: Path, photos: Path, capsys) -> None:
    """The CLI's ranking is numpy's exact inner-product ranking over the ONNX embeddings."""
    encoder = OnnxEncoder(export_dir)
    paths = sorted(photos.rglob("*.png"))
    from softclip.encoder import load_pixels

    vectors = encoder.encode_images(load_pixels(paths, encoder))
    query = encoder.encode_texts(["two blue squares"])[0]
    expected = [str(paths[i]) for i in np.argsort(-(vectors @ query))[:5]]
    hits = run_json(capsys, "search", str(index_dir), "two blue squares", "-k", "5", "--json")
    assert [Path(h["path"]).resolve() for h in hits] == [Path(p).resolve() for p in expected]


def test_search_by_image_finds_itself_first(index_dir: Path, photos: Path, capsys) -> None:
    image = sorted(photos.rglob("*.png"))[3]
    assert main(["search", str(index_dir), "--image", str(image), "-k", "3", "--paths"]) == 0
    paths = capsys.readouterr().out.split()
    assert len(paths) == 3 and Path(paths[0]).resolve() == image.resolve()


def test_weighted_query_runs(index_dir: Path, capsys) -> None:
    hits = run_json(capsys, "search", str(index_dir), "red circle + 2:blue star - green", "-k", "4", "--json")
    assert len(hits) == 4


@pytest.mark.parametrize("query", ["1e40:cat", "nan:dog", "inf:sea", "red circle - 1e-50:star"])
def test_an_absurd_weight_is_one_clear_line(index_dir: Path, query: str, capsys) -> None:
    assert main(["search", str(index_dir), query]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("softclip: error: the weight ") and "must be between 0.001 and 1000" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_weights_that_cancel_out_are_one_clear_line(index_dir: Path, capsys) -> None:
    assert main(["search", str(index_dir), "1000:red circle - 1000:red circle"]) == 2
    assert "cancel out" in capsys.readouterr().err


def test_table_output_fits_a_terminal(index_dir: Path, capsys) -> None:
    assert main(["search", str(index_dir), "a star", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 3 and all(len(line) <= 200 for line in lines)


def test_describe_after_index_texts(index_dir: Path, photos: Path, tmp_path: Path, capsys) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\ntwo blue squares\na green star\n\na green star\n")
    assert main(["index-texts", str(index_dir), str(texts)]) == 0
    assert "3 texts" in capsys.readouterr().out
    image = sorted(photos.rglob("*.png"))[0]
    hits = run_json(capsys, "describe", str(index_dir), str(image), "-k", "3", "--json")
    assert sorted(h["text"] for h in hits) == ["a green star", "a red circle", "two blue squares"]


def test_label_folder_to_csv(export_dir: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    assert (
        main(["label", str(photos), "--model", str(export_dir), "--labels", "circle,square,star", "--out", str(out)])
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 25
    assert sum(1 for row in rows if row.get("error")) == 1


def test_mismatched_model_is_refused(index_dir: Path, photos: Path, tmp_path: Path, capsys) -> None:
    other = create_model("tiny-rn")
    other_export = export_model(other, tmp_path / "other")
    assert main(["index", str(photos), "--model", str(other_export), "--index", str(index_dir)]) == 2
    assert "model" in capsys.readouterr().err.lower()


def test_shards_merged_equal_a_single_run(export_dir: Path, photos: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    for i in range(2):
        assert (
            main(["index", str(photos), "--model", str(export_dir), "--index", str(sharded), "--shard", f"{i}/2"]) == 0
        )
    assert main(["index", "merge", "--index", str(sharded)]) == 0
    single = tmp_path / "single"
    assert main(["index", str(photos), "--model", str(export_dir), "--index", str(single)]) == 0
    with ImageIndex.open(sharded) as a, ImageIndex.open(single) as b:
        assert len(a) == len(b) == 24
        hits_a, hits_b = a.search_text("a red circle", 24), b.search_text("a red circle", 24)
    assert [h.path for h in hits_a] == [h.path for h in hits_b]
    np.testing.assert_allclose([h.score for h in hits_a], [h.score for h in hits_b], atol=1e-5)


def test_bad_shard_argument(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="i/n"):
        main(["index", str(photos), "--index", str(tmp_path), "--shard", "two"])
