"""What the app shows: result captions and paths, gallery items, and the heatmaps of a caption's words."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import gradio as gr
import torch
from PIL import Image

from softclip.app.requests import UserError
from softclip.app.thumbnails import ThumbnailFiles
from softclip.explain import explain
from softclip.heatmaps import WordHeatmap, overlay
from softclip.index import ImageIndex, SearchHit, TextHit
from softclip.index.index_folder import IndexFolder
from softclip.index.search import parse_query
from softclip.tokenizer import WordSpan
from softclip.transform import resize_and_crop
from softclip.word_queries import STOP_WORDS

logger = logging.getLogger(__name__)

HEATMAP_SIDE = 256  # pixels: heatmap overlays are drawn on the model's crop at this size
GalleryItems = list[tuple[Image.Image | str, str]]  # (picture or its file, caption), as gr.Gallery takes them


def escape_markdown(text: str) -> str:
    """``text`` with Markdown's special characters escaped, so that a file name shows as written."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!<>|~])", r"\\\1", text)


def hit_caption(hit: SearchHit) -> str:
    """'name.jpg · 0.312': the file name and its similarity to the query."""
    return f"{os.path.basename(hit.path)} · {hit.score:.3f}"


def indexed_root(index: ImageIndex) -> str | None:
    """The deepest folder holding every indexed file: result paths are shown relative to it (None: no files)."""
    with IndexFolder.open_for_reading(index.path) as folder:
        folders = {os.path.dirname(path) for path in folder.manifest.records()}
    return os.path.commonpath(sorted(folders)) if folders else None


def shown_path(path: str, root: str | None) -> str:
    """``path`` relative to the indexed folder ``root``: the browser never sees where the server keeps files."""
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    return os.path.basename(path) if relative.startswith(os.pardir) else relative


def gallery_items(hits: list[SearchHit], thumbnails: ThumbnailFiles) -> tuple[GalleryItems, list[SearchHit]]:
    """Thumbnails of the hits with their captions, and the hits shown (files unreadable since indexing are left out)."""
    items, shown = [], []
    for hit in hits:
        try:
            items.append((thumbnails.path_for(hit.path), hit_caption(hit)))
            shown.append(hit)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            logger.warning("cannot show %s: %s", hit.path, error)
    if len(shown) < len(hits):
        gr.Warning(f"{len(hits) - len(shown)} of the images found could not be read; they are left out.")
    return items, shown


def text_rows(hits: list[TextHit]) -> list[list[Any]]:
    """Rows of the closest-texts table: [text, score]."""
    return [[hit.text, round(hit.score, 4)] for hit in hits]


def heatmap_items(model: torch.nn.Module, image: Image.Image, heatmaps: list[WordHeatmap]) -> GalleryItems:
    """One overlay per word on the crop the model saw (drawn at ``HEATMAP_SIDE``), captioned 'word · score'."""
    crop = resize_and_crop(image, dataclasses.replace(model.preprocess_config, size=HEATMAP_SIDE))
    return [(overlay(crop, item.heatmap), f"{item.word} · {item.score:.3f}") for item in heatmaps]


def word_heatmaps(model: torch.nn.Module, image: Image.Image, caption: str) -> list[WordHeatmap]:
    """Heatmaps of the caption's content words and phrases; a caption of stop words only is explained whole."""
    spans = model.tokenizer.word_spans(caption, model.config.text.context_length)
    if not spans:
        raise UserError("The caption has no words to explain.")
    warn_if_cut(model, caption, spans)
    has_content = any(span.word.lower() not in STOP_WORDS for span in spans)
    return explain(model, image, caption, words=None if has_content else [caption])


def warn_if_cut(model: torch.nn.Module, caption: str, read: list[WordSpan]) -> None:
    """Tell the user which words of the caption the model never read (its text encoder stops at a token count)."""
    every_word = model.tokenizer.word_spans(caption, 4 * len(caption.encode()) + 2)  # room for every token
    cut = [span.word for span in every_word[len(read) :]]
    if cut:
        gr.Warning(
            f"The caption is longer than the model reads ({model.config.text.context_length} tokens): the heatmaps "
            f"cover its first {len(read)} words, up to {read[-1].word!r}; the last {len(cut)} words "
            f"({' '.join(cut[:3])} ...) are cut."
        )


def heatmap_caption(query: str) -> str:
    """The words of a (weighted) query to draw heatmaps for: its positive terms, without weights."""
    return " ".join(term.term for term in parse_query(query) if term.weight > 0) or query
