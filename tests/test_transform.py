"""Preprocessing: every PIL mode to RGB, resize and crop, normalisation, config files, random crops."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from softclip.transform import (
    CLIP_MEAN,
    CLIP_STD,
    PreprocessConfig,
    RandomResizedCrop,
    image_to_array,
    image_to_tensor,
    load_image,
)

SIZE = 24
CONFIG = PreprocessConfig(size=SIZE)


def _gradient(width: int = 40, height: int = 30) -> np.ndarray:
    """[H, W] floats in 0..1, rising left to right."""
    return np.tile(np.linspace(0.0, 1.0, width), (height, 1))


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (40, 30), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (20, 0, 40, 30))
    image.info["transparency"] = 0  # palette index 0 (red) is see-through
    return image


def _odd_modes() -> dict[str, Image.Image]:
    gradient = _gradient()
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, (gradient * 255).astype(np.uint8)
    return {
        "P+transparency": _palette_with_transparency(),
        "RGBA": Image.fromarray(rgba, "RGBA"),
        "LA": Image.fromarray(rgba[..., [0, 3]], "LA"),
        "CMYK": Image.new("CMYK", (40, 30), (0, 255, 255, 0)),
        "I;16": Image.fromarray((gradient * 65535).astype(np.uint16), "I;16"),
        "I": Image.fromarray((gradient * 65535).astype(np.int32), "I"),
        "F": Image.fromarray(gradient.astype(np.float32), "F"),
        "1": Image.fromarray(gradient > 0.5).convert("1"),
        "L": Image.fromarray((gradient * 255).astype(np.uint8), "L"),
    }


@pytest.mark.parametrize("mode", list(_odd_modes()))
def test_every_mode_gives_a_finite_normalised_tensor(mode: str) -> None:
    image = _odd_modes()[mode]
    assert load_image(image).mode == "RGB"
    tensor = image_to_tensor(image, CONFIG)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, SIZE, SIZE)
    assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_grayscale_is_scaled_not_clipped(mode: str) -> None:
    pixels = np.asarray(load_image(_odd_modes()[mode]))[..., 0]  # [30, 40] rising 0..max left to right
    assert pixels[:, 0].max() <= 1 and pixels[:, -1].min() >= 254
    assert 100 < pixels[:, 20].mean() < 155  # the middle is mid-grey, not saturated
    assert (pixels == 255).mean() < 0.1


def test_transparency_is_composited_on_white() -> None:
    rgba = np.asarray(load_image(_odd_modes()["RGBA"]))
    assert tuple(rgba[0, 0]) == (255, 255, 255)  # alpha 0
    assert tuple(rgba[0, -1]) == (200, 0, 0)  # alpha 255
    palette = np.asarray(load_image(_palette_with_transparency()))
    assert tuple(palette[0, 0]) == (255, 255, 255) and tuple(palette[0, -1]) == (0, 0, 255)


def test_exif_orientation_is_applied(tmp_path) -> None:
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "rotated.jpg")
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50
    assert image_to_tensor(tmp_path / "rotated.jpg", CONFIG).shape == (3, SIZE, SIZE)


def test_gif_gives_first_frame(tmp_path) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in [(0, 255, 0), (255, 0, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif").getpixel((8, 8)) == (0, 255, 0)


def test_file_that_is_not_an_image(tmp_path) -> None:
    (tmp_path / "notes.jpg").write_text("not pixels")
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_constant_colour_normalises_to_expected_value() -> None:
    colour = (200, 100, 50)
    array = image_to_array(Image.new("RGB", (57, 31), colour), CONFIG)
    expected = (np.array(colour) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert array.dtype == np.float32 and array.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(array, np.broadcast_to(expected[:, None, None], array.shape), atol=1e-5)


def _three_stripes() -> Image.Image:
    """300 x 100: red, green, blue thirds."""
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))
    image.paste((0, 0, 255), (200, 0, 300, 100))
    return image


def _unnormalise(array: np.ndarray) -> np.ndarray:
    """[3, H, W] model input back to [H, W, 3] in 0..1."""
    return array.transpose(1, 2, 0) * np.array(CLIP_STD) + np.array(CLIP_MEAN)


def test_centre_crop_of_wide_image_keeps_the_centre() -> None:
    pixels = _unnormalise(image_to_array(_three_stripes(), CONFIG))
    inner = pixels[:, 2:-2]  # the outermost columns may blend with the neighbouring stripes
    np.testing.assert_allclose(inner, np.broadcast_to([0, 1, 0], inner.shape), atol=0.02)


def test_squash_keeps_the_whole_image() -> None:
    pixels = _unnormalise(image_to_array(_three_stripes(), PreprocessConfig(size=SIZE, resize_mode="squash")))
    assert pixels[SIZE // 2, 1].argmax() == 0 and pixels[SIZE // 2, SIZE // 2].argmax() == 1
    assert pixels[SIZE // 2, -2].argmax() == 2


def test_tensor_wraps_array() -> None:
    image = _odd_modes()["RGBA"]
    assert np.array_equal(image_to_tensor(image, CONFIG).numpy(), image_to_array(image, CONFIG))


def test_config_round_trip(tmp_path) -> None:
    config = PreprocessConfig(size=64, resize_mode="squash", interpolation="bilinear")
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    file = config.save(tmp_path)
    assert file.name == "preprocess.json"
    assert PreprocessConfig.load(tmp_path) == config == PreprocessConfig.load(file)
    assert PreprocessConfig().mean == CLIP_MEAN and PreprocessConfig().size == 224


def test_config_errors_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="preprocess.json"):
        PreprocessConfig.load(tmp_path)
    (tmp_path / "preprocess.json").write_text("{ size: 3")
    with pytest.raises(ValueError, match="preprocess.json"):
        PreprocessConfig.load(tmp_path)
    (tmp_path / "preprocess.json").write_text('{"size": 32, "crop": true}')
    with pytest.raises(ValueError, match="crop"):
        PreprocessConfig.load(tmp_path)
    with pytest.raises(ValueError, match="resize_mode"):
        PreprocessConfig(resize_mode="pad")


def _photo() -> Image.Image:
    noise = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    return Image.fromarray(noise, "RGB")


@pytest.mark.parametrize("make_rng", [random.Random, np.random.default_rng])
def test_random_resized_crop_is_deterministic_for_a_seed(make_rng) -> None:
    crop, photo = RandomResizedCrop(SIZE, scale=(0.3, 1.0)), _photo()
    first = [np.asarray(crop(photo, make_rng(7))) for _ in range(2)]
    assert first[0].shape == (SIZE, SIZE, 3) and np.array_equal(first[0], first[1])
    rng_a, rng_b = make_rng(7), make_rng(7)
    assert [crop.crop_box(80, 60, rng_a) for _ in range(5)] == [crop.crop_box(80, 60, rng_b) for _ in range(5)]
    boxes = {crop.crop_box(80, 60, make_rng(seed)) for seed in range(10)}
    assert len(boxes) > 5  # different seeds, different crops


def test_random_crop_boxes_respect_scale_and_ratio() -> None:
    crop, rng = RandomResizedCrop(SIZE, scale=(0.5, 0.8), ratio=(0.75, 1.25)), random.Random(0)
    for _ in range(50):
        left, top, right, bottom = crop.crop_box(200, 150, rng)
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 150
        assert 0.48 <= (right - left) * (bottom - top) / (200 * 150) <= 0.82
        assert 0.72 <= (right - left) / (bottom - top) <= 1.3
    assert RandomResizedCrop(SIZE, scale=(1.0, 1.0)).crop_box(100, 100, rng) == (0, 0, 100, 100)
