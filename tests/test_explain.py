"""Grad-CAM word heatmaps: the formula against a closed form, known answers, drawing, and a trained tiny model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from softclip.config import load_config
from softclip.explain import explain, explain_panel, find_queries
from softclip.gradcam import gradcam, gradcams, normalise_cam, shifted_gradcams
from softclip.heatmaps import COLORMAP, WordHeatmap, colorize, overlay, panel
from softclip.model import SoftCLIP, create_model
from softclip.pointing import PointingScene, pointing_game, pointing_hits, random_peak_baseline
from softclip.tokenizer import Tokenizer
from softclip.transform import PreprocessConfig, image_to_tensor
from softclip.word_queries import METHODS, query_token_rows

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 240), "yellow": (240, 220, 30)}


@pytest.fixture(scope="module")
def colour_tokenizer() -> Tokenizer:
    """BPE trained on the colour captions, so the toy model's words are short token sequences."""
    return Tokenizer.train(
        [" and ".join(COLOURS), "a photo of " + " ".join(COLOURS)] * 4, vocab_size=300, min_frequency=1
    )


# ---- a model whose Grad-CAM answer is known ----------------------------------------------------------------------


class ColourIndicatorModel(nn.Module):
    """Image features are per-colour pixel fractions on a grid, pooled by a mean; text is a bag of colour words.

    Channel c of the feature map is the fraction of each cell's pixels close to colour c, the image embedding
    is the normalised spatial mean of the map, and a text embedding counts the colour words it contains.
    """

    def __init__(self, tokenizer: Tokenizer, size: int = 32, grid: int = 8) -> None:
        super().__init__()
        self.config = load_config("tiny-vit")
        self.config.vision.image_size, self.config.text.context_length = size, 16
        self.tokenizer = tokenizer
        self.preprocess_config = PreprocessConfig(size=size, mean=(0, 0, 0), std=(1, 1, 1), resize_mode="squash")
        self.grid = grid
        self.palette = nn.Parameter(torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255)  # (C, 3)

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) pixels in [0, 1] -> (B, C, grid, grid) colour fractions."""
        distance = (images[:, None] - self.palette[None, :, :, None, None]).square().sum(dim=2)  # (B, C, S, S)
        close = (distance < 0.05).float() + 0.0 * distance  # keeps the map in the graph of the pixels
        return F.adaptive_avg_pool2d(close, self.grid)

    def image_feature_maps(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        feature_map = self.features(images)
        return F.normalize(feature_map.mean(dim=(2, 3)), dim=-1), [feature_map]

    def encode_text(self, input_ids: Tensor) -> Tensor:
        words = [self.tokenizer.decode(row).replace(".", " ").split() for row in input_ids]
        counts = torch.tensor([[row.count(name) for name in COLOURS] for row in words], dtype=torch.float32)
        return F.normalize(counts, dim=-1)  # (B, C); no colour word: zeros


class LinearHeadModel(nn.Module):
    """A fixed feature map (C, h, w) and embedding = normalise(W @ spatial mean): Grad-CAM has a closed form."""

    def __init__(self, feature_map: Tensor, weight: Tensor) -> None:
        super().__init__()
        self.fixed = nn.Parameter(feature_map)
        self.weight = nn.Parameter(weight)  # (D, C)

    def image_feature_maps(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        feature_map = self.fixed.expand(len(images), -1, -1, -1) + 0.0 * images.sum()  # (B, C, h, w)
        return F.normalize(feature_map.mean(dim=(2, 3)) @ self.weight.T, dim=-1), [feature_map]


def closed_form_gradcam(feature_map: np.ndarray, weight: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Grad-CAM of cos(W mean(A), t) written out: d cos/d e = (t^ - (e^.t^) e^) / |e|, chained by hand."""
    channels, height, width = feature_map.shape
    pooled = feature_map.reshape(channels, -1).mean(axis=1)  # (C,)
    embedding = weight @ pooled
    norm = np.linalg.norm(embedding)
    unit, target = embedding / norm, text / np.linalg.norm(text)
    d_embedding = (target - (unit @ target) * unit) / norm
    channel_weights = weight.T @ d_embedding / (height * width)  # d sim / d A_c, the same at every position
    cam = np.maximum(np.tensordot(channel_weights, feature_map, axes=1), 0)
    return cam / cam.max()


