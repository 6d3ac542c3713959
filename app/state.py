"""What the app loads once (`AppState`: the index, its ONNX encoder, the torch model) and the handlers over it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import torch
from gradio.utils import get_upload_folder
from PIL import Image

from softclip.app.requests import (
    Limits,
    UserError,
    check_k,
    check_labels,
    check_text,
    shown_to_user,
    uploaded_image,
)
from softclip.app.results import (
    GalleryItems,
    escape_markdown,
    gallery_items,
    heatmap_caption,
    heatmap_items,
    indexed_root,
    shown_path,
    text_rows,
    word_heatmaps,
)
from softclip.app.thumbnails import ThumbnailFiles, thumbnail_store
from softclip.encoder import Encoder, state_dict_id
from softclip.index import ImageIndex, SearchHit, TextHit
from softclip.index.decode import load_rgb
from softclip.index.search import combine, parse_query
from softclip.pretrained import from_pretrained
from softclip.zeroshot import label as zero_shot_label

DESCRIBE_K = 5  # closest texts shown for an image
THUMBNAIL_SIDE = 384  # pixels: results are shown (and sent) at most this large
HEATMAP_CONCURRENCY = "torch-heatmaps"  # Grad-CAM runs one request at a time on the shared torch model


@dataclass
class AppState:
    """What the app loads once: the index, the ONNX encoder it searches with, and the torch model for heatmaps."""

    index: ImageIndex
    encoder: Encoder
    model: torch.nn.Module
    limits: Limits = dataclasses.field(default_factory=Limits)
    root: str | None = None  # the indexed folder, that result paths are shown relative to
    thumbnails: ThumbnailFiles = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        folder = os.path.join(get_upload_folder(), "softclip-thumbnails")  # Gradio serves its own folder only
        store = thumbnail_store(self.index.path, folder)
        self.thumbnails = ThumbnailFiles(store, folder, THUMBNAIL_SIDE, self.limits.max_megapixels)

    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike,
        checkpoint: str | os.PathLike,
        export_dir: str | os.PathLike | None = None,
        limits: Limits | None = None,
    ) -> AppState:
        """Open the index with ``export_dir`` (default: the export named in the index) and load the checkpoint.

        The checkpoint must hold the weights the export was made from, so that heatmaps explain the model
        that ranked the results.
        """
        quiet_environment()
        search_one_query_per_thread()
        index = ImageIndex.open(index_dir, open_export(export_dir) if export_dir is not None else None)
        encoder = index_encoder(index)
        model = from_pretrained(checkpoint).to("cuda" if torch.cuda.is_available() else "cpu").eval()
        check_same_weights(model, encoder, checkpoint)
        return cls(index, encoder, model, limits or Limits(), indexed_root(index))

    def check_not_empty(self) -> None:
        """A message instead of an empty answer when the index holds no images."""
        if len(self.index) == 0:
            raise UserError("The index is empty: there are no images to search yet. Index a folder of images first.")

    def query_vector(self, query: str) -> np.ndarray:
        """[D] embedding of a (weighted) text query; every term is text, so a query never reads a server file."""
        terms = parse_query(query)
        vectors = self.encoder.encode_texts([term.term for term in terms])  # [T, D]
        return combine(np.asarray([term.weight for term in terms], dtype=np.float32), vectors, query)

    @shown_to_user
    def search_text(self, query: str, k: float) -> tuple[GalleryItems, dict[str, Any]]:
        """Images closest to a text query: gallery items, and the search (query and hits) kept for heatmaps."""
        query, count = check_text(query, self.limits), check_k(k, self.limits)
        self.check_not_empty()
        items, shown = gallery_items(self.index.search_vector(self.query_vector(query), count), self.thumbnails)
        return items, {"query": query, "hits": shown}

    @shown_to_user
    def search_image(self, upload: dict | None, k: float) -> tuple[GalleryItems, list[list[Any]]]:
        """Images closest to an uploaded image, and the closest texts of the index's text list."""
        image, count = uploaded_image(upload, self.limits), check_k(k, self.limits)
        self.check_not_empty()
        items, _ = gallery_items(self.index.search_image(image, count), self.thumbnails)
        return items, text_rows(self.closest_texts(image))

    def closest_texts(self, image: Image.Image) -> list[TextHit]:
        """The texts (added with ``index_texts``) closest to the image; none, with a note, if the index has none."""
        try:
            return self.index.describe(image, DESCRIBE_K)
        except FileNotFoundError:  # an index without texts: the images alone are still an answer
            gr.Info("This index has no texts to describe images with; add some with index_texts.")
            return []

    @shown_to_user
    def label(self, upload: dict | None, labels_text: str) -> dict[str, float]:
        """Zero-shot probabilities of the comma-separated labels for an uploaded image, as {label: probability}."""
        labels = check_labels(labels_text, self.limits)
        image = uploaded_image(upload, self.limits)
        scores = zero_shot_label([image], labels, model=self.encoder, top_k=len(labels))[0]
        return {score.label: score.probability for score in scores}

    @shown_to_user
    def explain(self, upload: dict | None, caption: str) -> GalleryItems:
        """Per-word heatmaps of a caption over an uploaded image."""
        caption = check_text(caption, self.limits, what="caption")
        image = uploaded_image(upload, self.limits)
        return heatmap_items(self.model, image, word_heatmaps(self.model, image, caption))

    @shown_to_user
    def explain_hit(self, search: dict[str, Any] | None, selection: gr.SelectData) -> tuple[str, GalleryItems]:
        """The picked result's path and score, and the per-word heatmaps of the search's query over it."""
        hits = (search or {}).get("hits", [])
        if not isinstance(selection.index, int) or not 0 <= selection.index < len(hits):
            raise UserError("Pick one of the results of the last search.")
        hit: SearchHit = hits[selection.index]
        image = load_rgb(hit.path, self.limits.max_megapixels)
        heatmaps = word_heatmaps(self.model, image, heatmap_caption(search["query"]))
        picked = f"**{escape_markdown(shown_path(hit.path, self.root))}** · similarity {hit.score:.3f}"
        return picked, heatmap_items(self.model, image, heatmaps)


