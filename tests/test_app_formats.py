"""The app over a phone's and a camera's files: HEIC, AVIF, MPO, RAW, 16-bit TIFF and rotated JPEGs, all shown as
thumbnails made once and kept beside the index."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_app import AppData, prepare_app_data
from test_index_formats import gradient_dng

from softclip.app import thumbnails as thumbnails_module
from softclip.app.state import THUMBNAIL_SIDE, AppState
from softclip.index import build_index
from softclip.index.formats import register_plugins

WIDE = (600, 300)  # every picture is wide as stored; the rotated JPEG is tall when upright


def wide_picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((WIDE[1], WIDE[0], 3), np.uint8)
    pixels[:, : WIDE[0] // 2] = rng.integers(0, 256, 3)  # two halves of two colours
    pixels[:, WIDE[0] // 2 :] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels)


def write_phone_library(root: Path) -> None:
    register_plugins()
    root.mkdir(parents=True)
    wide_picture(0).save(root / "IMG_0001.HEIC", format="HEIF")
    wide_picture(1).save(root / "PXL_0002.avif", format="AVIF")
    wide_picture(2).save(root / "DSC_0003.mpo", format="MPO", save_all=True, append_images=[wide_picture(3)])
    Image.fromarray(np.asarray(wide_picture(4), np.uint16)[..., 0] * 257).save(root / "scan.tiff")  # 16-bit grey
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    wide_picture(5).save(root / "portrait.jpg", exif=exif)
    gradient_dng(root / "RAW_0006.dng", preview=False, width=600, height=300)


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory) -> tuple[AppData, Path]:
    from softclip.export import OnnxEncoder

    data = prepare_app_data(tmp_path_factory)
    root = tmp_path_factory.mktemp("phone")
    write_phone_library(root / "photos")
    report = build_index(root / "photos", OnnxEncoder(data.export), root / "index", progress=False, workers=1)
    assert report.added == 6 and not report.errors, report.errors
    return data, root / "index"


def test_every_result_is_a_small_upright_thumbnail_kept_beside_the_index(phone: tuple[AppData, Path]) -> None:
    data, index = phone
    state = AppState.load(index, data.checkpoint)
    items, search = state.search_text("a red circle", 6)
    assert len(items) == 6 == len(search["hits"])
    for (served, _), hit in zip(items, search["hits"]):
        with Image.open(served) as thumbnail:
            assert thumbnail.format == "WEBP" and max(thumbnail.size) == THUMBNAIL_SIDE
            tall = hit.path.endswith("portrait.jpg")
            assert (thumbnail.height > thumbnail.width) == tall, hit.path  # EXIF orientation applied
        assert Path(served).parent == state.thumbnails.folder  # served from Gradio's folder
    assert len(list((index / "thumbnails").glob("*.webp"))) == 6


def test_a_restarted_app_shows_the_kept_thumbnails_without_decoding(
    phone: tuple[AppData, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, index = phone
    AppState.load(index, data.checkpoint).search_text("a red circle", 6)  # makes them, if not made yet

    def no_decoding(*args, **kwargs):
        raise AssertionError("a kept thumbnail was decoded again")

    monkeypatch.setattr(thumbnails_module, "decode_bytes", no_decoding)
    items, _ = AppState.load(index, data.checkpoint).search_text("a red circle", 6)
    assert len(items) == 6


def test_a_changed_file_gets_a_new_thumbnail(phone: tuple[AppData, Path]) -> None:
    data, index = phone
    state = AppState.load(index, data.checkpoint)
    path = state.index.search_text("a red circle", 6)[0].path
    before, status = state.thumbnails.stored_path(path), os.stat(path)
    try:
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1))
        assert state.thumbnails.stored_path(path) != before
    finally:
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