def two_squares(first: str, second: str, size: int = 32, side: int = 8, seed: int = 0) -> tuple[Image.Image, list]:
    """Black image with a ``first`` and a ``second`` coloured square at random, non-overlapping places."""
    rng = np.random.default_rng(seed)
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < 2:
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = (x, y, x + side, y + side)
        if all(box[0] >= b[2] or b[0] >= box[2] or box[1] >= b[3] or b[1] >= box[3] for b in boxes):
            boxes.append(box)
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    for name, box in zip((first, second), boxes):
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=COLOURS[name])
    return image, [tuple(v / size for v in box) for box in boxes]


def test_gradcam_matches_the_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    feature_map = torch.rand(6, 4, 5, generator=generator)  # non-negative, like post-ReLU CNN features
    weight, text = torch.randn(3, 6, generator=generator), torch.randn(3, generator=generator)
    model = LinearHeadModel(feature_map, weight)
    cam = gradcam(model, torch.zeros(1, 3, 8, 8), text)
    assert cam.shape == (4, 5) and cam.dtype == np.float32
    np.testing.assert_allclose(cam, closed_form_gradcam(feature_map.numpy(), weight.numpy(), text.numpy()), atol=1e-5)


def test_gradcam_is_all_zero_when_nothing_is_positive() -> None:
    model = LinearHeadModel(torch.rand(2, 3, 3), torch.eye(2))
    assert not gradcam(model, torch.zeros(1, 3, 4, 4), torch.zeros(2)).any()  # zero target: constant similarity
    assert not normalise_cam(np.full((3, 3), -1.0)).any()
    assert not normalise_cam(np.full((3, 3), np.nan)).any()


def test_gradcam_rejects_a_batch_and_a_matrix_target() -> None:
    model = LinearHeadModel(torch.rand(2, 3, 3), torch.eye(2))
    with pytest.raises(ValueError, match="one preprocessed image"):
        gradcam(model, torch.zeros(2, 3, 4, 4), torch.ones(2))
    with pytest.raises(ValueError, match="one vector"):
        gradcam(model, torch.zeros(1, 3, 4, 4), torch.ones(1, 2))


@pytest.mark.parametrize("method", METHODS)
def test_each_colour_word_points_at_its_own_square(colour_tokenizer: Tokenizer, method: str) -> None:
    model = ColourIndicatorModel(colour_tokenizer)
    for seed, (first, second) in enumerate([("red", "blue"), ("yellow", "green"), ("blue", "green")]):
        image, boxes = two_squares(first, second, seed=seed)
        heatmaps = explain(model, image, f"a {first} and a {second}", method=method)
        assert [h.word for h in heatmaps] == [first, second]
        assert pointing_hits(np.stack([h.heatmap for h in heatmaps]), np.asarray(boxes)).all()
        for item in heatmaps:
            assert item.heatmap.shape == (32, 32) and item.heatmap.dtype == np.float32
            assert item.heatmap.min() >= 0 and item.heatmap.max() == pytest.approx(1.0)


def centroid(heatmap: np.ndarray) -> tuple[float, float]:
    """(x, y) of a heatmap's centre of mass, in pixels (pixel centres at +0.5)."""
    ys, xs = np.indices(heatmap.shape) + 0.5
    return float((xs * heatmap).sum() / heatmap.sum()), float((ys * heatmap).sum() / heatmap.sum())


