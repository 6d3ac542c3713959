"""The Gradio app through its HTTP API: gradio_client calls each named endpoint of an app launched on
127.0.0.1, bad input comes back as a clear message, and nothing outside Gradio's own folders is served.

The model is an untrained tiny ViT exported to ONNX, so the tests check behaviour (what is returned, in
what order, with which message), not ranking quality. ``prepare_app_data`` builds the checkpoint, export
and indexes once per test session; the browser test reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from softclip.app.app import build_app, build_blocks, demo_from_environment, parse_auth, serve
from softclip.app.requests import Limits
from softclip.app.results import HEATMAP_SIDE, escape_markdown, shown_path, word_heatmaps
from softclip.app.state import DESCRIBE_K, AppState
from softclip.export import export_model
from softclip.index import ImageIndex, build_index, index_texts
from softclip.model import create_model
from softclip.save import save_pretrained
from softclip.tokenizer import Tokenizer
from softclip.training.captions import caption_for
from softclip.training.render import render_scene
from softclip.training.scenes import sample_scene
from softclip.transform import PreprocessConfig

SCENES = 12
# Small limits so that "too big" inputs are cheap to make.
LIMITS = Limits(max_megapixels=1.0, max_upload_mb=1.0, max_labels=8)
CAPTION = "a large red circle above a green square"


@dataclass(frozen=True)
class AppData:
    """Everything an app needs, built once per session under pytest's base temporary folder."""

    root: Path
    photos: Path
    captions: list[str]
    checkpoint: Path
    export: Path
    index: Path
    empty_index: Path


def _write_scenes(photos: Path) -> list[str]:
    """SynthScenes images as PNG files (plus a text file the index ignores); returns their captions."""
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    captions = []
    for i in range(SCENES):
        scene = sample_scene(rng)
        render_scene(scene, 64).save(photos / f"scene-{i:02d}.png")
        captions.append(caption_for(scene, rng))
    (photos / "notes.txt").write_text("not an image, and not to be served\n")
    return captions


