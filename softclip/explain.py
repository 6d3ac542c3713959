"""Grad-CAM heatmaps: which regions of an image each word of a caption points at.

Grad-CAM here targets the cosine similarity between the image embedding and a text embedding, taken at
the spatial feature map ``A`` that ``model.image_feature_map`` returns with the embedding computed from it:
``w_c = mean_xy d(sim)/dA_cxy`` and ``cam = relu(sum_c w_c A_c)``, divided by its peak (all zeros when
nothing is positive), then upsampled bilinearly to the preprocessed (resized, centre-cropped) image.

Which words: every content word of the caption, i.e. every word not in ``STOP_WORDS`` (articles,
prepositions, conjunctions, pronouns, forms of "to be", spatial relation words such as "left" or "above",
counts, and the framing words of prompts such as "photo"), plus short phrases: runs of 2 to
``MAX_PHRASE_WORDS`` content words separated only by spaces ("red circle", "large red circle").
Spatial words are skipped because a relation is not a region: "left of" is true of two objects at once.

How a word becomes a text embedding, queried in its caption's context (``method``):

- ``"contribution"`` (default): the caption's embedding minus the embedding of the caption with the
  word's tokens deleted. Grad-CAM of its cosine with the image is Grad-CAM of how much the caption's
  match with the image drops without the word. The difference also cancels the direction that all text
  sharing the rest of the caption has, which would otherwise light up the same region for every word.
- ``"isolate"``: the caption with every *other* content word deleted (stop words and the word stay).
- ``"template"``: the word alone in a short prompt (``DEFAULT_TEMPLATE``), without the caption.

Words are located by ``Tokenizer.word_spans``, so deleting a word deletes exactly its tokens. The default
comes from the pointing game on two kinds of trained ViT. On scenes of 2-4 coloured shapes (the tiny-vit
preset after 600 CLIP steps of batch 64; 150 scenes, random peak 8%), with one object's "colour shape"
named inside a caption listing every object, contribution and isolate tie (56% and 57%) and template
trails (47%); with the query alone in ``DEFAULT_TEMPLATE`` as its context (``pointing_game`` without a
caption), contribution reaches 65% where the prompt's own embedding (isolate, template) gets 47%. On toy
scenes of two coloured squares (4 training seeds, random peak 6%) contribution and isolate again tie
(73% and 72%) ahead of template (62%).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from softclip.tokenizer import Tokenizer, WordSpan
from softclip.transform import PreprocessConfig, image_to_tensor, load_image, resize_and_crop

# Words that name no region of an image. Colours, shapes, objects, materials and sizes are content.
STOP_WORDS = frozenset(
    # articles, determiners, pronouns
    "a an the this that these those some any each every its it their there here"
    # prepositions and conjunctions
    " of on in at to for from with without by as into onto upon and or but nor than"
    # forms of "to be" and "to have"
    " is are was were be been being am has have had"
    # spatial relations: true of two regions at once
    " left right above below under over beneath behind beside besides near next between"
    " top bottom front back middle center centre side inside outside around against along across"
    # counts
    " no one two three four five six seven eight nine ten several many few"
    # the framing words of prompts
    " photo picture image drawing rendering shapes scene simple".split()
)
MAX_PHRASE_WORDS = 3
METHODS = ("contribution", "isolate", "template")
DEFAULT_METHOD = "contribution"
DEFAULT_TEMPLATE = "a photo of {}."

# Colour map control points (position in [0, 1], RGB): dark indigo through blue, cyan, green and yellow
# to dark red, roughly even in lightness steps so that low values stay dark and the peak stands out.
_COLORMAP_POINTS = (
    (0.00, (40, 20, 70)),
    (0.12, (60, 80, 200)),
    (0.28, (30, 160, 240)),
    (0.42, (40, 220, 170)),
    (0.55, (120, 245, 80)),
    (0.68, (220, 225, 40)),
    (0.80, (250, 150, 30)),
    (0.92, (215, 60, 15)),
    (1.00, (130, 10, 5)),
)
_MIN_TILE = 128  # panel tiles are at least this many pixels wide, so 64-pixel inputs stay legible
_LABEL_HEIGHT = 18


@dataclass
class WordHeatmap:
    """One query's heatmap over the preprocessed image."""

    word: str  # the word or phrase as written in the caption
    heatmap: np.ndarray  # float32 [H, W] in [0, 1], H = W = the preprocessed image's side
    score: float  # cosine similarity of the image embedding and the query's text embedding (see ``METHODS``)


