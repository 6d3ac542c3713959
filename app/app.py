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
``SOFTCLIP_INDEX=photos.idx SOFTCLIP_MODEL=my-checkpoint gradio app/app.py`` (the entry at the end of this
file). Importing the module only defines things: the environment is quieted when the app loads or serves.
"""

from __future__ import annotations

import os

import gradio as gr

from softclip.app.requests import (
    DEFAULT_K,
    Limits,
)
from softclip.app.state import (
    HEATMAP_CONCURRENCY,
    AppState,
    quiet_environment,
)


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
    quiet_environment()
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
    if block and demo.local_url:  # no URL: reload mode re-running this file, where launch does nothing
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


def state_from_environment() -> AppState | None:
    """The state over ``SOFTCLIP_INDEX``, ``SOFTCLIP_MODEL`` and ``SOFTCLIP_EXPORT``; None without the first two."""
    index_dir, checkpoint = os.environ.get("SOFTCLIP_INDEX"), os.environ.get("SOFTCLIP_MODEL")
    if not index_dir or not checkpoint:
        return None
    return AppState.load(index_dir, checkpoint, os.environ.get("SOFTCLIP_EXPORT") or None)


def page_for(state: AppState | None) -> gr.Blocks:
    """The app over ``state``, or the setup page when there is none."""
    return build_blocks(state) if state is not None else setup_page()


def demo_from_environment() -> gr.Blocks:
    """The app over ``SOFTCLIP_INDEX``, ``SOFTCLIP_MODEL`` and ``SOFTCLIP_EXPORT``, or the setup page without them."""
    return page_for(state_from_environment())


if __name__ == "__main__":
    # `python app/app.py`, and `gradio app/app.py`: reload mode runs this file again in the same namespace on
    # every change (its launch is then a no-op). The index and models load once, in the first run (NO_RELOAD
    # is false while reloading); each reload rebuilds only the page, over the state already loaded.
    if gr.NO_RELOAD:
        state = state_from_environment()
    demo = page_for(state)  # reload mode finds the page it serves under this name
    serve(demo, port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