def _write_checkpoint(folder: Path, captions: list[str], seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("tiny-vit")
    model.tokenizer = Tokenizer.train(captions * 3 + [CAPTION], vocab_size=300)
    model.preprocess_config = PreprocessConfig(size=64)
    return save_pretrained(model, folder)


def _build(root: Path) -> AppData:
    from softclip.export import OnnxEncoder

    captions = _write_scenes(root / "photos")
    checkpoint = _write_checkpoint(root / "checkpoint", captions)
    export = export_model(checkpoint, root / "export")
    encoder = OnnxEncoder(export)
    build_index(root / "photos", encoder, root / "index", progress=False, workers=1)
    index_texts(root / "index", captions, encoder)
    (root / "nothing").mkdir()
    build_index(root / "nothing", encoder, root / "empty-index", progress=False, workers=1)
    (root / "captions.json").write_text(json.dumps(captions))  # written last: the data is complete
    return _app_data(root)


def _app_data(root: Path) -> AppData:
    captions = json.loads((root / "captions.json").read_text())
    folders = [root / name for name in ("photos", "checkpoint", "export", "index", "empty-index")]
    return AppData(root, folders[0], captions, *folders[1:])


def prepare_app_data(tmp_path_factory: pytest.TempPathFactory) -> AppData:
    """The session's app data (the ONNX export takes seconds, so it is made once and shared by test modules)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.getbasetemp() / "softclip-app-data"
    return _app_data(root) if (root / "captions.json").exists() else _build(root)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(state: AppState) -> Iterator[str]:
    """Serve an app over ``state`` on a free local port; yields its URL and stops it afterwards."""
    demo = serve(build_blocks(state), port=free_port(), block=False, limits=state.limits)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> AppData:
    return prepare_app_data(tmp_path_factory)


@pytest.fixture(scope="module")
def state(data: AppData) -> AppState:
    return AppState.load(data.index, data.checkpoint, limits=LIMITS)


@pytest.fixture(scope="module")
def url(state: AppState) -> Iterator[str]:
    yield from start(state)


@pytest.fixture(scope="module")
def client(url: str, tmp_path_factory: pytest.TempPathFactory) -> Client:
    downloads = tmp_path_factory.mktemp("client-downloads")
    return Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))


def caption_parts(caption: str) -> tuple[str, float]:
    """'scene-03.png · 0.123' -> ('scene-03.png', 0.123)."""
    match = re.fullmatch(r"(.+) · (-?\d+\.\d{3})", caption)
    assert match, f"caption {caption!r} is not 'name · score'"
    return match.group(1), float(match.group(2))


# ---- the endpoints ------------------------------------------------------------------------------------------------


def test_the_four_endpoints_are_named(client: Client) -> None:
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/search_text", "/search_image", "/label", "/explain"}


def test_text_search_returns_index_images_with_their_scores(client: Client, data: AppData) -> None:
    items = client.predict("a red circle", 5, api_name="/search_text")
    with ImageIndex.open(data.index) as index:
        expected = index.search_text("a red circle", 5)
    assert [caption_parts(item["caption"])[0] for item in items] == [Path(hit.path).name for hit in expected]
    scores = [caption_parts(item["caption"])[1] for item in items]
    assert scores == pytest.approx([hit.score for hit in expected], abs=1e-3)
    for item, hit in zip(items, expected):  # the thumbnail shows the indexed file (lossy WebP: close, not equal)
        shown = np.asarray(Image.open(item["image"]).convert("RGB"), dtype=np.float32)
        original = np.asarray(Image.open(hit.path).convert("RGB"), dtype=np.float32)
        assert shown.shape == original.shape
        assert np.abs(shown - original).mean() < 8


def test_a_query_naming_a_server_file_is_searched_as_text(client: Client, data: AppData) -> None:
    # Read as an image, the file would find itself with similarity 1; as text it scores like any other words.
    path = str(data.photos / "scene-03.png")
    items = client.predict(path, 3, api_name="/search_text")
    assert caption_parts(items[0]["caption"])[1] < 0.9


def test_image_search_finds_the_image_itself_and_the_closest_texts(client: Client, data: AppData) -> None:
    items, table = client.predict(handle_file(data.photos / "scene-03.png"), 4, api_name="/search_image")
    assert len(items) == 4
    assert caption_parts(items[0]["caption"])[1] == pytest.approx(1.0, abs=2e-3)
    assert "scene-03.png" in [
        caption_parts(item["caption"])[0] for item in items if caption_parts(item["caption"])[1] > 0.999
    ]
    assert table["headers"] == ["text", "score"]
    assert len(table["data"]) == DESCRIBE_K
    assert all(text in data.captions for text, _ in table["data"])
    scores = [score for _, score in table["data"]]
    assert scores == sorted(scores, reverse=True)


def test_label_probabilities_sum_to_one_best_first(client: Client, data: AppData) -> None:
    result = client.predict(
        handle_file(data.photos / "scene-00.png"), "red circle, blue square, red circle, , cat", api_name="/label"
    )
    confidences = result["confidences"]
    assert sorted(item["label"] for item in confidences) == ["blue square", "cat", "red circle"]  # repeats dropped
    probabilities = [item["confidence"] for item in confidences]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
    assert probabilities == sorted(probabilities, reverse=True)
    assert result["label"] == confidences[0]["label"]


def test_explain_returns_one_heatmap_per_content_word_and_phrase(client: Client, data: AppData) -> None:
    items = client.predict(handle_file(data.photos / "scene-01.png"), CAPTION, api_name="/explain")
    words = [item["caption"].rsplit(" · ", 1)[0] for item in items]
    assert {"red", "circle", "green", "square", "large red circle", "green square"} <= set(words)
    assert not {"a", "above"} & set(words)  # stop words and spatial words name no region
    for item in items:
        with Image.open(item["image"]) as heatmap:
            assert heatmap.size == (HEATMAP_SIDE, HEATMAP_SIDE)
            assert np.asarray(heatmap.convert("RGB")).std() > 1  # an overlay, not a blank tile


def test_a_caption_of_stop_words_is_explained_whole(client: Client, data: AppData) -> None:
    items = client.predict(handle_file(data.photos / "scene-01.png"), "the one on the left", api_name="/explain")
    assert [item["caption"].rsplit(" · ", 1)[0] for item in items] == ["the one on the left"]


def test_picking_a_result_shows_the_query_heatmaps_over_it(state: AppState) -> None:
    import gradio as gr

    items, search = state.search_text("a red circle", 3)
    picked, heatmaps = state.explain_hit(search, gr.SelectData(None, {"index": 1, "value": None}))
    name = Path(search["hits"][1].path).name
    assert picked.startswith(f"**{escape_markdown(name)}** · similarity")  # relative to the indexed folder
    assert str(Path(search["hits"][1].path).parent) not in picked.replace("\\", "")
    assert [caption.rsplit(" · ", 1)[0] for _, caption in heatmaps] == ["red", "circle", "red circle"]
    with pytest.raises(gr.Error, match="Pick one of the results"):
        state.explain_hit(search, gr.SelectData(None, {"index": 7, "value": None}))


# ---- bad input ------------------------------------------------------------------------------------------------------


def _not_an_image(data: AppData) -> Path:
    return data.photos / "notes.txt"


def _too_many_pixels(data: AppData) -> Path:
    path = data.root / "large.png"
    if not path.exists():
        Image.new("RGB", (1500, 1000), "red").save(path)  # 1.5 megapixels in a few kilobytes
    return path


def _png_header_only(data: AppData, width: int, height: int) -> Path:
    """A PNG file whose header declares ``width`` x ``height`` (no pixel data: the size is refused first)."""
    path = data.root / f"header-{width}x{height}.png"
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    chunks = [_png_chunk(b"IHDR", header), _png_chunk(b"IDAT", b""), _png_chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


BAD_INPUTS = [
    ("/search_text", lambda data: ("", 5), "The query is empty"),
    ("/search_text", lambda data: ("   \n ", 5), "The query is empty"),
    ("/search_text", lambda data: ("x" * 501, 5), "The query is too long: 501 characters, the limit is 500"),
    ("/search_text", lambda data: ("a red circle", 0), "The number of results must be between 1 and 50, got 0."),
    ("/search_text", lambda data: ("a red circle", 51), "The number of results must be between 1 and 50, got 51."),
    ("/search_text", lambda data: ("a red circle", "many"), "must be a whole number, got 'many'."),
    ("/search_text", lambda data: ("a red circle", 2.5), "must be a whole number, got '2.5'."),
    ("/search_text", lambda data: ("1" + "0" * 38 + ":red circle", 5), "the weight 100000...(39 digits) of the term"),
    ("/search_text", lambda data: ("blue + 1" + "0" * 39 + ":red", 5), "the weight 100000...(40 digits) of the term"),
    ("/search_text", lambda data: ("1e40:cat", 5), "the weight 1e40 of the term 'cat' must be between 0.001 and 1000"),
    ("/search_text", lambda data: ("nan:dog", 5), "the weight nan of the term 'dog' must be between 0.001 and 1000"),
    ("/search_text", lambda data: ("inf:sea", 5), "the weight inf of the term 'sea' must be between 0.001 and 1000"),
    ("/search_text", lambda data: ("2:red - 2:red", 5), "cancel out: nothing is left to search for"),
    ("/search_text", lambda data: ("- red", 5), None),  # a negated term alone is a valid query
    ("/search_image", lambda data: (handle_file(_not_an_image(data)), 5), "cannot be read as an image: not an image"),
    (
        "/search_image",
        lambda data: (handle_file(_too_many_pixels(data)), 5),
        "The image is 1500x1000 (1.5 megapixels), the limit is 1 megapixels.",
    ),
    (  # past Pillow's own bomb limit too: the same message, not Pillow's
        "/search_image",
        lambda data: (handle_file(_png_header_only(data, 20000, 20000)), 5),
        "The image is 20000x20000 (400.0 megapixels), the limit is 1 megapixels.",
    ),
    ("/search_image", lambda data: (None, 5), "Upload an image first"),
    ("/search_image", lambda data: (handle_file(data.photos / "scene-00.png"), 51), "between 1 and 50, got 51"),
    ("/label", lambda data: (handle_file(data.photos / "scene-00.png"), " , ,"), "Enter at least one label"),
    ("/label", lambda data: (handle_file(data.photos / "scene-00.png"), ",".join("abcdefghi")), "Too many labels: 9"),
    ("/label", lambda data: (handle_file(_not_an_image(data)), "cat, dog"), "cannot be read as an image"),
    ("/explain", lambda data: (handle_file(data.photos / "scene-00.png"), ""), "The caption is empty"),
    ("/explain", lambda data: (handle_file(_not_an_image(data)), "a red circle"), "cannot be read as an image"),
    ("/explain", lambda data: (handle_file(data.photos / "scene-00.png"), "?!"), "The caption has no words"),
]


@pytest.mark.parametrize(("api_name", "make_args", "message"), BAD_INPUTS)
def test_bad_input_gets_a_clear_message(
    client: Client, data: AppData, api_name: str, make_args, message: str | None
) -> None:
    if message is None:
        client.predict(*make_args(data), api_name=api_name)
        return
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(*make_args(data), api_name=api_name)


def test_an_empty_index_says_so(data: AppData) -> None:
    for url in start(AppState.load(data.empty_index, data.checkpoint, limits=LIMITS)):
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        with pytest.raises(AppError, match="The index is empty"):
            client.predict("a red circle", 5, api_name="/search_text")
        with pytest.raises(AppError, match="The index is empty"):
            client.predict(handle_file(data.photos / "scene-00.png"), 5, api_name="/search_image")


def test_uploads_over_the_size_limit_are_refused(client: Client, url: str, data: AppData) -> None:
    big = data.root / "big.bin"
    big.write_bytes(os.urandom(LIMITS.max_upload_bytes + 1000))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(big), 5, api_name="/search_image")
    with big.open("rb") as stream:  # the server refuses it too, whatever the client does
        response = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("big.png", stream)})
    assert response.status_code == 413


# ---- what is served -------------------------------------------------------------------------------------------------


def test_only_gradio_files_are_served(url: str, data: AppData) -> None:
    base = url.rstrip("/")
    refused = [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=../../../../../../etc/passwd",
        "/gradio_api/file=..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"/gradio_api/file={data.photos / 'scene-00.png'}",  # indexed images are shown as thumbnails only
        f"/gradio_api/file={data.photos / 'notes.txt'}",
        f"/gradio_api/file={data.checkpoint / 'config.json'}",
        f"/gradio_api/file={data.index / 'index.json'}",
    ]
    for path in refused:
        response = httpx.get(base + path)
        assert response.status_code in (403, 404), path
        assert "root:" not in response.text


def test_an_upload_must_be_a_file_the_server_received(url: str, data: AppData) -> None:
    base = url.rstrip("/") + "/gradio_api/call/search_image"
    crafted = {"path": str(data.photos / "scene-00.png"), "meta": {"_type": "gradio.FileData"}}
    event_id = httpx.post(base, json={"data": [crafted, 3]}).json()["event_id"]
    stream = httpx.get(f"{base}/{event_id}", timeout=30).text
    assert "event: error" in stream
    assert "scene-00.png ·" not in stream


def test_the_queue_is_bounded(state: AppState) -> None:
    demo = build_blocks(state)
    assert demo._queue.max_size == LIMITS.queue_size
    assert demo._queue.default_concurrency_limit == LIMITS.concurrency


# ---- building and launching -----------------------------------------------------------------------------------------


def test_a_checkpoint_that_is_not_the_exported_model_is_refused(data: AppData, tmp_path: Path) -> None:
    other = _write_checkpoint(tmp_path / "other", data.captions, seed=1)
    with pytest.raises(ValueError, match="is not the model the index's export was made from"):
        build_app(data.index, other)


def test_the_export_can_be_named_explicitly(data: AppData) -> None:
    state = AppState.load(data.index, data.checkpoint, data.export)
    assert state.encoder.model_id == state.index.encoder.model_id
    assert len(state.index) == SCENES


def test_a_login_is_required_when_auth_is_set(state: AppState) -> None:
    demo = serve(build_blocks(state), port=free_port(), auth="ann:s3cret", block=False, limits=state.limits)
    try:
        assert httpx.get(demo.local_url.rstrip("/") + "/config").status_code == 401
        with pytest.raises(Exception, match="(?i)login|auth|401"):
            Client(demo.local_url, verbose=False, analytics_enabled=False, auth=("ann", "wrong"))
        client = Client(demo.local_url, verbose=False, analytics_enabled=False, auth=("ann", "s3cret"))
        assert client.predict("a red circle", 2, api_name="/search_text")
    finally:
        demo.close()


def test_auth_is_user_colon_password() -> None:
    assert parse_auth("ann:s3cret") == ("ann", "s3cret")
    assert parse_auth("ann:with:colons") == ("ann", "with:colons")
    assert parse_auth(None) is None
    for bad in ("ann", "ann:", ":s3cret"):
        with pytest.raises(ValueError, match="user:password"):
            parse_auth(bad)


def test_the_module_demo_comes_from_the_environment(data: AppData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOFTCLIP_INDEX", raising=False)
    monkeypatch.delenv("SOFTCLIP_MODEL", raising=False)
    assert "SOFTCLIP_INDEX" in str(demo_from_environment().config)
    monkeypatch.setenv("SOFTCLIP_INDEX", str(data.index))
    monkeypatch.setenv("SOFTCLIP_MODEL", str(data.checkpoint))
    api_names = {fn.api_name for fn in demo_from_environment().fns.values()}
    assert {"search_text", "search_image", "label", "explain"} <= api_names


def test_loading_the_app_quiets_the_environment(data: AppData, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GRADIO_ANALYTICS_ENABLED", "ORT_DISABLE_TELEMETRY", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    AppState.load(data.index, data.checkpoint).index.close()
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"
    assert {"127.0.0.1", "localhost"} <= set(os.environ["NO_PROXY"].split(","))


def test_importing_the_app_does_nothing_but_define_things() -> None:
    script = (
        "import os, sys; before = dict(os.environ); import softclip.app.app as app; "
        "sys.exit(0 if dict(os.environ) == before and not hasattr(app, 'demo') else 1)"
    )
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == 0


def test_a_caption_longer_than_the_model_reads_says_what_is_cut(state: AppState, data: AppData) -> None:
    caption = " ".join(f"red circle {i}" for i in range(30))  # 90 words, far past the model's context
    image = Image.open(data.photos / "scene-01.png").convert("RGB")
    tokens = state.model.config.text.context_length
    message = rf"longer than the model reads \({tokens} tokens\): the heatmaps cover its first (\d+) words"
    with pytest.warns(UserWarning, match=message) as caught:
        heatmaps = word_heatmaps(state.model, image, caption)
    read = int(re.search(message, str(caught[0].message)).group(1))
    assert 0 < read < 90
    assert f"the last {90 - read} words" in str(caught[0].message)
    assert {item.word for item in heatmaps} <= {"red", "circle", "red circle"} | {str(i) for i in range(30)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a caption that fits says nothing
        word_heatmaps(state.model, image, CAPTION)


def test_result_paths_are_shown_relative_to_the_indexed_folder(tmp_path: Path) -> None:
    root = str(tmp_path / "photos")
    assert shown_path(f"{root}/trips/beach.jpg", root) == "trips/beach.jpg"
    assert shown_path("/elsewhere/cat.jpg", root) == "cat.jpg"  # added from outside the folder: the name only
    assert shown_path(f"{root}/cat.jpg", None) == "cat.jpg"


def test_results_are_complete_files_written_once(state: AppState, data: AppData) -> None:
    first, _ = state.search_text("a red circle", 4)
    second, _ = state.search_text("a red circle", 4)
    assert [path for path, _ in first] == [path for path, _ in second]
    for path, _ in first:
        assert Path(path).parent == state.thumbnails.folder
        assert Path(path).stem == hashlib.sha256(Path(path).read_bytes()).hexdigest()  # named by its content