@pytest.mark.parametrize("shifts", [False, True])
def test_shifted_maps_are_moved_back_onto_the_object(colour_tokenizer: Tokenizer, shifts: bool) -> None:
    # A 4-pixel red square filling feature cell (3, 2) exactly; a shifted pass sees it across two cells,
    # so a pass moved back the wrong way (or not at all) would pull the map's centre off the square's.
    # The blue square makes the similarity to "red" less than 1, so that it has a gradient.
    model = ColourIndicatorModel(colour_tokenizer)
    image = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(image).rectangle([12, 8, 15, 11], fill=COLOURS["red"])
    ImageDraw.Draw(image).rectangle([24, 24, 27, 27], fill=COLOURS["blue"])
    pixels = image_to_tensor(image, model.preprocess_config)[None]
    text = F.one_hot(torch.tensor([list(COLOURS).index("red")]), len(COLOURS)).float()
    heatmaps, scores = shifted_gradcams(model, pixels, text, shifts=shifts)
    assert heatmaps.shape == (1, 32, 32) and scores.shape == (1,) and heatmaps.max() == pytest.approx(1.0)
    x, y = centroid(heatmaps[0])
    assert abs(x - 14.0) < 0.25 and abs(y - 10.0) < 0.25  # a pass left unmoved would be 1 pixel off, reversed 2


def test_all_layers_is_the_mean_of_each_blocks_gradcam_and_last_is_the_last_block() -> None:
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    image, text = torch.randn(1, 3, 64, 64), torch.randn(model.config.embed_dim)
    with torch.enable_grad():
        embedding, feature_maps = model.image_feature_maps(image.requires_grad_(True))
        similarity = embedding[0] @ F.normalize(text, dim=0)
        gradients = torch.autograd.grad(similarity, feature_maps)
    by_hand = []
    for feature_map, gradient in zip(feature_maps, gradients):
        cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * feature_map).sum(dim=1))[0]
        by_hand.append(normalise_cam(cam.detach().numpy()))
    np.testing.assert_allclose(gradcam(model, image, text, layers="last"), by_hand[-1], atol=1e-5)
    np.testing.assert_allclose(gradcam(model, image, text), normalise_cam(np.mean(by_hand, axis=0)), atol=1e-5)
    with pytest.raises(ValueError, match="layers must be one of all, last"):
        gradcam(model, image, text, layers="first")


def test_the_contribution_of_a_word_is_zero_on_the_other_square(colour_tokenizer: Tokenizer) -> None:
    model = ColourIndicatorModel(colour_tokenizer)
    image, boxes = two_squares("red", "blue", seed=3)
    red = explain(model, image, "red and blue", ["red"])[0].heatmap
    x0, y0, x1, y1 = (round(v * 32) for v in boxes[1])
    assert red[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].max() == 0  # the blue square's inside, away from upsampling blur


def test_pointing_game_and_its_random_baseline(colour_tokenizer: Tokenizer) -> None:
    model = ColourIndicatorModel(colour_tokenizer)
    scenes = []
    for seed in range(4):
        image, boxes = two_squares("green", "yellow", seed=seed)
        scenes.append(PointingScene(image, "yellow", boxes[1], "green and yellow"))
    assert pointing_game(model, scenes) == 1.0
    assert pointing_game(model, [(s.image, "yellow", s.box) for s in scenes]) == 1.0  # asked inside the template
    assert pointing_game(model, [(s.image, "green", s.box, s.caption) for s in scenes]) < 0.5  # the wrong square
    assert random_peak_baseline(np.array([s.box for s in scenes]), 32) == pytest.approx(64 / 1024)


# ---- queries: content words, phrases, deleted tokens ------------------------------------------------------------


@pytest.fixture(scope="module")
def word_model() -> nn.Module:
    """A real tiny SoftCLIP (untrained) with a tokenizer that knows the test captions' words."""
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    captions = ["a red circle left of a blue star.", "the one on the left of it", "a photo of a red, circle and star"]
    model.tokenizer = Tokenizer.train(captions * 4, vocab_size=400, min_frequency=1)
    model.preprocess_config = PreprocessConfig(size=64)
    return model


def test_stop_words_are_skipped_and_adjacent_content_words_form_phrases(word_model: nn.Module) -> None:
    queries = find_queries(word_model, "A red circle left of a blue star.")
    assert [q.text for q in queries] == ["red", "circle", "red circle", "blue", "star", "blue star"]
    without_phrases = find_queries(word_model, "A red circle left of a blue star.", phrases=False)
    assert [q.text for q in without_phrases] == ["red", "circle", "blue", "star"]
    # punctuation ends a phrase; a repeated word is one query covering both occurrences
    queries = find_queries(word_model, "red, circle and red star")
    assert [q.text for q in queries] == ["red", "circle", "star", "red star"]
    assert len(queries[0].spans) == 2


