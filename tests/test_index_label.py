"""Zero-shot labeling of a folder into a CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ColourHistogramEncoder, write_image
from PIL import Image

from softclip.index import label_folder
from softclip.index.label import CSV_COLUMNS

TEMPLATES = ["a photo of a {}.", "a {} picture"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_label_folder_writes_top_label_probability_and_top_k(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    photos = tmp_path / "photos"
    expected = {}
    for i, colour in enumerate(["red", "green", "blue", "red", "blue"]):
        expected[os.fspath(write_image(photos / f"album{i % 2}" / f"{i}.png", colour, seed=i))] = colour
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    report = label_folder(
        photos, encoder, ["red", "green", "blue"], tmp_path / "out" / "labels.csv", TEMPLATES, top_k=2
    )

    rows = read_rows(tmp_path / "out" / "labels.csv")
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [row["path"] for row in rows] == sorted(row["path"] for row in rows)
    assert report.labeled == 5 and len(rows) == 6
    by_path = {row["path"]: row for row in rows}
    for path, colour in expected.items():
        row = by_path[path]
        top = [entry.split(":") for entry in row["top_k"].split(";")]
        assert row["label"] == colour == top[0][0] and row["error"] == ""
        assert len(top) == 2 and float(row["probability"]) == float(top[0][1]) >= float(top[1][1])
    broken = by_path[os.fspath(photos / "broken.jpg")]
    assert broken["label"] == "" and "JPEG" in broken["error"]
    assert report.errors == [(os.fspath(photos / "broken.jpg"), broken["error"])]


def test_probabilities_are_a_softmax_at_scale_100_over_template_ensembles(tmp_path: Path) -> None:
    encoder = ColourHistogramEncoder()
    path = write_image(tmp_path / "photos" / "x.png", "yellow", seed=4)
    labels = ["red", "green", "yellow"]
    label_folder(tmp_path / "photos", encoder, labels, tmp_path / "labels.csv", TEMPLATES, top_k=3)
    row = read_rows(tmp_path / "labels.csv")[0]

    image = encoder.encode_images(encoder.preprocess(Image.open(path).convert("RGB"))[None])[0]
    prompts = encoder.encode_texts([t.format(label) for label in labels for t in TEMPLATES]).reshape(3, 2, -1)
    classes = prompts.mean(axis=1)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    logits = 100 * classes @ image
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    written = {entry.split(":")[0]: float(entry.split(":")[1]) for entry in row["top_k"].split(";")}
    for label, probability in zip(labels, probabilities):
        assert written[label] == pytest.approx(probability, abs=1e-4)


def test_bad_labels_and_templates_are_refused(tmp_path: Path, encoder: ColourHistogramEncoder) -> None:
    write_image(tmp_path / "photos" / "a.png", "red")
    out = tmp_path / "labels.csv"
    with pytest.raises(ValueError, match="at least one label"):
        label_folder(tmp_path / "photos", encoder, [], out)
    with pytest.raises(ValueError, match=r"repeated: \['red'\]"):
        label_folder(tmp_path / "photos", encoder, ["red", "red"], out)
    with pytest.raises(ValueError, match=r"'\{\}' as the label placeholder; these have none: \['a photo'\]"):
        label_folder(tmp_path / "photos", encoder, ["red"], out, templates=["a photo"])
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        label_folder(tmp_path / "photos", encoder, ["red"], out, top_k=0)
    assert not out.exists()