class PointingScene(NamedTuple):
    """An image, a query naming one region, and that region's box in the preprocessed frame."""

    image: str | Path | Image.Image
    query: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the preprocessed image side
    caption: str | None = None  # the context the query is asked in; None: the query inside a prompt template


class Query(NamedTuple):
    """A word or phrase of a caption: its text as written and the spans of all its occurrences."""

    text: str
    spans: tuple[WordSpan, ...]

    @property
    def positions(self) -> set[int]:
        """Token positions of every occurrence, in the caption's row."""
        return {position for span in self.spans for position in span.token_positions}


# ---- Grad-CAM ----------------------------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm and dropout as at inference; the model's own mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """``cam`` divided by its maximum; all zeros when nothing is positive (or the map is not finite)."""
    peak = float(cam.max()) if cam.size else 0.0
    if not math.isfinite(peak) or peak <= 0.0:
        return np.zeros_like(cam, dtype=np.float32)
    return (np.clip(cam, 0.0, None) / peak).astype(np.float32)


def _cam(feature_map: Tensor, gradient: Tensor) -> np.ndarray:
    """Grad-CAM of one image: feature map and its gradient (1, C, h, w) -> [h, w] in [0, 1]."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1): each channel's importance
    cam = F.relu((weights * feature_map).sum(dim=1))[0]  # (h, w)
    return normalise_cam(cam.detach().float().cpu().numpy())


def _check_image_tensor(image_tensor: Tensor) -> None:
    if not isinstance(image_tensor, Tensor) or image_tensor.ndim != 4 or image_tensor.shape[:2] != (1, 3):
        shape = list(image_tensor.shape) if isinstance(image_tensor, Tensor) else type(image_tensor).__name__
        raise ValueError(f"image_tensor must be one preprocessed image [1, 3, H, W], got {shape}")


def gradcams(model: nn.Module, image_tensor: Tensor, text_embeddings: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of one image for several text embeddings: ([Q, h, w] in [0, 1], [Q] cosine similarities).

    One forward pass; one backward pass per text embedding. A zero text embedding gives an all-zero map.
    """
    _check_image_tensor(image_tensor)
    text_embeddings = torch.as_tensor(text_embeddings)
    if text_embeddings.ndim != 2:
        raise ValueError(f"text_embeddings must be [Q, D], got {list(text_embeddings.shape)}")
    targets = F.normalize(text_embeddings.detach().float(), dim=-1)  # (Q, D)
    with _eval_mode(model), torch.enable_grad():
        # Pixels that need a gradient give the feature map a graph even when every weight is frozen.
        pixels = image_tensor.detach().float().requires_grad_(True)
        embedding, feature_map = model.image_feature_map(pixels)  # (1, D) L2-normalised, (1, C, h, w)
        similarities = embedding[0].float() @ targets.to(embedding.device).T  # (Q,)
        cams = [_cam(feature_map, _gradient(similarity, feature_map)) for similarity in similarities]
    height, width = feature_map.shape[-2:]
    stacked = np.stack(cams) if cams else np.zeros((0, height, width), np.float32)
    return stacked, similarities.detach().cpu().numpy().astype(np.float32)


def _gradient(similarity: Tensor, feature_map: Tensor) -> Tensor:
    """d(similarity)/d(feature_map); zeros where the similarity does not depend on it (e.g. a zero target)."""
    if not similarity.requires_grad:
        return torch.zeros_like(feature_map)
    gradient = torch.autograd.grad(similarity, feature_map, retain_graph=True, allow_unused=True)[0]
    return torch.zeros_like(feature_map) if gradient is None else gradient


def gradcam(model: nn.Module, image_tensor: Tensor, text_embedding: Tensor) -> np.ndarray:
    """Grad-CAM ``[h, w]`` in [0, 1] of the cosine similarity between the image and ``text_embedding`` [D].

    ``image_tensor`` is one preprocessed image ``[1, 3, H, W]``; ``h, w`` is the feature map's grid.
    """
    text_embedding = torch.as_tensor(text_embedding)
    if text_embedding.ndim != 1:
        raise ValueError(f"text_embedding must be one vector [D], got {list(text_embedding.shape)}")
    return gradcams(model, image_tensor, text_embedding[None])[0][0]


