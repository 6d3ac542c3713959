"""The softclip Gradio app: search an image index by text or by image, label images zero-shot, and see which
regions of an image each word of a caption points at.

Search, image-to-text lookup and labels run on the ONNX export the index was built with; heatmaps run
Grad-CAM on the torch checkpoint. Both load once, when the app is built (``build_app``). The app listens
on 127.0.0.1 unless told otherwise, never opens a share link and sends no analytics. It serves no file from
disk: results are thumbnails it renders from the paths the index stores (kept in the index folder's
``thumbnails/``, ``softclip.app.thumbnails``) and copies into Gradio's cache folder, so
``allowed_paths`` stays empty and only Gradio's own upload and cache folders are reachable over HTTP. An
image reaches the models only as an upload Gradio received (``softclip.app.uploads``) or as an item of the
index, and the browser sees indexed paths only relative to the indexed folder.

Start it with ``launch(index_dir, checkpoint)``, or in reload mode with
``SOFTCLIP_INDEX=photos.idx SOFTCLIP_MODEL=my-checkpoint gradio app/app.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Gradio and ONNX Runtime read these when imported: no usage analytics, no telemetry, no proxy for local calls.
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _quiet_environment() -> None:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    for name in ("NO_PROXY", "no_proxy"):
        hosts = [host for host in os.environ.get(name, "").split(",") if host]
        os.environ[name] = ",".join(hosts + [host for host in _LOCAL_HOSTS if host not in hosts])


_quiet_environment()

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from PIL import Image  # noqa: E402

from softclip.app.thumbnails import ThumbnailFiles, thumbnail_store  # noqa: E402
from softclip.app.uploads import header_size, read_upload  # noqa: E402
from softclip.encoder import Encoder, state_dict_id  # noqa: E402
from softclip.explain import STOP_WORDS, WordHeatmap, explain, overlay  # noqa: E402
from softclip.index import ImageDecodeError, ImageIndex, SearchHit, TextHit  # noqa: E402
from softclip.index.decode import decode_bytes, load_rgb  # noqa: E402
from softclip.index.index_folder import IndexFolder  # noqa: E402
from softclip.index.search import combine, parse_query  # noqa: E402
from softclip.pretrained import from_pretrained  # noqa: E402
from softclip.tokenizer import WordSpan  # noqa: E402
from softclip.transform import resize_and_crop  # noqa: E402
from softclip.zeroshot import label as zero_shot_label  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_K = 12
DESCRIBE_K = 5  # closest texts shown for an image
THUMBNAIL_SIDE = 384  # pixels: results are shown (and sent) at most this large
HEATMAP_SIDE = 256  # pixels: heatmap overlays are drawn on the model's crop at this size
HEATMAP_CONCURRENCY = "torch-heatmaps"  # Grad-CAM runs one request at a time on the shared torch model

GalleryItems = list[tuple[Image.Image | str, str]]  # (picture or its file, caption), as gr.Gallery takes them


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond gets a message saying which limit it broke."""

    max_query_chars: int = 500
    max_k: int = 50
    max_labels: int = 64
    max_label_chars: int = 100
    max_megapixels: float = 40.0  # uploads, and indexed images decoded for display
    max_upload_mb: float = 20.0
    concurrency: int = 2  # requests worked on at once (per event)
    queue_size: int = 128  # requests waiting (100 searches sent at once all wait their turn); more are turned away

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1_000_000)