_LOCAL_HOSTS = ("127.0.0.1", "localhost")


def quiet_environment() -> None:
    """No usage analytics, no ONNX Runtime telemetry, no proxy for local calls: set before the app loads or serves."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    for name in ("NO_PROXY", "no_proxy"):
        hosts = [host for host in os.environ.get(name, "").split(",") if host]
        os.environ[name] = ",".join(hosts + [host for host in _LOCAL_HOSTS if host not in hosts])


def search_one_query_per_thread() -> None:
    """Run each FAISS search on the thread that asks for it.

    The app searches one query per request and serves requests in parallel. FAISS's OpenMP team per search
    buys nothing on one query, and on a busy machine (or right after ONNX Runtime's threads ran) waiting for
    the team costs whole scheduler time slices: query embedding and search took 22-24 ms with it against
    2-10 ms without, on 2 shared cores (``benchmarks/app_load.py``, docs/results.md).
    """
    import faiss

    faiss.omp_set_num_threads(1)


def open_export(export_dir: str | os.PathLike) -> Encoder:
    """The ONNX encoder of an export folder (ONNX Runtime loads only here)."""
    from softclip.export import OnnxEncoder

    return OnnxEncoder(export_dir)


def index_encoder(index: ImageIndex) -> Encoder:
    """The encoder the index searches with: the export it names, opened now so that a problem shows at start."""
    try:
        return index.encoder
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"{error} (name the export folder with export_dir, or --export)") from error


def check_same_weights(model: torch.nn.Module, encoder: Encoder, checkpoint: str | os.PathLike) -> None:
    """Refuse a checkpoint whose weights are not the ones the export was made from (when the export says)."""
    exported_from = getattr(encoder, "info", {}).get("state_dict_id")
    if exported_from is not None and exported_from != state_dict_id(model):
        raise ValueError(
            f"the checkpoint {os.fspath(checkpoint)!r} is not the model the index's export was made from "
            f"(weights {state_dict_id(model)} against {exported_from}): heatmaps would explain another model"
        )