def upsample(cams: np.ndarray, size: int) -> np.ndarray:
    """[Q, h, w] maps -> float32 [Q, size, size], bilinear, each rescaled so its peak is 1 again."""
    if len(cams) == 0:
        return np.zeros((0, size, size), np.float32)
    resized = F.interpolate(torch.from_numpy(cams)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return np.stack([normalise_cam(cam) for cam in resized[:, 0].numpy()])


# ---- queries: which words, and the text embedding of each ---------------------------------------------------------


def _is_content(span: WordSpan) -> bool:
    return span.word.lower() not in STOP_WORDS


def _phrase_runs(caption: str, spans: list[WordSpan]) -> list[list[WordSpan]]:
    """Maximal runs of content words separated only by whitespace."""
    runs: list[list[WordSpan]] = []
    for span in spans:
        if not _is_content(span):
            runs.append([])
        elif runs and runs[-1] and not caption[runs[-1][-1].end : span.start].strip():
            runs[-1].append(span)
        else:
            runs.append([span])
    return [run for run in runs if run]


def _written(caption: str, run: Sequence[WordSpan]) -> str:
    return caption[run[0].start : run[-1].end]


def _occurrences(spans: list[WordSpan], words: list[str]) -> tuple[WordSpan, ...]:
    """Every span of ``spans`` that is part of a match of the lower-case word sequence ``words``."""
    found: list[WordSpan] = []
    for start in range(len(spans) - len(words) + 1):
        window = spans[start : start + len(words)]
        if [span.word.lower() for span in window] == words:
            found.extend(window)
    return tuple(found)


def content_queries(caption: str, spans: list[WordSpan], phrases: bool = True) -> list[Query]:
    """The caption's content words (each once) and, with ``phrases``, its short phrases, in reading order."""
    queries: dict[str, Query] = {}
    for run in _phrase_runs(caption, spans):
        for span in run:
            key = span.word.lower()
            queries.setdefault(key, Query(span.word, _occurrences(spans, [key])))
        if phrases and 2 <= len(run) <= MAX_PHRASE_WORDS:
            key = " ".join(span.word.lower() for span in run)
            queries.setdefault(key, Query(_written(caption, run), _occurrences(spans, key.split())))
    return list(queries.values())


def requested_queries(tokenizer: Tokenizer, caption: str, spans: list[WordSpan], words: Sequence[str]) -> list[Query]:
    """``words`` (words or phrases of the caption, any case) as queries; a clear error for any not found."""
    queries = []
    for requested in words:
        if not isinstance(requested, str) or not requested.strip():
            raise ValueError(f"words must be non-empty strings, got {requested!r}")
        parts = [span.word.lower() for span in tokenizer.word_spans(requested)]
        occurrences = _occurrences(spans, parts) if parts else ()
        if not occurrences:
            raise ValueError(f"{requested!r} is not a word or phrase of the caption {caption!r}")
        queries.append(Query(requested.strip(), occurrences))
    return queries


def _without(row: Tensor, positions: set[int], tokenizer: Tokenizer) -> Tensor:
    """A [L] id row with the tokens at ``positions`` deleted, the rest (up to the end token) moved up and padded."""
    end = int((row == tokenizer.end_id).int().argmax())
    kept = [i for i in range(end + 1) if i not in positions]
    shortened = torch.full_like(row, tokenizer.settings.pad_id)
    shortened[: len(kept)] = row[kept]
    return shortened


def template_rows(tokenizer: Tokenizer, queries: list[Query], template: str, context_length: int) -> Tensor:
    """[Q, L] rows of ``template`` filled with each query; an error when a prompt does not fit the context."""
    prompts = [template.format(query.text) for query in queries]
    for prompt in prompts:
        if len(tokenizer.word_spans(prompt, context_length)) < len(tokenizer.word_spans(prompt, 1 << 16)):
            raise ValueError(f"the prompt {prompt!r} is longer than the text context ({context_length} tokens)")
    return tokenizer(prompts, context_length)


def query_token_rows(
    tokenizer: Tokenizer, caption: str, queries: list[Query], method: str, context_length: int, template: str
) -> Tensor:
    """Token rows to embed: [1 + Q, L] for "contribution" (the caption first), else [Q, L]."""
    if method == "template":
        return template_rows(tokenizer, queries, template, context_length)
    row = tokenizer(caption, context_length)[0]  # (L,)
    if method == "contribution":
        return torch.stack([row] + [_without(row, query.positions, tokenizer) for query in queries])
    spans = tokenizer.word_spans(caption, context_length)
    content = {position for span in spans if _is_content(span) for position in span.token_positions}
    return torch.stack([_without(row, content - query.positions, tokenizer) for query in queries])


@torch.no_grad()
def query_embeddings(
    model: nn.Module,
    caption: str,
    queries: list[Query],
    method: str = DEFAULT_METHOD,
    template: str = DEFAULT_TEMPLATE,
) -> Tensor:
    """One text embedding [Q, D] per query, by ``method`` (see the module docstring); not normalised."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tokenizer, context_length = _tokenizer(model), model.config.text.context_length
    rows = query_token_rows(tokenizer, caption, queries, method, context_length, template)
    with _eval_mode(model):
        embeddings = model.encode_text(rows.to(_device(model))).float()
    if method == "contribution":
        return embeddings[:1] - embeddings[1:]  # what each query adds to the caption's embedding
    return embeddings


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _tokenizer(model: nn.Module) -> Tokenizer:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer: load it with from_pretrained or set model.tokenizer")
    return tokenizer


def _preprocess_config(model: nn.Module) -> PreprocessConfig:
    """The model's preprocessing, or the trainer's default for its input size when none is attached."""
    config = getattr(model, "preprocess_config", None)
    return config if config is not None else PreprocessConfig(size=model.config.vision.image_size)


# ---- explain -----------------------------------------------------------------------------------------------------


def find_queries(
    model: nn.Module, caption: str, words: Sequence[str] | None = None, phrases: bool = True
) -> list[Query]:
    """The queries ``explain`` would make for ``caption``: ``words`` if given, else its content words and phrases."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be a non-empty string, got {caption!r}")
    tokenizer = _tokenizer(model)
    spans = tokenizer.word_spans(caption, model.config.text.context_length)
    if isinstance(words, str):
        words = [words]
    if words is not None and len(words) == 0:
        raise ValueError("words is empty: name at least one word, or pass None for the caption's content words")
    if words is not None:
        return requested_queries(tokenizer, caption, spans, words)
    queries = content_queries(caption, spans, phrases)
    if not queries:
        stop = ", ".join(span.word for span in spans) or "no words"
        raise ValueError(f"caption {caption!r} has no content words ({stop}); name the words to explain with words=")
    return queries