class UserError(gr.Error):
    """A bad request, shown to the user as a message (no traceback in the log either)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)


def shown_to_user(handler: Callable) -> Callable:
    """Wrap an event handler so that every failure reaches the user as a short message, never a traceback.

    Errors the library raises for bad input (``ValueError`` and its kin, a missing file) keep their message;
    anything unexpected is logged here and reported by its type only.
    """

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except ImageDecodeError as error:
            raise UserError(f"That file cannot be read as an image: {error.reason}.") from None
        except (ValueError, FileNotFoundError) as error:
            raise UserError(str(error)) from None
        except Exception as error:
            logger.exception("%s failed", handler.__name__)
            raise UserError(f"Something went wrong ({type(error).__name__}); the server log has the details.") from None

    return run


# ---- request checks --------------------------------------------------------------------------------------------------


def check_text(text: str | None, limits: Limits, what: str = "query") -> str:
    """The stripped text, or a message when it is not text, empty or longer than ``limits.max_query_chars``."""
    if text is not None and not isinstance(text, str):  # the events take raw API values (preprocess=False)
        raise UserError(f"The {what} must be text, got {type(text).__name__}.")
    text = (text or "").strip()
    if not text:
        raise UserError(f"The {what} is empty: type a few words describing the image.")
    if len(text) > limits.max_query_chars:
        raise UserError(f"The {what} is too long: {len(text)} characters, the limit is {limits.max_query_chars}.")
    return text


def check_k(k: float | int | str | None, limits: Limits) -> int:
    """The number of results as an int in [1, ``limits.max_k``]; None means ``DEFAULT_K``."""
    if k is None:
        return min(DEFAULT_K, limits.max_k)
    try:
        number = float(k) if not isinstance(k, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"The number of results must be a whole number, got {str(k)[:40]!r}.")
    if not 1 <= number <= limits.max_k:
        raise UserError(f"The number of results must be between 1 and {limits.max_k}, got {int(number)}.")
    return int(number)


def parse_labels(text: str | None, limits: Limits) -> list[str]:
    """'cat, dog,, cat' -> ['cat', 'dog']: stripped, repeats dropped, within the count and length limits."""
    if text is not None and not isinstance(text, str):
        raise UserError(f"The labels must be text, got {type(text).__name__}.")
    labels = list(dict.fromkeys(part.strip() for part in (text or "").split(",") if part.strip()))
    if not labels:
        raise UserError("Enter at least one label, e.g. 'cat, dog, car' (labels are separated by commas).")
    if len(labels) > limits.max_labels:
        raise UserError(f"Too many labels: {len(labels)}, the limit is {limits.max_labels}.")
    too_long = [item for item in labels if len(item) > limits.max_label_chars]
    if too_long:
        limit = limits.max_label_chars
        raise UserError(f"The label {too_long[0][:40]!r}... is too long: the limit is {limit} characters.")
    return labels


def uploaded_image(payload: dict | None, limits: Limits) -> Image.Image:
    """The upright RGB image of an upload (Gradio's file payload), refusing anything but a received upload.

    Events that take uploads run with ``preprocess=False``, so the payload is what the client sent: only a
    regular file in Gradio's upload folder is read (``read_upload``), within the byte limit, and decoded here
    with the app's pixel limit and clear reasons.
    """
    upload = read_upload(payload, get_upload_folder(), limits.max_upload_bytes)
    check_pixels(upload.data, limits.max_megapixels)
    try:
        return decode_bytes(upload.data, upload.name, limits.max_megapixels)
    except ImageDecodeError:
        raise
    except Exception as error:  # a Pillow plugin can raise nearly anything on hostile input
        raise UserError(f"That file cannot be read as an image ({type(error).__name__}).") from None


def check_pixels(data: bytes, max_megapixels: float) -> None:
    """Refuse an image larger than ``max_megapixels`` by its header, before any pixel is decoded."""
    size = header_size(data)
    if size is None:  # not an image: decoding says why
        return
    width, height = size
    if width * height > max_megapixels * 1e6:
        raise UserError(
            f"The image is {width}x{height} ({width * height / 1e6:.1f} megapixels), "
            f"the limit is {max_megapixels:g} megapixels."
        )


# ---- what the app shows ----------------------------------------------------------------------------------------------


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


# ---- the loaded models and the event handlers ------------------------------------------------------------------------


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
        labels = parse_labels(labels_text, self.limits)
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


# ---- the page --------------------------------------------------------------------------------------------------------


def _k_slider(limits: Limits, elem_id: str) -> gr.Slider:
    return gr.Slider(1, limits.max_k, value=min(DEFAULT_K, limits.max_k), step=1, label="Results", elem_id=elem_id)


def _image_input(elem_id: str) -> gr.Image:
    return gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", elem_id=elem_id)


def _results_gallery(label_text: str, elem_id: str) -> gr.Gallery:
    return gr.Gallery(label=label_text, columns=6, height="auto", object_fit="contain", elem_id=elem_id)


def closed_results() -> tuple[str, None, gr.Gallery]:
    """Empty pick, heatmaps and results, with the results' enlarged view closed.

    The gallery keeps a picked result enlarged across new values; only a component update that names
    ``selected_index`` closes it (a ``gr.update`` drops the None).
    """
    return "", None, gr.Gallery(value=None, selected_index=None)


def text_search_tab(state: AppState) -> None:
    """Query box, results gallery; picking a result shows the query's per-word heatmaps over it."""
    with gr.Row(equal_height=True):
        query = gr.Textbox(
            label="Query",
            placeholder="a red circle above a blue square",
            info="Weights and negations work too: 'beach + 2:sunset - people'.",
            elem_id="query",
            scale=4,
        )
        k = _k_slider(state.limits, "k-text")
    search = gr.Button("Search", variant="primary", elem_id="search")
    results = _results_gallery("Results (pick one to see where each word points)", "results")
    picked = gr.Markdown(elem_id="picked")
    heatmaps = _results_gallery("Where each word of the query points", "heatmaps")
    last_search = gr.State({})
    # The last pick and its heatmaps go first, so that none can arrive after the new results.
    cleared = [picked, heatmaps, results]
    clear = gr.on([search.click, query.submit], closed_results, None, cleared, api_visibility="private")
    clear.then(state.search_text, [query, k], [results, last_search], api_name="search_text", preprocess=False)
    results.select(
        state.explain_hit,
        [last_search],
        [picked, heatmaps],
        api_visibility="private",
        concurrency_id=HEATMAP_CONCURRENCY,
        concurrency_limit=1,
    )


def image_search_tab(state: AppState) -> None:
    """Upload an image: the most similar indexed images and the closest texts."""
    with gr.Row():
        image = _image_input("image-query")
        with gr.Column():
            k = _k_slider(state.limits, "k-image")
            search = gr.Button("Find similar images", variant="primary", elem_id="search-image")
            texts = gr.Dataframe(headers=["text", "score"], label="Closest texts", interactive=False, elem_id="texts")
    similar = _results_gallery("Similar images", "similar")
    gr.on(
        [search.click, image.upload],
        state.search_image,
        [image, k],
        [similar, texts],
        api_name="search_image",
        preprocess=False,
    )


def label_tab(state: AppState) -> None:
    """Upload an image and name labels: zero-shot probabilities as a bar chart."""
    with gr.Row():
        image = _image_input("label-image")
        with gr.Column():
            labels = gr.Textbox(label="Labels, separated by commas", placeholder="cat, dog, car", elem_id="labels")
            run = gr.Button("Label", variant="primary", elem_id="label-button")
            probabilities = gr.Label(label="Probabilities", elem_id="probabilities")
    run.click(state.label, [image, labels], probabilities, api_name="label", preprocess=False)


def explain_tab(state: AppState) -> None:
    """Any image and caption: one heatmap per content word and phrase of the caption."""
    with gr.Row():
        image = _image_input("explain-image")
        with gr.Column():
            caption = gr.Textbox(label="Caption", placeholder="a red circle next to a blue square", elem_id="caption")
            run = gr.Button("Explain", variant="primary", elem_id="explain-button")
    heatmaps = _results_gallery("Where each word points", "explained")
    run.click(
        state.explain,
        [image, caption],
        heatmaps,
        api_name="explain",
        preprocess=False,
        concurrency_id=HEATMAP_CONCURRENCY,
        concurrency_limit=1,
    )


def build_blocks(state: AppState) -> gr.Blocks:
    """The app's page over loaded models: four tabs, named API endpoints, a bounded queue."""
    with gr.Blocks(title="softclip", analytics_enabled=False) as demo:
        gr.Markdown(f"# softclip\nSearching **{len(state.index)}** images.")
        with gr.Tabs():
            with gr.Tab("Search by text", id="text"):
                text_search_tab(state)
            with gr.Tab("Search by image", id="image"):
                image_search_tab(state)
            with gr.Tab("Label", id="label"):
                label_tab(state)
            with gr.Tab("Explain", id="explain"):
                explain_tab(state)
    return demo.queue(default_concurrency_limit=state.limits.concurrency, max_size=state.limits.queue_size)


def build_app(
    index_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    export_dir: str | os.PathLike | None = None,
    limits: Limits | None = None,
) -> gr.Blocks:
    """Load the index, its ONNX export and the torch checkpoint once, and build the app over them."""
    return build_blocks(AppState.load(index_dir, checkpoint, export_dir, limits))


# ---- serving ---------------------------------------------------------------------------------------------------------


def parse_auth(auth: str | tuple[str, str] | None) -> tuple[str, str] | None:
    """'user:password' (or a pair) -> (user, password); None stays None."""
    if auth is None or isinstance(auth, tuple):
        return auth
    user, separator, password = auth.partition(":")
    if not separator or not user or not password:
        raise ValueError("auth must be 'user:password' with both parts non-empty")
    return user, password


def serve(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: str | tuple[str, str] | None = None,
    open_browser: bool = False,
    block: bool = True,
    limits: Limits | None = None,
) -> gr.Blocks:
    """Start ``demo`` locally: no share link, no files served beyond Gradio's own, uploads capped in size.

    With ``block`` the call says where the app runs and returns when the server stops (Ctrl-C); otherwise
    it returns at once, the server running in a thread (``demo.close()`` stops it).
    """
    limits = limits or Limits()
    demo.launch(
        server_name=host,
        server_port=port,
        auth=parse_auth(auth),
        inbrowser=open_browser,
        share=False,
        prevent_thread_lock=True,
        show_error=False,
        allowed_paths=[],
        max_file_size=limits.max_upload_bytes,
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        pwa=False,
        quiet=True,  # Gradio's own banner suggests share=True, which this app never uses
    )
    if block:
        print(f"softclip app running at {demo.local_url}  (Ctrl-C to stop)", flush=True)
        demo.block_thread()
    return demo


def launch(
    index_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    export_dir: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: str | tuple[str, str] | None = None,
    open_browser: bool = False,
) -> None:
    """Build the app and serve it until interrupted (what ``softclip app`` runs)."""
    serve(build_app(index_dir, checkpoint, export_dir), host, port, auth, open_browser)


def setup_page() -> gr.Blocks:
    """The page shown when the environment names no index or model: what to set."""
    with gr.Blocks(title="softclip", analytics_enabled=False) as page:
        gr.Markdown(
            "# softclip\nThis app needs an index and a model. Set `SOFTCLIP_INDEX` to an index folder and "
            "`SOFTCLIP_MODEL` to the checkpoint folder its export was made from (and `SOFTCLIP_EXPORT` to the "
            "export folder if it is not the one the index names), then start the app again, e.g. "
            "`SOFTCLIP_INDEX=photos.idx SOFTCLIP_MODEL=my-checkpoint gradio app/app.py`, "
            "or run `softclip app --index INDEX --model CHECKPOINT`."
        )
    return page


def demo_from_environment() -> gr.Blocks:
    """The app over ``SOFTCLIP_INDEX``, ``SOFTCLIP_MODEL`` and ``SOFTCLIP_EXPORT``, or the setup page without them."""
    index_dir, checkpoint = os.environ.get("SOFTCLIP_INDEX"), os.environ.get("SOFTCLIP_MODEL")
    if not index_dir or not checkpoint:
        return setup_page()
    return build_app(index_dir, checkpoint, os.environ.get("SOFTCLIP_EXPORT") or None)


# `gradio app/app.py` (reload mode) looks for this name.
demo = demo_from_environment()

if __name__ == "__main__":
    serve(demo, port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
