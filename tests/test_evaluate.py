"""Evaluation metrics on hand-made embeddings with known answers, and `softclip eval` on SynthScenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softclip import create_model
from softclip.cli import main
from softclip.training.evaluate import caption_table, class_folder
from softclip.training.metrics import matching_recall, retrieval_recall, topk_accuracy

EYE = np.eye(4, dtype=np.float32)


def test_topk_accuracy_known_answers() -> None:
    images = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    targets = np.array([0, 1, 3])  # the second image is closest to class 0, second closest to class 1
    metrics = topk_accuracy(images, EYE, targets, ks=(1, 2))
    assert metrics == {"top1": pytest.approx(2 / 3), "top2": pytest.approx(1.0)}


def test_retrieval_recall_with_several_captions_per_image() -> None:
    images = EYE[:3]
    # captions 0,1 belong to image 0; 2 to image 1; 3 to image 2 -- caption 3 points at image 0 instead
    texts = np.stack([EYE[0], EYE[0] * 0.9 + EYE[3] * 0.1, EYE[1], EYE[0] * 0.5 + EYE[2] * 0.4])
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    owners = np.array([0, 0, 1, 2])
    metrics = retrieval_recall(images, texts, owners, ks=(1, 2))
    assert metrics["t2i_r1"] == pytest.approx(3 / 4)  # caption 3 ranks image 0 first
    assert metrics["t2i_r2"] == pytest.approx(1.0)
    assert metrics["i2t_r1"] == pytest.approx(1.0)  # image 2's only close caption is caption 3, its own


def test_retrieval_perfect_and_reversed() -> None:
    perfect = retrieval_recall(EYE, EYE, np.arange(4), ks=(1,))
    assert perfect == {"i2t_r1": 1.0, "t2i_r1": 1.0}
    wrong = retrieval_recall(EYE, EYE, np.array([1, 0, 3, 2]), ks=(1,))
    assert wrong == {"i2t_r1": 0.0, "t2i_r1": 0.0}
    captionless = retrieval_recall(EYE, EYE[:2], np.arange(2), ks=(1,))  # images 2 and 3 have no caption
    assert captionless["i2t_r1"] == 0.5


def test_matching_recall_counts_any_image_a_caption_fits() -> None:
    # Caption 1 ranks image 0 first; it belongs to image 1 but is also true of image 0.
    images = EYE[:2]
    texts = np.stack([EYE[0], EYE[0] * 0.9 + EYE[1] * 0.1])
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    fits = np.array([[True, True], [False, True]])  # fits[image, text]
    own = retrieval_recall(images, texts, np.array([0, 1]), ks=(1,))
    matched = matching_recall(images, texts, lambda i, t: bool(fits[i, t]), ks=(1, 2))
    assert own == {"i2t_r1": 1.0, "t2i_r1": 0.5}  # caption 1 misses its own image
    assert matched["t2i_match_r1"] == 1.0 and matched["i2t_match_r1"] == 1.0
    nothing_fits = matching_recall(images, texts, lambda i, t: False, ks=(1,))
    assert nothing_fits == {"i2t_match_r1": 0.0, "t2i_match_r1": 0.0}


def test_class_folder_and_caption_table(tmp_path: Path) -> None:
    for name in ("red_circle", "blue_square"):
        (tmp_path / "classes" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "classes" / name / "a.png")
    paths, targets, classes = class_folder(tmp_path / "classes")
    assert classes == ["blue square", "red circle"] and targets == [0, 1] and len(paths) == 2
    table = tmp_path / "captions.csv"
    table.write_text("filepath,caption\na.png,one\nb.png,two\na.png,three\n")
    images, captions = caption_table(table)
    assert [p.name for p in images] == ["a.png", "b.png"] and captions == [["one", "three"], ["two"]]


def test_eval_cli_on_a_class_folder(tmp_path: Path, capsys) -> None:
    for name, colour in (("red", "red"), ("blue", "blue")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / name / f"{i}.png")
    checkpoint = create_model("tiny-rn").save_pretrained(tmp_path / "ckpt")
    assert main(["eval", str(checkpoint), "--task", "zeroshot", "--data", str(tmp_path / "data"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] in (0.0, 0.5, 1.0) and metrics["top5"] == 1.0
