"""`softclip demo` end to end with a tiny budget: every stage builds, and a second run reuses them all."""

from __future__ import annotations

import json
from pathlib import Path

from softclip.cli import main
from softclip.index import ImageIndex

TINY = ["--steps", "2", "--batch-size", "16", "--gallery", "24", "--eval-size", "16", "--no-launch"]


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
