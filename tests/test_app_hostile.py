"""Hostile calls through the app's real HTTP API, made with raw ``httpx`` as an attacker would (a hostile client
skips every check gradio_client makes): file references that name server files instead of uploads.

Each such reference must get the same refusal whatever the path is and whether it exists, so the app can
be used neither to read server files nor to learn which exist; none may block a worker; a normal search
keeps answering meanwhile.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio.utils import get_upload_folder
from PIL import Image
from test_app import LIMITS, AppData, prepare_app_data, start

from softclip.app.state import AppState
from softclip.app.uploads import NOT_AN_UPLOAD

IMAGE_ENDPOINTS = {"search_image": 3, "label": "red circle, blue square", "explain": "a red circle"}
FAST_SECONDS = 1.0  # a search on the tiny test model takes a few hundredths of a second


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> AppData:
    return prepare_app_data(tmp_path_factory)


@pytest.fixture(scope="module")
def base(data: AppData) -> Iterator[str]:
    for url in start(AppState.load(data.index, data.checkpoint, limits=LIMITS)):
        yield url.rstrip("/")


@pytest.fixture(scope="module")
def server_files(data: AppData, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Paths a hostile client might name: files on the server that were never uploaded, and tricks to reach them."""
    folder = tmp_path_factory.mktemp("server-files")
    os.mkfifo(folder / "fifo")
    (folder / "link-to-index.png").symlink_to(data.photos / "scene-00.png")
    (folder / "large.bin").write_bytes(b"\0" * (LIMITS.max_upload_bytes + 1))
    uploads = Path(get_upload_folder())
    inside = uploads / f"softclip-test-{os.getpid()}"
    inside.mkdir(parents=True, exist_ok=True)
    escape = inside / "escape.png"  # a symbolic link inside the upload folder, pointing out of it
    escape.unlink(missing_ok=True)
    escape.symlink_to(data.photos / "scene-00.png")
    yield {
        "indexed image": str(data.photos / "scene-00.png"),
        "text file next to the images": str(data.photos / "notes.txt"),
        "checkpoint config": str(data.checkpoint / "config.json"),
        "missing file": str(data.photos / "no-such-file.png"),
        "folder": str(data.photos),
        "/etc/passwd": "/etc/passwd",
        "/etc/shadow": "/etc/shadow",
        "/proc/self/environ": "/proc/self/environ",
        "/dev/zero": "/dev/zero",
        "fifo": str(folder / "fifo"),
        "file over the size limit": str(folder / "large.bin"),
        "symlink to an indexed image": str(folder / "link-to-index.png"),
        "symlink inside the upload folder": str(escape),
        "'..' out of the upload folder": f"{uploads}/../../{data.photos / 'scene-00.png'}",
        "'%2F' encoded": str(data.photos / "scene-00.png").replace("/", "%2F"),
        "the upload folder itself": str(uploads),
        "relative path": os.path.relpath(data.photos / "scene-00.png"),
        "NUL in the path": "/etc/passwd\0.png",
    }
    escape.unlink()
    inside.rmdir()


def call(base: str, api: str, data: list, timeout: float = 30) -> tuple[str, dict | list | None]:
    """POST a call to a named endpoint and read its event stream: (last event name, its JSON data)."""
    started = httpx.post(f"{base}/gradio_api/call/{api}", json={"data": data}, timeout=timeout)
    started.raise_for_status()
    stream = httpx.get(f"{base}/gradio_api/call/{api}/{started.json()['event_id']}", timeout=timeout).text
    events = [line.removeprefix("event: ") for line in stream.splitlines() if line.startswith("event: ")]
    payloads = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], json.loads(payloads[-1])


def upload(base: str, name: str, content: bytes) -> dict:
    """Upload bytes as Gradio's own client does; returns the file reference a call then sends."""
    response = httpx.post(f"{base}/gradio_api/upload", files={"files": (name, content)})
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def image_args(api: str, reference: object) -> list:
    return [reference, IMAGE_ENDPOINTS[api]]


@pytest.mark.parametrize("api", sorted(IMAGE_ENDPOINTS))
def test_a_bare_reference_to_a_server_path_gets_one_refusal(base: str, server_files: dict[str, str], api: str) -> None:
    for what, path in server_files.items():
        event, payload = call(base, api, image_args(api, {"path": path}))
        assert (event, payload["error"]) == ("error", NOT_AN_UPLOAD), what