def explain(
    model: nn.Module,
    image: str | Path | Image.Image,
    caption: str,
    words: Sequence[str] | None = None,
    *,
    method: str = DEFAULT_METHOD,
    phrases: bool = True,
    template: str = DEFAULT_TEMPLATE,
) -> list[WordHeatmap]:
    """One Grad-CAM heatmap per content word and short phrase of ``caption`` (or per entry of ``words``).

    ``image`` is a path or a PIL image; heatmaps are over the preprocessed (resized, centre-cropped) image,
    ``[size, size]`` float32 in [0, 1]. ``words`` are words or phrases of the caption to explain instead.
    ``method`` and ``template`` choose how a word becomes a text embedding (see the module docstring).
    """
    queries = find_queries(model, caption, words, phrases)
    config = _preprocess_config(model)
    pixels = image_to_tensor(load_image(image), config)[None].to(_device(model))  # (1, 3, size, size)
    cams, scores = gradcams(model, pixels, query_embeddings(model, caption, queries, method, template))
    heatmaps = upsample(cams, config.size)
    return [WordHeatmap(q.text, heatmap, float(score)) for q, heatmap, score in zip(queries, heatmaps, scores)]


def explain_panel(
    model: nn.Module,
    image: str | Path | Image.Image,
    caption: str,
    words: Sequence[str] | None = None,
    *,
    method: str = DEFAULT_METHOD,
    alpha: float = 0.5,
) -> Image.Image:
    """The preprocessed image next to one heatmap overlay per word of ``caption`` (see ``explain``), as one image."""
    source = load_image(image)
    heatmaps = explain(model, source, caption, words, method=method)
    return panel(resize_and_crop(source, _preprocess_config(model)), heatmaps, alpha)


# ---- drawing -----------------------------------------------------------------------------------------------------


def _colormap_table() -> np.ndarray:
    """[256, 3] uint8 lookup table interpolated between ``_COLORMAP_POINTS``."""
    positions = np.array([position for position, _ in _COLORMAP_POINTS])
    colours = np.array([colour for _, colour in _COLORMAP_POINTS], dtype=np.float64)  # (P, 3)
    steps = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(steps, positions, colours[:, channel]) for channel in range(3)], axis=1)
    return np.rint(table).astype(np.uint8)