def test_requested_words_and_phrases_are_found_in_any_case(word_model: nn.Module) -> None:
    queries = find_queries(word_model, "a red circle left of a blue star", ["Blue star", "left"])
    assert [q.text for q in queries] == ["Blue star", "left"]
    with pytest.raises(ValueError, match="'green' is not a word or phrase"):
        find_queries(word_model, "a red circle", ["green"])
    with pytest.raises(ValueError, match="non-empty strings"):
        find_queries(word_model, "a red circle", [" "])
    with pytest.raises(ValueError, match="words is empty"):
        find_queries(word_model, "a red circle", [])
    assert [q.text for q in find_queries(word_model, "a red circle", "circle")] == ["circle"]  # one word, not letters


@pytest.mark.parametrize("caption", ["", "   "])
def test_an_empty_caption_is_refused(word_model: nn.Module, caption: str) -> None:
    with pytest.raises(ValueError, match="caption must be a non-empty string"):
        explain(word_model, Image.new("RGB", (64, 64)), caption)


def test_a_caption_of_stop_words_only_is_refused(word_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="no content words"):
        find_queries(word_model, "the one on the left of it")


def test_query_rows_delete_exactly_the_words_tokens(word_model: nn.Module) -> None:
    tokenizer, caption = word_model.tokenizer, "a red circle left of a blue star"
    queries = find_queries(word_model, caption, ["red", "blue star"])
    contribution = query_token_rows(tokenizer, caption, queries, "contribution", 32, "{}")
    assert [tokenizer.decode(row) for row in contribution] == [
        caption,
        "a circle left of a blue star",
        "a red circle left of a",
    ]
    isolate = query_token_rows(tokenizer, caption, queries, "isolate", 32, "{}")
    assert [tokenizer.decode(row) for row in isolate] == ["a red left of a", "a left of a blue star"]
    assert (isolate[:, 0] == 1).all() and (contribution == 2).sum() == 3  # start and end tokens are kept
    template = query_token_rows(tokenizer, caption, queries, "template", 32, "a photo of {}.")
    assert [tokenizer.decode(row) for row in template] == ["a photo of red.", "a photo of blue star."]
    with pytest.raises(ValueError, match="longer than the text context"):
        query_token_rows(tokenizer, caption, queries, "template", 5, "a photo of {}.")


# ---- real towers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "grid"), [("tiny-vit", 8), ("tiny-rn", 2)])
def test_gradcam_on_real_towers_is_a_grid_in_unit_range(preset: str, grid: int) -> None:
    torch.manual_seed(0)
    model = create_model(preset).train()
    size = model.config.vision.image_size
    cams, scores = gradcams(model, torch.randn(1, 3, size, size), torch.randn(3, model.config.embed_dim))
    assert cams.shape == (3, grid, grid) and scores.shape == (3,)
    assert cams.min() >= 0 and set(cams.max(axis=(1, 2)).round(5)) <= {0.0, 1.0}  # peak 1, or all zero
    assert model.training  # the caller's mode comes back
    assert all(p.grad is None for p in model.parameters())  # only the feature map was differentiated


def test_explain_on_a_real_model_gives_one_image_sized_map_per_query(word_model: nn.Module) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    heatmaps = explain(word_model, image, "a red circle left of a blue star", method="contribution")
    assert [h.word for h in heatmaps] == ["red", "circle", "red circle", "blue", "star", "blue star"]
    for item in heatmaps:
        assert item.heatmap.shape == (64, 64) and item.heatmap.dtype == np.float32
        assert 0 <= item.heatmap.min() and item.heatmap.max() <= 1 and -1 <= item.score <= 1


def test_maps_do_not_depend_on_how_many_rows_are_differentiated_at_once(word_model: nn.Module, monkeypatch) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    caption = "a red circle left of a blue star"
    whole = explain(word_model, image, caption)  # 6 words x 4 shifts = 24 rows: two batches of 16 rows
    monkeypatch.setattr("softclip.gradcam.MAX_ROWS", 5)
    chunked = explain(word_model, image, caption)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)
        assert a.score == pytest.approx(b.score, abs=1e-5)


