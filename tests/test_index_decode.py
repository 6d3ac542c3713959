"""Scanning and robust decoding: every valid image is indexed, every bad file is recorded with its reason."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ColourHistogramEncoder, solid_image, write_image
from PIL import Image

from softclip.encoder import TorchEncoder
from softclip.index import build_index
from softclip.index import decode as decode_module
from softclip.index.decode import ImageDecodeError, decode_bytes, decode_files, draft_side, load_rgb
from softclip.index.index_folder import MANIFEST_FILE
from softclip.index.manifest import Manifest
from softclip.index.scan import ScannedFile, scan_folder, scan_paths
from softclip.model import create_model


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels but holds almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def float_rgb_tiff(width: int = 4, height: int = 4) -> bytes:
    """A valid little-endian TIFF with 32-bit float RGB samples, a pixel mode Pillow cannot decode."""
    data = bytes(width * height * 3 * 4)
    bits_at = 8 + len(data)
    format_at = bits_at + 6
    ifd_at = format_at + 6
    tags = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 3, bits_at),  # BitsPerSample: 32, 32, 32
        (259, 3, 1, 1),
        (262, 3, 1, 2),  # RGB
        (273, 4, 1, 8),
        (277, 3, 1, 3),
        (278, 3, 1, height),
        (279, 4, 1, len(data)),
        (339, 3, 3, format_at),  # SampleFormat: IEEE float
    ]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
    return (
        b"II*\x00"
        + struct.pack("<I", ifd_at)
        + data
        + struct.pack("<3H", 32, 32, 32)
        + struct.pack("<3H", 3, 3, 3)
        + ifd
    )


def write_valid_images(root: Path) -> dict[str, str]:
    """One valid image of every indexed format (and an upper-case extension); path -> colour of frame 1."""
    colours = {
        "a.jpg": "red",
        "b.JPEG": "green",
        "c.png": "blue",
        "d.webp": "yellow",
        "e.bmp": "cyan",
        "f.tif": "magenta",
        "g.tiff": "white",
        "nested/deeper/h.png": "black",
        "nested.jpg/i.png": "red",  # a folder whose name looks like an image
    }
    for name, colour in colours.items():
        write_image(root / name, colour, seed=len(name))
    frames = [solid_image((255, 0, 0), 16, noise_seed=1), solid_image((0, 0, 255), 16, noise_seed=2)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    colours["anim.gif"] = "red"
    return {os.fspath(root / name): colour for name, colour in colours.items()}


def write_bad_files(root: Path) -> dict[str, str]:
    """Every kind of bad file; path -> a phrase its recorded reason must contain."""
    (root / "empty.jpg").write_bytes(b"")
    jpeg = write_image(root / "whole.jpg", "red", size=64).read_bytes()
    (root / "whole.jpg").unlink()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = write_image(root / "whole.png", "blue", size=64).read_bytes()
    (root / "whole.png").unlink()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "notes.png").write_text("these are my holiday notes, not a picture\n")
    (root / "float.tif").write_bytes(float_rgb_tiff())
    (root / "bomb.png").write_bytes(png_header_only(20_000, 20_000))  # Pillow itself refuses 400 MP
    (root / "panorama.png").write_bytes(png_header_only(11_000, 10_000))  # 110 MP: over max_megapixels=100
    write_image(root / "locked.png", "green")
    write_image(root / "vanishing.png", "green")
    return {
        os.fspath(root / "empty.jpg"): "empty file",
        os.fspath(root / "truncated.jpg"): "truncated",
        os.fspath(root / "truncated.png"): "truncated",
        os.fspath(root / "notes.png"): "not an image",
        os.fspath(root / "float.tif"): "unsupported TIFF",
        os.fspath(root / "bomb.png"): "decompression bomb",
        os.fspath(root / "panorama.png"): "max_megapixels=100",
        os.fspath(root / "locked.png"): "permission denied",
        os.fspath(root / "vanishing.png"): "vanished",
    }


@pytest.fixture
def messy_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A folder with valid images of every format, every kind of bad file, hidden files and link loops."""
    root = tmp_path / "photos"
    valid = write_valid_images(root)
    bad = write_bad_files(root)
    write_image(root / ".hidden.jpg", "red")
    write_image(root / ".thumbnails" / "x.jpg", "red")
    (root / "readme.txt").write_text("not indexed")
    (root / "nested" / "loop").symlink_to(root)  # a link back up the tree must not loop
    (root / "broken.jpg").symlink_to(root / "missing.jpg")
    _make_unreadable(root / "locked.png", monkeypatch)
    _make_vanish_when_read(root / "vanishing.png", monkeypatch)
    return root, valid, bad


