"""Zero-shot labeling through the encoder protocol, from the Python API and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import softclip
from softclip import TorchEncoder, create_model, label
from softclip.cli import main
from softclip.zeroshot import label_embeddings, label_probabilities

LABELS = ["red circle", "blue square", "green star", "yellow ring"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny-vit").eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate(["red", "blue", "green"]):
        path = folder / f"{i}.png"
        Image.new("RGB", (80, 60), colour).save(path)
        paths.append(path)
    return paths


def test_labels_are_ranked_distributions(model, images: list[Path]) -> None:
    results = label(images, LABELS, model=model, top_k=len(LABELS))
    assert len(results) == len(images)
    for ranked in results:
        probabilities = [score.probability for score in ranked]
        assert sorted(s.label for s in ranked) == sorted(LABELS)
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in probabilities)


def test_labels_are_deterministic_and_accept_pil(model, images: list[Path]) -> None:
    from_paths = label(images, LABELS, model=model, top_k=2)
    from_pil = label([Image.open(p) for p in images], LABELS, model=model, top_k=2)
    assert [[(s.label, s.probability) for s in r] for r in from_paths] == [
        [(s.label, s.probability) for s in r] for r in from_pil
    ]


def test_templates_are_averaged_and_cached(model) -> None:
    encoder = TorchEncoder(model)
    templates = ("a photo of a {}.", "a drawing of a {}.")
    embeds = label_embeddings(encoder, LABELS, templates)
    per_template = encoder.encode_texts([t.format(name) for name in LABELS for t in templates]).reshape(4, 2, -1)
    mean = per_template.mean(axis=1)
    np.testing.assert_allclose(embeds, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    assert label_embeddings(encoder, LABELS, templates) is embeds


def test_probabilities_follow_similarity() -> None:
    image = np.array([[1.0, 0.0]], dtype=np.float32)
    classes = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    probabilities = label_probabilities(image, classes)
    assert probabilities[0, 1] > 0.99 and probabilities.sum() == pytest.approx(1.0)


def test_no_labels_is_an_error(model, images: list[Path]) -> None:
    with pytest.raises(ValueError, match="at least one label"):
        label(images, [], model=model)


def test_cli_labels_a_checkpoint(model, images: list[Path], tmp_path: Path, capsys) -> None:
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    assert main(["label", *map(str, images), "--model", str(checkpoint), "--labels", ", ".join(LABELS), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["image"] for row in rows] == [str(p) for p in images]
    expected = softclip.label(images, LABELS, model=checkpoint, top_k=3)
    assert [[s["label"] for s in row["labels"]] for row in rows] == [[s.label for s in r] for r in expected]


def test_cli_rejects_empty_labels(images: list[Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="at least one"):
        main(["label", str(images[0]), "--model", str(tmp_path), "--labels", " , "])