COLORMAP = _colormap_table()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> uint8 RGB [H, W, 3] through ``COLORMAP``; NaN counts as 0."""
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    indices = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.int64)
    return COLORMAP[indices]


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be a 2-D [H, W] array, got shape {heatmap.shape}")
    return heatmap


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` blended with the coloured ``heatmap`` ([H, W] in [0, 1], resized to the image bilinearly).

    ``alpha`` is the heatmap's weight: 0 gives the image, 1 the coloured heatmap alone.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.asarray(load_image(image), dtype=np.float32)  # (H, W, 3)
    heatmap = _check_heatmap(heatmap)
    if heatmap.shape != rgb.shape[:2]:
        size = rgb.shape[:2]
        heatmap = F.interpolate(torch.from_numpy(heatmap)[None, None], size=size, mode="bilinear")[0, 0].numpy()
    blended = (1.0 - alpha) * rgb + alpha * colorize(heatmap).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text``, shortened with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _tile(picture: Image.Image, label: str, side: int, font: ImageFont.ImageFont) -> Image.Image:
    """``picture`` scaled to ``side`` with ``label`` written underneath on white."""
    tile = Image.new("RGB", (side, side + _LABEL_HEIGHT), "white")
    tile.paste(picture.resize((side, side), Image.Resampling.BICUBIC), (0, 0))
    draw = ImageDraw.Draw(tile)
    draw.text((3, side + 3), _fit_text(draw, label, side - 6, font), fill="black", font=font)
    return tile


def panel(
    image: Image.Image, word_heatmaps: Sequence[WordHeatmap], alpha: float = 0.5, columns: int = 4
) -> Image.Image:
    """A grid: ``image`` (labelled "input") then one overlay per heatmap, each labelled with its word."""
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    image = load_image(image)
    side = max(image.width, _MIN_TILE)
    font = ImageFont.load_default()
    pictures = [("input", image)] + [(item.word, overlay(image, item.heatmap, alpha)) for item in word_heatmaps]
    tiles = [_tile(picture, label, side, font) for label, picture in pictures]
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new("RGB", (columns * side, rows * (side + _LABEL_HEIGHT)), "white")
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % columns) * side, (index // columns) * (side + _LABEL_HEIGHT)))
    return grid


# ---- pointing game -----------------------------------------------------------------------------------------------


def _check_boxes(boxes: np.ndarray, count: int | None = None) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or (count is not None and len(boxes) != count):
        expected = f"[{count}, 4]" if count is not None else "[N, 4]"
        raise ValueError(f"boxes must be {expected} (x0, y0, x1, y1), got shape {boxes.shape}")
    if boxes.size and (boxes.min() < 0 or boxes.max() > 1 or (boxes[:, 2:] < boxes[:, :2]).any()):
        raise ValueError("boxes must be x0 <= x1, y0 <= y1, all in [0, 1] (fractions of the image side)")
    return boxes


def pointing_hits(heatmaps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether each heatmap's peak lies in its box: heatmaps [N, H, W], boxes [N, 4] x0,y0,x1,y1 in [0, 1] -> bool [N].

    The peak is the first maximal pixel (row-major), taken at its centre; box edges count as inside.
    """
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must be [N, H, W], got shape {heatmaps.shape}")
    boxes = _check_boxes(boxes, len(heatmaps))
    n, height, width = heatmaps.shape
    peak = heatmaps.reshape(n, -1).argmax(axis=1)
    y = (peak // width + 0.5) / height
    x = (peak % width + 0.5) / width
    return (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])


def random_peak_baseline(boxes: np.ndarray, size: int) -> float:
    """The pointing game's expected hit rate when each peak is a uniformly random pixel of a ``size x size`` map.

    Exact for ``pointing_hits``: for each box, the fraction of pixel centres inside it, averaged over boxes.
    """
    boxes = _check_boxes(boxes)
    if len(boxes) == 0:
        raise ValueError("random_peak_baseline needs at least one box")
    centres = (np.arange(size) + 0.5) / size
    inside_x = ((centres[None] >= boxes[:, :1]) & (centres[None] <= boxes[:, 2:3])).mean(axis=1)
    inside_y = ((centres[None] >= boxes[:, 1:2]) & (centres[None] <= boxes[:, 3:4])).mean(axis=1)
    return float((inside_x * inside_y).mean())


def pointing_game(
    model: nn.Module,
    scenes: Iterable[PointingScene | tuple],
    method: str = DEFAULT_METHOD,
    template: str = DEFAULT_TEMPLATE,
) -> float:
    """Fraction of scenes whose query heatmap peaks inside the scene's box (see ``pointing_hits``).

    Each scene is a ``PointingScene`` or a tuple ``(image, query, box)`` or ``(image, query, box, caption)``;
    the query is explained in its caption's context, or inside ``template`` when the scene has no caption.
    """
    heatmaps, boxes = [], []
    for scene in scenes:
        scene = PointingScene(*scene)
        caption = scene.caption if scene.caption is not None else template.format(scene.query)
        heatmaps.append(
            explain(model, scene.image, caption, [scene.query], method=method, template=template)[0].heatmap
        )
        boxes.append(scene.box)
    if not heatmaps:
        raise ValueError("pointing_game needs at least one scene")
    return float(pointing_hits(np.stack(heatmaps), np.asarray(boxes)).mean())
