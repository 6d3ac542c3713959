"""Every format a photo library holds, written by the libraries themselves, and decoders that misbehave."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import COLOURS, solid_image
from hostile_decoders import misbehave_by_name
from PIL import Image

from softclip.index import ImageIndex, build_index
from softclip.index import decode as decode_module
from softclip.index.decode import ImageDecodeError, decode_bytes, load_rgb
from softclip.index.formats import IMAGE_EXTENSIONS, register_plugins
from softclip.index.isolated import ChildDecodeError, DecoderPool
from softclip.index.scan import scan_folder

SIDE = 64


def picture(colour: str, seed: int) -> Image.Image:
    """A plain colour with mild noise: the colour survives lossy codecs, the noise tells files apart."""
    pixels = np.asarray(solid_image(COLOURS[colour], SIDE), dtype=np.int16)
    pixels = pixels + np.random.default_rng(seed).integers(-20, 21, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def gradient_dng(path: Path, preview: bool, width: int = 640, height: int = 480) -> Path:
    """A DNG of an RGGB mosaic whose red grows left to right and green top to bottom, written by tifffile.

    With ``preview``, the first image is an RGB preview and the mosaic sits in its SubIFD, as cameras do.
    """
    y, x = np.mgrid[0:height, 0:width]
    red, green, blue = x / width * 3000 + 500, y / height * 3000 + 500, np.full((height, width), 1500.0)
    mosaic = np.empty((height, width), np.uint16)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = red[0::2, 0::2], green[0::2, 1::2]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = green[1::2, 0::2], blue[1::2, 1::2]
    xyz_to_srgb = (32406, -15372, -4986, -9689, 18758, 415, 557, -2040, 10570)
    camera = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, "softclip test camera", True),  # UniqueCameraModel
        (50721, "2i", 9, tuple(v for m in xyz_to_srgb for v in (m, 10000)), True),  # ColorMatrix1
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    mosaic_tags = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50717, "I", 1, 4095, True)]
    with tifffile.TiffWriter(path) as tif:
        if preview:
            rgb = np.stack([x / width * 255, y / height * 255, np.full((height, width), 128.0)], -1).astype(np.uint8)
            tif.write(rgb, photometric="rgb", subfiletype=1, subifds=1, extratags=camera)
            tif.write(mosaic, photometric=32803, subfiletype=0, extratags=mosaic_tags)
        else:
            tif.write(mosaic, photometric=32803, subfiletype=0, extratags=camera + mosaic_tags)
    return path


def write_photo_library(root: Path) -> dict[str, Image.Image | None]:
    """One file of every photo format, made by the libraries that write them; path -> the picture written."""
    register_plugins()
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Image.Image | None] = {}
    formats = {"a.jpg": "JPEG", "b.png": "PNG", "c.webp": "WEBP", "d.gif": "GIF", "e.tiff": "TIFF", "f.bmp": "BMP"}
    formats |= {"g.avif": "AVIF", "h.HEIC": "HEIF", "i.jxl": "JXL", "j.jp2": "JPEG2000", "k.psd": None}
    formats |= {"png-inside.heic": "PNG", "jpeg-inside.nef": "JPEG"}  # listed extension, other content
    colours = list(COLOURS)
    for seed, (name, fmt) in enumerate(formats.items()):
        image = picture(colours[seed % len(colours)], seed)
        if fmt is None:  # Pillow cannot write PSD: a TGA stands in for "Pillow's rarer formats"
            name = name.replace(".psd", ".tga")
            fmt = "TGA"
        image.save(root / name, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP", "AVIF", "HEIF") else {}))
        written[os.fspath(root / name)] = image
    first, second = picture("red", 100), picture("blue", 101)
    first.save(root / "stereo.mpo", format="MPO", save_all=True, append_images=[second])
    written[os.fspath(root / "stereo.mpo")] = first
    for name, preview in (("camera.dng", True), ("mosaic.DNG", False)):
        written[os.fspath(gradient_dng(root / name, preview))] = None
    return written


def write_broken_files(root: Path, good: dict[str, Image.Image | None]) -> list[str]:
    """Truncated and garbage files of the new formats."""
    by_name = {os.path.basename(path): Path(path).read_bytes() for path in good}
    broken = {
        "truncated.heic": by_name["h.HEIC"][: len(by_name["h.HEIC"]) // 2],
        "truncated.avif": by_name["g.avif"][:200],
        "truncated.jxl": by_name["i.jxl"][:100],
        "truncated.dng": by_name["mosaic.DNG"][:5000],
        "notes.cr2": b"not a raw file, only notes\n" * 20,
        "noise.heif": np.random.default_rng(0).bytes(4000),
    }
    for name, data in broken.items():
        (root / name).write_bytes(data)
    return [os.fspath(root / name) for name in broken]


def test_the_extension_list_covers_phones_cameras_and_pillow() -> None:
    for extension in (".heic", ".heif", ".avif", ".jxl", ".mpo", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".psd"):
        assert extension in IMAGE_EXTENSIONS
    assert ".eps" not in IMAGE_EXTENSIONS  # Pillow hands EPS to Ghostscript


def test_index_help_lists_the_extensions(capsys: pytest.CaptureFixture) -> None:
    from softclip.cli import main

    with pytest.raises(SystemExit):
        main(["index", "--help"])
    shown = set(re.findall(r"[a-z0-9]+", capsys.readouterr().out))
    assert {"heic", "avif", "jxl", "mpo", "dng", "nef", "psd"} <= shown


def test_every_format_is_indexed_and_searchable_and_broken_files_are_named(tmp_path: Path, encoder) -> None:
    root = tmp_path / "library"
    good = write_photo_library(root)
    broken = write_broken_files(root, good)
    assert {file.path for file in scan_folder(root).files} == set(good) | set(broken)
    report = build_index(root, encoder, tmp_path / "idx", workers=2, batch_size=4)
    assert report.added == len(good), report.errors
    assert sorted(path for path, _ in report.errors) == sorted(broken)
    with ImageIndex.open(tmp_path / "idx", encoder) as index:
        for path in good:  # each file is found by its own picture, at the top and with the same embedding
            hits = index.search_image(path, k=len(good))
            assert path in {hit.path for hit in hits if hit.score > 0.999}, path


def test_new_formats_decode_to_the_pictures_written(tmp_path: Path) -> None:
    good = write_photo_library(tmp_path)
    for path, image in good.items():
        if image is None:
            continue
        decoded = np.asarray(load_rgb(path), dtype=np.float32)
        assert decoded.shape == (SIDE, SIDE, 3), path
        assert np.abs(decoded - np.asarray(image, dtype=np.float32)).mean() < 8, path  # lossy codecs at quality 95


@pytest.mark.parametrize("name", ["camera.dng", "mosaic.DNG"])
def test_raw_files_decode_upright_with_their_colours(tmp_path: Path, name: str) -> None:
    path = gradient_dng(tmp_path / name, preview=name == "camera.dng")
    image = np.asarray(load_rgb(path), dtype=np.float32)
    assert image.shape == (480, 640, 3)
    assert image[240, 600, 0] > image[240, 40, 0] + 100  # red grows left to right
    assert image[440, 320, 1] > image[40, 320, 1] + 100  # green grows top to bottom
    reduced = decode_bytes(path.read_bytes(), os.fspath(path), min_side=200)
    assert min(reduced.size) >= 200 and reduced.size[0] < 640  # half-size demosaic, or a reduced preview


@pytest.fixture(scope="module")
def hostile_pool():
    pool = DecoderPool(misbehave_by_name, seconds=5, memory_bytes=512 << 20)
    yield pool
    pool.close()


def heic_bytes(colour: str = "green") -> bytes:
    register_plugins()
    buffer = io.BytesIO()
    picture(colour, 0).save(buffer, format="HEIF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("hang.heic", "took over 5 s"), ("crash.heic", "crashed (killed by SIGABRT)"), ("hog.heic", "out of memory")],
)
def test_a_hang_a_crash_or_a_memory_hog_costs_one_file_only(hostile_pool: DecoderPool, name: str, reason: str) -> None:
    data = heic_bytes()
    with pytest.raises(ChildDecodeError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        hostile_pool.decode(data, name, 100.0)
    assert hostile_pool.decode(data, "fine.heic", 100.0).size == (SIDE, SIDE)  # the pool goes on


def test_indexing_survives_misbehaving_decoders_and_keeps_what_it_indexed(
    tmp_path: Path, encoder, hostile_pool: DecoderPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decode_module, "shared_pool", lambda: hostile_pool)
    root = tmp_path / "phone"
    root.mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        (root / f"IMG_{i}.heic").write_bytes(heic_bytes(colour))
    for name, colour in (("crash.heic", "white"), ("hang.heic", "black"), ("hog.heic", "cyan")):
        (root / name).write_bytes(heic_bytes(colour))  # content unlike the good files': no copy to recognise
    report = build_index(root, encoder, tmp_path / "idx", workers=2, batch_size=2)
    assert report.added == 3 and report.total == 3
    reasons = {os.path.basename(path): reason for path, reason in report.errors}
    assert set(reasons) == {"crash.heic", "hang.heic", "hog.heic"}
    assert "crashed" in reasons["crash.heic"] and "took over" in reasons["hang.heic"]
    again = build_index(root, encoder, tmp_path / "idx", workers=2)
    assert again.unchanged == 3 and again.total == 3 and len(again.errors) == 3


def test_a_bad_query_image_of_a_new_format_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.heic").write_bytes(heic_bytes()[:300])
    with pytest.raises(ImageDecodeError, match="broken.heic"):
        load_rgb(tmp_path / "broken.heic")
