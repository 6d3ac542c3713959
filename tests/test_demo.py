"""`softclip demo` end to end: the shipped model is served, `--train` trains its recipe, reruns reuse it all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softclip.app.demo import SHIPPED_MODEL
from softclip.cli import main
from softclip.index import ImageIndex

TINY = ["--train", "--steps", "2", "--batch-size", "16", "--gallery", "24", "--eval-size", "16", "--no-launch"]


def test_demo_builds_then_reuses_everything(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "demo"
    assert main(["demo", "--dir", str(folder), *TINY]) == 0
    assert (folder / "train" / "final" / "model.safetensors").is_file()
    assert (folder / "export" / "export.json").is_file()
    assert len(list((folder / "gallery").glob("*.png"))) == 24
    with ImageIndex.open(folder / "index") as index:
        assert len(index) == 24
        assert index.describe(next((folder / "gallery").glob("*.png")), 3)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {"colour_shape_top1", "i2t_r1", "pointing", "pointing_random"} <= set(metrics)
    built = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    out = capsys.readouterr().out
    assert "[1/3] zero-shot" in out and "[3/3] pointing game" in out  # the measuring stage shows its progress
    assert f"image index       {folder / 'index'}" in out
    assert f"start the app with:  softclip app --index {folder / 'index'} --model {folder / 'train' / 'final'}" in out

    assert main(["demo", "--dir", str(folder), *TINY]) == 0  # nothing is trained, exported or indexed again
    out = capsys.readouterr().out
    assert "training" not in out and "indexing" not in out
    assert {p: p.stat().st_mtime_ns for p in built} == built


def test_the_demo_serves_the_shipped_model_and_keeps_models_apart(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "demo"
    assert main(["demo", "--dir", str(folder), "--gallery", "8", "--eval-size", "16", "--no-launch"]) == 0
    out = capsys.readouterr().out
    assert "training" not in out  # nothing is trained: the shipped weights are served
    assert f"--model {SHIPPED_MODEL}" in out
    assert "softclip train --model tiny-vit" in json.loads((SHIPPED_MODEL / "recipe.json").read_text())["command"]
    assert main(["demo", "--dir", str(folder), *TINY]) != 0  # a trained model would mix with the shipped one's files
    assert "was built with the shipped model; use another --dir" in capsys.readouterr().err
    assert not (folder / "train").exists()


def test_training_options_need_train(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "5", "--no-launch"])
    assert "add --train" in capsys.readouterr().err