def test_a_meta_reference_to_a_server_path_is_refused_the_same_whatever_the_path(
    base: str, server_files: dict[str, str]
) -> None:
    # Gradio refuses references with its marker outside its upload folder itself, before the app sees them,
    # with one message-less error; the rest reach the app and get its refusal. Neither depends on the path.
    answers = {
        what: call(base, "explain", image_args("explain", {"path": path, "meta": {"_type": "gradio.FileData"}}))
        for what, path in server_files.items()
        if "\0" not in path  # a NUL cannot go through Gradio's path handling at all (checked bare above)
    }
    refusals = {(event, payload["error"]) for event, payload in answers.values()}
    assert refusals <= {("error", None), ("error", NOT_AN_UPLOAD)}, answers
    for existing in ("indexed image", "/etc/shadow", "folder", "fifo", "file over the size limit"):
        assert answers[existing] == answers["missing file"], existing  # no oracle of what exists


@pytest.mark.parametrize("reference", ["/etc/passwd", ["/etc/passwd"], 42, {"url": "file:///etc/passwd"}])
def test_a_reference_that_is_not_a_file_payload_is_refused(base: str, reference: object) -> None:
    event, payload = call(base, "label", image_args("label", reference))
    assert event == "error"
    assert payload["error"] in (NOT_AN_UPLOAD, None, "Upload an image first.")
    assert "root:" not in json.dumps(payload)


def test_an_upload_is_accepted_with_or_without_the_meta_marker(base: str, data: AppData) -> None:
    reference = upload(base, "scene.png", (data.photos / "scene-02.png").read_bytes())
    for sent in (reference, {"path": reference["path"]}):
        event, payload = call(base, "search_image", image_args("search_image", sent))
        assert event == "complete", payload
        assert payload[0][0]["caption"].endswith("· 1.000")  # the uploaded scene finds itself


def test_a_zero_byte_upload_says_it_is_empty(base: str) -> None:
    event, payload = call(base, "label", image_args("label", upload(base, "empty.png", b"")))
    assert event == "error"
    assert payload["error"] == "That file cannot be read as an image: empty file (0 bytes)."


def test_an_upload_over_the_size_limit_never_reaches_the_app(base: str) -> None:
    response = httpx.post(
        f"{base}/gradio_api/upload", files={"files": ("huge.png", b"\0" * (LIMITS.max_upload_bytes + 1))}
    )
    assert response.status_code == 413


def test_no_hostile_call_blocks_a_worker_and_searches_answer_meanwhile(
    base: str, server_files: dict[str, str], data: AppData
) -> None:
    blocking = [server_files[what] for what in ("fifo", "/dev/zero", "/proc/self/environ", "file over the size limit")]
    hostile = [(api, path) for api in IMAGE_ENDPOINTS for path in blocking] * 2
    with ThreadPoolExecutor(len(hostile)) as pool:
        answers = pool.map(lambda item: call(base, item[0], image_args(item[0], {"path": item[1]})), hostile)
        reference = upload(base, "scene.png", (data.photos / "scene-04.png").read_bytes())
        for api, args in (("search_text", ["a red circle", 3]), ("search_image", [reference, 3])):
            # The fastest of three: one search can lose a scheduler slice on a busy machine; blocked workers
            # would delay all three.
            assert min(_answer_seconds(base, api, args) for _ in range(3)) < FAST_SECONDS, api
        started = time.perf_counter()
        assert all(answer == ("error", {"error": NOT_AN_UPLOAD}) for answer in _errors_only(answers))
    assert time.perf_counter() - started < 10  # every hostile call came back, none hung


def _answer_seconds(base: str, api: str, args: list) -> float:
    started = time.perf_counter()
    event, payload = call(base, api, args)
    assert event == "complete", payload
    return time.perf_counter() - started


def _errors_only(answers: Iterator[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The answers as (event, {"error": message}), dropping the display fields Gradio adds to an error."""
    return [(event, {"error": payload["error"]}) for event, payload in answers]


def test_concurrent_identical_searches_each_get_whole_images(base: str) -> None:
    # Identical results used to be rewritten in Gradio's cache while another request was downloading them.
    def search_and_download(_: int) -> list[bytes]:
        event, payload = call(base, "search_text", ["a red circle", 8])
        assert event == "complete", payload
        return [httpx.get(item["image"]["url"], timeout=30).raise_for_status().content for item in payload[0]]

    with ThreadPoolExecutor(12) as pool:
        downloads = [image for images in pool.map(search_and_download, range(12)) for image in images]
    assert len(downloads) == 12 * 8
    for content in downloads:
        with Image.open(io.BytesIO(content)) as image:
            image.load()  # a truncated file fails here
