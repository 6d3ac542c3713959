"""Search: FAISS recall against exact numpy search, weighted queries, ImageIndex, texts, output formats."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ColourHistogramEncoder, solid_image, write_image

from softclip.index import (
    ImageDecodeError,
    ImageIndex,
    SearchHit,
    TextHit,
    build_index,
    faiss_index,
    format_hits,
    index_texts,
    parse_query,
)
from softclip.index.output import format_json, format_paths, format_report, format_table
from softclip.index.search import QueryTerm, query_vector


def random_unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_unit_vectors(count: int, dim: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Vectors around a few centres, as embeddings of a photo collection are (always the same centres)."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, clusters, count)] + rng.standard_normal((count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(factory: str | None, k: int = 10) -> float:
    """Share of the exact top-k (numpy inner product) that the index returns, over 50 queries."""
    database, queries = clustered_unit_vectors(2000, 32, seed=1), clustered_unit_vectors(50, 32, seed=2)
    ids = np.arange(1000, 3000, dtype=np.int64)  # ids that are not row numbers
    index = faiss_index.build_faiss_index(database, ids, factory)
    _, found = faiss_index.search(index, queries, k)
    exact = ids[np.argsort(-(queries @ database.T), axis=1)[:, :k]]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


@pytest.mark.parametrize(
    ("factory", "minimum"),
    [
        (None, 1.0),
        ("Flat", 1.0),
        ("HNSW32", 0.95),
        ("IVF32,Flat", 0.95),
        pytest.param("IVF16,PQ16x4", 0.6, marks=pytest.mark.slow),  # PQ training takes seconds on 2 cores
    ],
)
def test_recall_against_exact_search(factory: str | None, minimum: float) -> None:
    assert recall_at_k(factory) >= minimum


def test_flat_scores_are_exact_inner_products() -> None:
    database, queries = random_unit_vectors(100, 16, seed=2), random_unit_vectors(3, 16, seed=3)
    index = faiss_index.build_faiss_index(database, np.arange(100))
    scores, ids = faiss_index.search(index, queries, 5)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ database.T, ids, axis=1), rtol=1e-5)


def test_removal_works_on_flat_and_is_reported_unsupported_on_hnsw() -> None:
    database = random_unit_vectors(50, 8, seed=4)
    flat = faiss_index.build_faiss_index(database, np.arange(50))
    assert faiss_index.remove_vectors(flat, np.array([3, 4]))
    assert sorted(faiss_index.index_ids(flat)) == [i for i in range(50) if i not in (3, 4)]
    assert not faiss_index.remove_vectors(
        faiss_index.build_faiss_index(database, np.arange(50), "HNSW8"), np.array([3])
    )


def test_bad_factory_and_bad_queries_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="invalid FAISS factory string 'NoSuchIndex'"):
        faiss_index.create_index(8, "NoSuchIndex")
    index = faiss_index.build_faiss_index(random_unit_vectors(10, 8, seed=5), np.arange(10))
    with pytest.raises(ValueError, match="query dimension 4 does not match the index dimension 8"):
        faiss_index.search(index, np.zeros((1, 4), np.float32), 3)
    with pytest.raises(ValueError, match="k must be at least 1"):
        faiss_index.search(index, np.zeros((1, 8), np.float32), 0)


def test_parse_query_weights_signs_and_hyphenated_words(tmp_path: Path) -> None:
    assert parse_query("beach + 2:sunset - people") == [
        QueryTerm(1.0, "beach"),
        QueryTerm(2.0, "sunset"),
        QueryTerm(-1.0, "people"),
    ]
    assert parse_query("t-shirt - 0.5:black-and-white") == [
        QueryTerm(1.0, "t-shirt"),
        QueryTerm(-0.5, "black-and-white"),
    ]
    assert parse_query("- crowd") == [QueryTerm(-1.0, "crowd")]
    photo = write_image(tmp_path / "my-photo.png", "red")
    assert parse_query(f"sunset + 3:{photo}") == [QueryTerm(1.0, "sunset"), QueryTerm(3.0, os.fspath(photo), True)]
    with pytest.raises(ValueError, match="empty term"):
        parse_query("beach + ")
    with pytest.raises(ValueError, match="empty"):
        parse_query("   ")


def test_query_vector_is_the_normalised_weighted_sum(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    photo = write_image(tmp_path / "blue.png", "blue", seed=3)
    vector = query_vector(f"red + 2:green - 0.5:{photo}", encoder)
    red, green = encoder.encode_texts(["red", "green"])
    blue = encoder.encode_images(encoder.preprocess(solid_image((0, 0, 255), noise_seed=3))[None])[0]
    expected = red + 2 * green - 0.5 * blue
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cancel out"):
        query_vector("red - red", encoder)


@pytest.fixture
def colour_index(tmp_path: Path, encoder: ColourHistogramEncoder) -> tuple[Path, dict[str, Path]]:
    """An index of 3 images of each of red, green and blue."""
    photos = {
        f"{colour}{i}": write_image(tmp_path / "photos" / f"{colour}{i}.png", colour, seed=i)
        for colour in ("red", "green", "blue")
        for i in range(3)
    }
    build_index(tmp_path / "photos", encoder, tmp_path / "idx")
    return tmp_path / "idx", photos


def test_search_text_image_and_weighted(colour_index, encoder: ColourHistogramEncoder) -> None:
    index_dir, photos = colour_index
    with ImageIndex.open(index_dir, encoder=encoder) as index:
        assert len(index) == 9
        hits = index.search_text("red", k=3)
        assert [Path(hit.path).name[:-5] for hit in hits] == ["red"] * 3
        assert hits[0].score >= hits[1].score >= hits[2].score
        mixed = {Path(hit.path).name[:-5] for hit in index.search_text("red + blue", k=6)}
        assert mixed == {"red", "blue"}
        assert {Path(hit.path).name[:-5] for hit in index.search_text("2:green - red", k=3)} == {"green"}
        by_image = index.search_image(photos["blue1"], k=1)[0]
        assert by_image.path == os.fspath(photos["blue1"]) and by_image.score == pytest.approx(1.0, abs=1e-5)
        assert Path(index.search_image(solid_image((0, 255, 0)), k=1)[0].path).name.startswith("green")
        assert len(index.search_text("red", k=100)) == 9


def test_a_bad_query_image_is_a_clear_error(colour_index, tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    index_dir, _ = colour_index
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    with ImageIndex.open(index_dir, encoder=encoder) as index:
        with pytest.raises(ImageDecodeError, match="broken.png: .*PNG"):
            index.search_image(tmp_path / "broken.png")
        with pytest.raises(ImageDecodeError, match="no such file"):
            index.search_image(tmp_path / "absent.png")


def test_describe_finds_the_closest_texts(colour_index, encoder: ColourHistogramEncoder) -> None:
    index_dir, photos = colour_index
    assert index_texts(index_dir, ["red", "green", "blue", "blue", " ", "a quiet harbour"], encoder) == 4
    with ImageIndex.open(index_dir, encoder=encoder) as index:
        described = index.describe(photos["green2"], k=2)
        assert described[0].text == "green" and len(described) == 2
        assert described[0].score > described[1].score
        index_texts(index_dir, ["blue", "yellow"], encoder)  # replaces the texts; the open index notices
        assert sorted(hit.text for hit in index.describe(photos["green2"], k=5)) == ["blue", "yellow"]
    assert len(list((index_dir / "texts").glob("*.faiss"))) == 1


def test_describe_without_texts_says_how_to_add_them(colour_index, encoder: ColourHistogramEncoder) -> None:
    index_dir, photos = colour_index
    with ImageIndex.open(index_dir, encoder=encoder) as index, pytest.raises(FileNotFoundError, match="index_texts"):
        index.describe(photos["red0"])


def test_add_and_remove_through_image_index(colour_index, tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    index_dir, photos = colour_index
    extra = [write_image(tmp_path / "extra" / f"yellow{i}.png", "yellow", seed=i) for i in range(2)]
    with ImageIndex.open(index_dir, encoder=encoder) as index:
        report = index.add(extra + [tmp_path / "extra" / "missing.png"])
        assert (report.added, len(index)) == (2, 11)
        assert [Path(path).name for path, _ in report.errors] == ["missing.png"]
        assert Path(index.search_text("yellow", k=1)[0].path).name.startswith("yellow")
        assert index.remove([photos["red0"], photos["red1"], tmp_path / "never-indexed.png"]) == 2
        assert len(index) == 9
        assert os.fspath(photos["red0"]) not in {hit.path for hit in index.search_text("red", k=9)}
        write_image(tmp_path / "extra" / "deep" / "cyan.png", "cyan")
        assert index.add(tmp_path / "extra").added == 1  # a folder: incremental, the two yellows are known
        assert len(index) == 10


def test_open_without_encoder_or_export_explains(colour_index) -> None:
    index_dir, _ = colour_index
    with ImageIndex.open(index_dir) as index:
        assert len(index) == 9  # searching by vector needs no model
        with pytest.raises(ValueError, match="names no export folder: pass an encoder"):
            index.search_text("red")
    with pytest.raises(FileNotFoundError, match="not an index folder"):
        ImageIndex.open(index_dir.parent / "photos")


def test_output_formats() -> None:
    hits = [
        SearchHit("/photos/" + "very-long-folder-name/" * 8 + "IMG_0001.jpg", 0.9123, 7),
        SearchHit("/b.jpg", 0.5, 3),
    ]
    table = format_table(hits, width=60)
    lines = table.splitlines()
    assert all(len(line) <= 60 for line in lines) and len(lines) == 3
    assert lines[1].endswith("IMG_0001.jpg") and "…" in lines[1] and lines[1].split()[:2] == ["1", "0.9123"]
    assert json.loads(format_json(hits))[1] == {"rank": 2, "path": "/b.jpg", "score": 0.5, "vector_id": 3}
    assert format_paths(hits).splitlines() == [hits[0].path, "/b.jpg"]
    assert format_hits([TextHit("red", 0.8)], "paths") == "red"
    assert "text" in format_table([TextHit("red", 0.8)]).splitlines()[0]
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        format_hits(hits, "xml")


def test_format_report_lists_counts_and_errors(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    write_image(tmp_path / "photos" / "a.png", "red")
    (tmp_path / "photos" / "b.png").write_bytes(b"")
    text = format_report(build_index(tmp_path / "photos", encoder, tmp_path / "idx"))
    assert "1 images indexed" in text and "1 added" in text and "1 errors" in text
    assert text.splitlines()[-1].endswith("b.png: empty file (0 bytes)")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("1" + "0" * 38 + ":red circle", "100000...(39 digits) of the term 'red circle'"),
        ("1" + "0" * 39 + ":red circle", "100000...(40 digits) of the term 'red circle'"),
        ("blue + 1" + "0" * 400 + ":red", "100000...(401 digits) of the term 'red'"),
        ("2:red + 1000.5:blue", "1000.5 of the term 'blue'"),
        ("0:red", "0 of the term 'red'"),
        ("1e40:cat", "1e40 of the term 'cat'"),
        ("nan:dog", "nan of the term 'dog'"),
        ("inf:sea", "inf of the term 'sea'"),
        ("red + -INF:sea", "-INF of the term 'sea'"),
        ("1e-50:red", "1e-50 of the term 'red'"),  # legal-looking, but 0 in float32
        ("red + 0.0001:blue", "0.0001 of the term 'blue'"),
    ],
)
def test_a_weight_that_is_zero_tiny_too_large_or_not_a_number_is_named(query: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"the weight {named} must be between 0.001 and 1000")):
        parse_query(query)


@pytest.mark.parametrize(
    "query", ["1000:red - 1000:red", "0.001:red - 0.001:red", "red + 0.001:blue - red - 0.001:blue"]
)
def test_legal_weights_that_cancel_out_are_named(query: str, encoder: ColourHistogramEncoder) -> None:
    with pytest.raises(ValueError, match="cancel out: nothing is left to search for"):
        query_vector(query, encoder)


def test_many_largest_weights_stay_finite_and_normalised(encoder: ColourHistogramEncoder) -> None:
    vector = query_vector(" + ".join(["1000:red", "1000:green", "1000:blue"] * 200), encoder)
    assert np.isfinite(vector).all() and float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)


def test_the_largest_weight_still_searches(encoder: ColourHistogramEncoder) -> None:
    vector = query_vector("1000:red + 0.001:blue", encoder)
    assert np.isfinite(vector).all()
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
