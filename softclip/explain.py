"""Grad-CAM heatmaps: which regions of an image each word of a caption points at.

``explain`` finds the words (``softclip.word_queries``), embeds each in its caption's context, takes one
Grad-CAM per word (``softclip.gradcam``) and returns the heatmaps over the preprocessed image;
``explain_panel`` draws them (``softclip.heatmaps``). How the default method was chosen:
``docs/results.md`` (the pointing game, ``softclip.pointing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from torch import nn

from softclip.gradcam import DEFAULT_LAYERS, shifted_gradcams
from softclip.heatmaps import WordHeatmap, panel
from softclip.transform import PreprocessConfig, image_to_tensor, load_image, resize_and_crop
from softclip.word_queries import (
    DEFAULT_METHOD,
    DEFAULT_TEMPLATE,
    Query,
    content_queries,
    model_device,
    model_tokenizer,
    query_embeddings,
    requested_queries,
)


def _preprocess_config(model: nn.Module) -> PreprocessConfig:
    """The model's preprocessing, or the trainer's default for its input size when none is attached."""
    config = getattr(model, "preprocess_config", None)
    return config if config is not None else PreprocessConfig(size=model.config.vision.image_size)


def find_queries(
    model: nn.Module, caption: str, words: Sequence[str] | None = None, phrases: bool = True
) -> list[Query]:
    """The queries ``explain`` would make for ``caption``: ``words`` if given, else its content words and phrases."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be a non-empty string, got {caption!r}")
    tokenizer = model_tokenizer(model)
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
    layers: str = DEFAULT_LAYERS,
    shifts: bool = True,
) -> list[WordHeatmap]:
    """One Grad-CAM heatmap per content word and short phrase of ``caption`` (or per entry of ``words``).

    ``image`` is a path or a PIL image; heatmaps are over the preprocessed (resized, centre-cropped) image,
    ``[size, size]`` float32 in [0, 1]. ``words`` are words or phrases of the caption to explain instead.
    ``method`` and ``template`` choose how a word becomes a text embedding (``softclip.word_queries``);
    ``layers`` and ``shifts`` how its Grad-CAM is taken (``softclip.gradcam``).
    """
    queries = find_queries(model, caption, words, phrases)
    config = _preprocess_config(model)
    pixels = image_to_tensor(load_image(image), config)[None].to(model_device(model))  # (1, 3, size, size)
    embeddings = query_embeddings(model, caption, queries, method, template)
    heatmaps, scores = shifted_gradcams(model, pixels, embeddings, layers, shifts)
    return [WordHeatmap(q.text, heatmap, float(score)) for q, heatmap, score in zip(queries, heatmaps, scores)]


def explain_panel(
    model: nn.Module,
    image: str | Path | Image.Image,
    caption: str,
    words: Sequence[str] | None = None,
    *,
    method: str = DEFAULT_METHOD,
    layers: str = DEFAULT_LAYERS,
    shifts: bool = True,
    alpha: float = 0.5,
) -> Image.Image:
    """The preprocessed image next to one heatmap overlay per word of ``caption`` (see ``explain``), as one image."""
    source = load_image(image)
    heatmaps = explain(model, source, caption, words, method=method, layers=layers, shifts=shifts)
    return panel(resize_and_crop(source, _preprocess_config(model)), heatmaps, alpha)