def _make_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.chmod(0)
    if os.geteuid() != 0:
        return
    original = decode_module.read_file  # root ignores file modes: refuse the read the way the OS would

    def refuse(name: str):
        if name == os.fspath(path):
            raise PermissionError(13, "Permission denied", name)
        return original(name)

    monkeypatch.setattr(decode_module, "read_file", refuse)


def _make_vanish_when_read(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = decode_module.read_file

    def delete_first(name: str):
        if name == os.fspath(path):
            path.unlink(missing_ok=True)
        return original(name)

    monkeypatch.setattr(decode_module, "read_file", delete_first)


def test_scan_finds_images_skips_hidden_and_survives_link_loops(messy_folder) -> None:
    root, valid, bad = messy_folder
    scan = scan_folder(root)
    found = [file.path for file in scan.files]
    assert found == sorted(found)
    assert set(found) == set(valid) | set(bad)  # no hidden file, no .txt, nothing twice through the loop
    assert scan.errors == [(os.fspath(root / "broken.jpg"), "broken symbolic link")]


def test_scan_follows_links_to_folders_outside(tmp_path: Path) -> None:
    elsewhere = write_image(tmp_path / "elsewhere" / "far.png", "red").parent
    root = tmp_path / "root"
    write_image(root / "near.png", "blue")
    (root / "linked").symlink_to(elsewhere)
    (root / "linked_again").symlink_to(elsewhere)  # the same real folder is walked once
    found = [Path(file.path).relative_to(root).as_posix() for file in scan_folder(root).files]
    assert found == ["linked/far.png", "near.png"]


def test_indexing_a_messy_folder_indexes_all_valid_and_records_every_bad_file(messy_folder, tmp_path) -> None:
    root, valid, bad = messy_folder
    encoder = ColourHistogramEncoder()
    report = build_index(root, encoder, tmp_path / "idx", workers=2, batch_size=4)
    reasons = dict(report.errors)
    for path, phrase in bad.items():
        assert phrase in reasons.get(path, ""), (path, reasons.get(path))
    assert reasons[os.fspath(root / "broken.jpg")] == "broken symbolic link"
    assert len(report.errors) == len(bad) + 1
    assert report.added == len(valid) and report.total == len(valid) and report.embedded == len(valid)
    with Manifest(tmp_path / "idx" / MANIFEST_FILE) as manifest:
        records = manifest.records()
        ok = {path for path, record in records.items() if record.status == "ok"}
        assert ok == set(valid)
        stored_errors = dict(manifest.errors())
        assert set(stored_errors) == set(bad) - {os.fspath(root / "vanishing.png")}  # a vanished file is gone
        for path in valid:  # each vector is the embedding of the image (GIF: its first frame)
            expected = encoder.encode_images(encoder.preprocess(load_rgb(path))[None])[0]
            np.testing.assert_allclose(manifest.vectors([records[path].vector_id])[0], expected, rtol=1e-6)


def test_gif_is_embedded_from_its_first_frame(tmp_path: Path) -> None:
    frames = [solid_image((255, 0, 0), 16), solid_image((0, 0, 255), 16)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    rgb = load_rgb(tmp_path / "anim.gif")
    assert rgb.mode == "RGB" and rgb.getpixel((3, 3)) == (255, 0, 0)


def test_max_megapixels_refuses_before_decoding(tmp_path: Path) -> None:
    data = write_image(tmp_path / "small.png", "red", size=64).read_bytes()  # 0.004 megapixels
    assert decode_bytes(data, "small.png", max_megapixels=1).size == (64, 64)
    with pytest.raises(ImageDecodeError, match="decompression bomb: 64x64"):
        decode_bytes(data, "small.png", max_megapixels=0.001)


def test_decode_files_keeps_input_order_and_never_raises(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i:02d}.png", "blue", seed=i) for i in range(12)]
    (tmp_path / "05.png").write_bytes(b"garbage")
    files = scan_paths(paths).files
    results = list(decode_files(files, ColourHistogramEncoder().preprocess, workers=3, lookahead=4))
    assert [result.file.path for result in results] == [file.path for file in files]
    assert [result.error is None for result in results] == [i != 5 for i in range(12)]
    assert all(result.pixels.shape == (3, 16, 16) for result in results if result.error is None)


def test_decode_records_a_preprocess_failure(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", "red")

    def broken_preprocess(image: Image.Image) -> np.ndarray:
        raise RuntimeError("no pixels today")

    [result] = decode_files([ScannedFile(os.fspath(path), 0, 0)], broken_preprocess, workers=1)
    assert result.pixels is None and "preprocessing failed" in result.error and "no pixels today" in result.error


# ---- decoding JPEGs at reduced size ------------------------------------------------------------------------------

EXIF_ORIENTATION = 0x0112


def camera_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A scene with what reduced-size decoding can lose: a gradient, sharp-edged objects, texture and noise."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([200 - 120 * rows, 90 + 80 * columns, 60 + 100 * rows * columns], axis=-1)  # [H, W, 3]
    for _ in range(6):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top : top + height // 3, left : left + width // 4] = rng.integers(0, 256, 3)
    pixels += (8 * np.sin(columns * 700) * np.cos(rows * 500))[..., None] + rng.normal(0, 6, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stream = io.BytesIO()
    image.save(stream, "JPEG", quality=90, exif=exif)
    return stream.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return camera_like(800, 600)


def test_a_jpeg_decodes_at_the_smallest_scale_that_keeps_min_side(photo: Image.Image) -> None:
    data = jpeg_bytes(photo)
    assert decode_bytes(data, "photo.jpg").size == (800, 600)
    assert decode_bytes(data, "photo.jpg", min_side=128).size == (200, 150)  # 1/4: 1/8 would give 75 < 128
    assert decode_bytes(data, "photo.jpg", min_side=150).size == (200, 150)
    assert decode_bytes(data, "photo.jpg", min_side=151).size == (400, 300)
    assert decode_bytes(data, "photo.jpg", min_side=5000).size == (800, 600)


@pytest.mark.parametrize(("orientation", "turn"), [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270)])
def test_reduced_decoding_respects_exif_orientation(
    photo: Image.Image, orientation: int, turn: Image.Transpose
) -> None:
    reduced = decode_bytes(jpeg_bytes(photo, orientation), "photo.jpg", min_side=128)
    upright = photo.transpose(turn)
    assert reduced.size == (upright.width // 4, upright.height // 4)
    expected = np.asarray(upright.resize(reduced.size, Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(np.asarray(reduced, dtype=np.float32) - expected).mean() < 4  # of 255; wrong turns give ~50


def test_reduced_decoding_keeps_the_model_input_of_a_full_decode(photo: Image.Image) -> None:
    # Pixels, not embeddings: an untrained model embeds even different photos at cosine > 0.99.
    encoder = TorchEncoder(create_model("tiny-vit"), device="cpu")  # 64 px input: JPEGs decode down to 128 px
    data = jpeg_bytes(photo, orientation=6)
    full = encoder.preprocess(decode_bytes(data, "photo.jpg"))
    levels = 255 * np.asarray(encoder.preprocess_config.std, dtype=np.float32)[:, None, None]  # undo normalising
    reduced = encoder.preprocess(decode_bytes(data, "photo.jpg", min_side=draft_side(encoder)))
    assert (np.abs(reduced - full) * levels).mean() < 0.6  # 0.33 measured; 1/8 scale (75 px) gives 0.99
    other = encoder.preprocess(camera_like(800, 600, seed=1))
    assert (np.abs(other - full) * levels).mean() > 20  # the measure tells photos apart


def test_other_formats_decode_at_full_size_whatever_min_side(tmp_path: Path, photo: Image.Image) -> None:
    for name in ("photo.png", "photo.webp", "photo.tiff"):
        photo.save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        full = decode_bytes(data, name)
        reduced = decode_bytes(data, name, min_side=64)
        assert reduced.size == (800, 600) and reduced.tobytes() == full.tobytes()


def test_draft_side_is_twice_the_model_input_and_decode_files_passes_it_on(tmp_path: Path, photo: Image.Image) -> None:
    encoder = TorchEncoder(create_model("tiny-vit"), device="cpu")
    assert draft_side(encoder) == 128 and draft_side(ColourHistogramEncoder()) is None  # no preprocess_config
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes(photo))
    files = scan_paths([tmp_path / "photo.jpg"]).files
    sizes = []
    [result] = decode_files(files, lambda image: sizes.append(image.size) or encoder.preprocess(image), min_side=128)
    assert result.error is None and sizes == [(200, 150)]


def test_build_index_embeds_jpegs_decoded_at_reduced_size(tmp_path: Path, photo: Image.Image) -> None:
    encoder = TorchEncoder(create_model("tiny-vit"), device="cpu")
    data = jpeg_bytes(photo, orientation=6)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "photo.jpg").write_bytes(data)
    build_index(tmp_path / "photos", encoder, tmp_path / "idx", workers=1, progress=False)
    with Manifest(tmp_path / "idx" / MANIFEST_FILE) as manifest:
        [(_, [stored])] = list(manifest.iter_vectors())
    reduced, full = (encoder.preprocess(decode_bytes(data, "photo.jpg", min_side=side)) for side in (128, None))
    reduced_embed, full_embed = encoder.encode_images(np.stack([reduced, full]))
    np.testing.assert_allclose(stored, reduced_embed, atol=1e-6)
    assert np.abs(stored - full_embed).max() > 1e-5  # a full decode gives (slightly) different pixels