# ---- drawing -----------------------------------------------------------------------------------------------------


def test_colormap_runs_from_dark_blue_to_red() -> None:
    assert COLORMAP.shape == (256, 3) and COLORMAP.dtype == np.uint8
    low, high = COLORMAP[0].astype(int), COLORMAP[255].astype(int)
    assert low.sum() < 200 and low[2] > low[0]  # dark, bluish
    assert high[0] > 2 * high[1] and high[0] > 2 * high[2]  # red
    assert (colorize(np.array([[0.0, 1.0], [np.nan, 2.0]])) == COLORMAP[[[0, 255], [0, 255]]]).all()


def test_overlay_keeps_the_image_size_and_blends_by_alpha() -> None:
    image = Image.new("RGB", (40, 30), (200, 200, 200))
    heatmap = np.zeros((30, 40), np.float32)
    heatmap[15, 20] = 1.0
    pure = np.asarray(overlay(image, heatmap, alpha=1.0))
    assert (pure[15, 20] == COLORMAP[255]).all() and (pure[0, 0] == COLORMAP[0]).all()
    half = np.asarray(overlay(image, heatmap, alpha=0.5)).astype(int)
    assert np.abs(half[15, 20] - (200 + COLORMAP[255].astype(int)) / 2).max() <= 1
    coarse = overlay(image, heatmap[::5, ::5], alpha=0.5)  # a [6, 8] map is resized to the image
    assert coarse.size == (40, 30) and coarse.mode == "RGB"
    assert np.array_equal(np.asarray(overlay(image, heatmap, alpha=0.0)), np.asarray(image))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, heatmap, alpha=1.5)
    with pytest.raises(ValueError, match="2-D"):
        overlay(image, np.zeros(5))


def test_panel_is_a_labelled_grid_of_overlays() -> None:
    image = Image.new("RGB", (64, 64), "gray")
    heatmaps = [
        WordHeatmap(word, np.random.default_rng(i).random((64, 64), np.float32), 0.0)
        for i, word in enumerate(["red", "circle", "red circle", "blue", "star"])
    ]
    grid = panel(image, heatmaps, columns=4)  # 6 tiles: the input and 5 overlays, 128 px each plus a label strip
    assert grid.size == (4 * 128, 2 * (128 + 18))
    pixels = np.asarray(grid)
    label_strip = pixels[128:146, :128]
    assert (label_strip < 100).any()  # text was drawn under the first tile
    assert (pixels[146 + 10, 2 * 128 + 10] == 255).all()  # the unused last cell stays white
    assert panel(image, [], columns=4).size == (128, 146)


def test_explain_panel_draws_one_tile_per_word(colour_tokenizer: Tokenizer) -> None:
    model = ColourIndicatorModel(colour_tokenizer)
    image, _ = two_squares("red", "blue")
    assert explain_panel(model, image, "a red and a blue").size == (3 * 128, 128 + 18)


def test_pointing_hits_uses_the_first_peak_pixel_centre() -> None:
    heatmaps = np.zeros((3, 4, 4), np.float32)
    heatmaps[0, 1, 2] = 1  # centre (x, y) = (0.625, 0.375)
    heatmaps[1, 3, 0] = 1  # centre (0.125, 0.875)
    boxes = np.array([[0.5, 0.25, 0.75, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.125, 0.125]])
    assert pointing_hits(heatmaps, boxes).tolist() == [True, False, True]  # all-zero: the first pixel, on the edge
    with pytest.raises(ValueError, match="boxes must be"):
        pointing_hits(heatmaps, boxes[:2])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pointing_hits(heatmaps, boxes * 2)


def test_random_peak_baseline_counts_pixel_centres() -> None:
    assert random_peak_baseline(np.array([[0.0, 0.0, 0.5, 0.5]]), 4) == pytest.approx(0.25)
    # the small box holds one centre of 4 per axis: (1 + 1/16) / 2
    assert random_peak_baseline(np.array([[0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.4]]), 4) == pytest.approx(17 / 32)


# ---- a trained tiny model ----------------------------------------------------------------------------------------

TOY_SIZE = 32
TOY_CONFIG = {
    "name": "toy",
    "embed_dim": 32,
    "vision": {"kind": "vit", "image_size": TOY_SIZE, "width": 64, "layers": 1, "heads": 2, "patch_size": 4},
    "text": {"context_length": 12, "vocab_size": 300, "width": 64, "heads": 2, "layers": 1},
    "roi_dim": 8,
}


def test_vit_maps_are_each_blocks_normalised_tokens_and_give_the_embedding() -> None:
    torch.manual_seed(0)
    model = SoftCLIP(load_config("tiny-vit")).eval()
    images = torch.randn(2, 3, 64, 64)
    embedding, feature_maps = model.image_feature_maps(images)
    assert [tuple(m.shape) for m in feature_maps] == [(2, 192, 8, 8)] * 4  # one per block
    torch.testing.assert_close(embedding, model.encode_image(images), atol=1e-5, rtol=1e-4)


def random_pair(rng: np.random.Generator) -> list[str]:
    return [str(name) for name in rng.choice(list(COLOURS), size=2, replace=False)]


def contrastive_step(model: nn.Module, images: Tensor, captions: list[list[str]]) -> Tensor:
    """CLIP loss where every caption naming the same colours as image i's counts as i's match."""
    logits = (
        model.logit_scale.exp()
        * model.encode_image(images)
        @ model.encode_text(model.tokenizer([" and ".join(names) for names in captions], 12)).T
    )
    keys = [frozenset(names) for names in captions]
    same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32)
    targets = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train_toy(tokenizer: Tokenizer, steps: int, batch: int = 64, seed: int = 0) -> nn.Module:
    """A 1-block ViT on black images with two coloured squares, captioned "red and blue" (either order)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SoftCLIP(load_config(TOY_CONFIG))
    model.tokenizer = tokenizer
    model.preprocess_config = PreprocessConfig(size=TOY_SIZE, resize_mode="squash")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(steps):
        captions = [random_pair(rng) for _ in range(batch)]
        seeds = rng.integers(1 << 30, size=batch)
        images = [two_squares(*names, size=TOY_SIZE, seed=int(seed))[0] for names, seed in zip(captions, seeds)]
        loss = contrastive_step(
            model,
            torch.stack([image_to_tensor(i, model.preprocess_config) for i in images]),
            [list(rng.permutation(names)) for names in captions],
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One CPU thread: the same float sums on every machine, and the other cores stay free."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_model_points_at_the_named_colour(colour_tokenizer: Tokenizer, one_thread: None) -> None:
    model = train_toy(colour_tokenizer, steps=150)
    rng = np.random.default_rng(123)
    right, wrong = [], []  # the named square's box, and the other square's
    for index in range(40):
        names, named = random_pair(rng), index % 2
        image, boxes = two_squares(*names, size=TOY_SIZE, seed=10_000 + index)
        right.append(PointingScene(image, names[named], boxes[named], " and ".join(names)))
        wrong.append(PointingScene(image, names[named], boxes[1 - named], " and ".join(names)))
    hit_rate, wrong_rate = pointing_game(model, right), pointing_game(model, wrong)
    baseline = random_peak_baseline(np.array([scene.box for scene in right]), TOY_SIZE)
    assert hit_rate >= 0.6 and hit_rate > 5 * baseline and hit_rate > 2 * wrong_rate, (hit_rate, wrong_rate, baseline)


def test_cli_writes_a_heatmap_panel(tmp_path) -> None:
    from PIL import Image

    from softclip import create_model
    from softclip.cli import main

    checkpoint = create_model("tiny-rn").save_pretrained(tmp_path / "ckpt")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "red.png")
    out = tmp_path / "heat.png"
    assert (
        main(["explain", str(tmp_path / "red.png"), "a red circle", "--model", str(checkpoint), "--out", str(out)]) == 0
    )
    panel = Image.open(out)
    assert panel.width > 64 and panel.height >= 64
    bad_layers = ["explain", str(tmp_path / "red.png"), "a red circle", "--model", str(checkpoint), "--layers", "first"]
    assert main([*bad_layers, "--out", str(tmp_path / "bad.png")]) == 2
    assert not (tmp_path / "bad.png").exists()
