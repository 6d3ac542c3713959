"""The app under load: latency of many text searches sent at once through its real HTTP API, and where the
time of one search goes.

Three tables:

1. The work of one search inside the app, sequential (median of ``--repeats``): the query's ONNX text
   embedding, the FAISS search, the result thumbnails made the first time (decode, shrink, WebP encode,
   atomic write) and reused, and the whole handler.
2. One search alone over HTTP (POST the call, read its event stream, download every result image).
3. ``--requests`` searches sent at once from as many client threads, each reading its result and downloading
   its images, for each queue concurrency limit in ``--concurrency``: p50/p95 latency to the last image, the
   median time to the answer alone, how many failed, wall time and searches per second. The queue holds
   every request here (``queue_size`` >= requests); two last rows: one FAISS thread per core for each search
   instead of one, and the app's default ``Limits``.

Queries cycle through SynthScenes captions, so results repeat as they do for a team searching one index.
Without ``--index``/``--model`` an untrained tiny-vit (the demo's architecture, the same compute as the
trained one) is exported and a folder of ``--scenes`` SynthScenes images indexed in a temporary folder.
Client threads share the machine with the server: on a small machine they take CPU from it, which the
ratios between rows, measured in one run, cancel out better than the absolute times.

    python benchmarks/app_load.py --requests 100 --concurrency 1 2 4 8 --work /tmp/app-load
    python benchmarks/app_load.py --index ~/.cache/softclip/demo/index --model ~/.cache/softclip/demo/train/final
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import httpx
import numpy as np
import served_app  # beside this script
from served_app import free_port

from softclip.app.app import build_blocks, serve
from softclip.app.requests import Limits
from softclip.app.state import AppState
from softclip.app.thumbnails import ThumbnailFiles

QUERIES = [
    f"a {size} {colour} {shape}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow", "purple")
    for shape in ("circle", "square")
]


def build_fixture(folder: Path, scenes: int) -> tuple[Path, Path]:
    """An untrained tiny-vit, its ONNX export and an index of ``scenes`` SynthScenes images under ``folder``."""
    import torch

    from softclip.export import OnnxEncoder, export_model
    from softclip.index import build_index
    from softclip.model import create_model
    from softclip.save import save_pretrained
    from softclip.tokenizer import Tokenizer
    from softclip.training.captions import caption_for
    from softclip.training.render import render_scene
    from softclip.training.scenes import sample_scene

    rng = np.random.default_rng(0)
    (folder / "photos").mkdir(parents=True)
    captions = []
    for i in range(scenes):
        scene = sample_scene(rng)
        render_scene(scene, 224).save(folder / "photos" / f"scene-{i:05d}.png")
        captions.append(caption_for(scene, rng))
    torch.manual_seed(0)
    model = create_model("tiny-vit")
    model.tokenizer = Tokenizer.train(captions + QUERIES, vocab_size=500)
    checkpoint = save_pretrained(model, folder / "checkpoint")
    encoder = OnnxEncoder(export_model(checkpoint, folder / "export"))
    build_index(folder / "photos", encoder, folder / "index", progress=False)
    return folder / "index", checkpoint


def median_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def work_of_one_search(state: AppState, k: int, repeats: int) -> list[tuple[str, float]]:
    """Table 1: milliseconds of each part of a search, run in this process one after another."""
    query = QUERIES[0]
    vector = state.query_vector(query)
    paths = [hit.path for hit in state.index.search_vector(vector, k)]

    def fresh_thumbnails() -> None:
        with tempfile.TemporaryDirectory() as folder:
            thumbnails = ThumbnailFiles(folder, folder, state.thumbnails.side, state.limits.max_megapixels)
            for path in paths:
                thumbnails.path_for(path)

    def embed_then_search(threads: int) -> None:  # as in a request: the search right after the text encoder
        faiss.omp_set_num_threads(threads)
        state.index.search_vector(state.query_vector(query), k)

    state.search_text(query, k)  # warm: sessions, caches
    cores = os.cpu_count() or 1
    rows = [
        ("query embedding (ONNX text encoder)", median_ms(lambda: state.query_vector(query), repeats)),
        (
            f"query embedding + FAISS search, top {k}, 1 FAISS thread (the app)",
            median_ms(lambda: embed_then_search(1), repeats),
        ),
        (f"{k} thumbnails made (decode, shrink, WebP, write)", median_ms(fresh_thumbnails, repeats)),
        (f"{k} thumbnails reused", median_ms(lambda: [state.thumbnails.path_for(p) for p in paths], repeats)),
        ("whole handler (search_text), thumbnails reused", median_ms(lambda: state.search_text(query, k), repeats)),
        (  # last: it changes the process-wide FAISS setting, restored below
            f"query embedding + FAISS search, top {k}, {cores} FAISS threads",
            median_ms(lambda: embed_then_search(cores), repeats),
        ),
    ]
    faiss.omp_set_num_threads(1)
    return rows


def search_over_http(client: httpx.Client, base: str, query: str, k: int) -> tuple[float, float]:
    """Seconds from sending a search to its answer, and to having downloaded every result image.

    Raises on any failure (an error event, a failed download).
    """
    started = time.perf_counter()
    call = client.post(f"{base}/gradio_api/call/search_text", json={"data": [query, k]})
    call.raise_for_status()
    stream = client.get(f"{base}/gradio_api/call/search_text/{call.json()['event_id']}").text
    answered = time.perf_counter() - started
    if "event: complete" not in stream:
        raise RuntimeError(stream.strip().splitlines()[-1][:200])
    data = json.loads([line for line in stream.splitlines() if line.startswith("data: ")][-1][len("data: ") :])
    for item in data[0]:
        client.get(item["image"]["url"]).raise_for_status()
    return answered, time.perf_counter() - started


@contextlib.contextmanager
def app_process(index: Path, model: Path, limits: Limits, faiss_threads: int | None = None) -> Iterator[str]:
    """Serve the app in its own process (client threads here would otherwise share its interpreter lock).

    ``faiss_threads`` overrides the app's one FAISS thread per search, to measure what that choice buys.
    """
    port = free_port()
    options = ["--index", str(index), "--model", str(model), "--serve", str(port)]
    options += ["--concurrency", str(limits.concurrency), "--queue-size", str(limits.queue_size)]
    options += ["--faiss-threads", str(faiss_threads)] if faiss_threads else []
    with served_app.app_process(__file__, options, port, stop_seconds=30) as url:
        yield url


def serve_until_stopped(index: Path, model: Path, port: int, limits: Limits, faiss_threads: int | None) -> None:
    """The server side of ``app_process``: says 'serving' once it answers, then runs until terminated."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait below (threads inherit the mask)
    state = AppState.load(index, model, limits=limits)
    if faiss_threads:
        faiss.omp_set_num_threads(faiss_threads)
    demo = serve(build_blocks(state), port=port, block=False, limits=limits)
    print("serving", demo.local_url, flush=True)
    signal.sigwait({signal.SIGTERM})
    demo.close()


def under_load(base: str, requests: int, k: int) -> dict[str, float]:
    """Table 3, one row: ``requests`` searches sent at once to the app at ``base``."""
    pool_limits = httpx.Limits(max_connections=requests + 10, max_keepalive_connections=requests + 10)
    with httpx.Client(timeout=600, limits=pool_limits) as client:
        for query in QUERIES:  # every result thumbnail made once, as in an app that has been in use
            search_over_http(client, base, query, k)
        queries = [QUERIES[i % len(QUERIES)] for i in range(requests)]
        started = time.perf_counter()
        with ThreadPoolExecutor(requests) as pool:
            futures = [pool.submit(search_over_http, client, base, query, k) for query in queries]
        wall = time.perf_counter() - started
    answers = [future.result() for future in futures if future.exception() is None]
    latencies = sorted(total for _, total in answers)
    errors = [future.exception() for future in futures if future.exception() is not None]
    return {
        "errors": sorted({f"{type(error).__name__}: {str(error)[:160]}" for error in errors}),
        "p50": _percentile(latencies, 50),
        "p95": _percentile(latencies, 95),
        "answer_p50": _percentile([answered for answered, _ in answers], 50),
        "failed": requests - len(answers),
        "wall": wall,
        "rate": len(answers) / wall,
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="index folder (default: a small one built in a temporary folder)")
    parser.add_argument("--model", type=Path, help="checkpoint the index's export was made from")
    parser.add_argument("--scenes", type=int, default=500, help="images in the temporary index")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--k", type=int, default=12, help="results per search (the app's default)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--queue-size", type=int, default=Limits().queue_size, help=argparse.SUPPRESS)
    parser.add_argument("--faiss-threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--work", type=Path, help="folder for the built index, reused when present (default: temporary)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.serve:
        limits = Limits(concurrency=args.concurrency[0], queue_size=args.queue_size)
        serve_until_stopped(args.index, args.model, args.serve, limits, args.faiss_threads)
        return
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        if args.index:
            index, model = args.index, args.model
        elif (work / "index").is_dir():
            index, model = work / "index", work / "checkpoint"
        else:
            index, model = build_fixture(work, args.scenes)
        state = AppState.load(index, model)
        print(f"{len(state.index)} images, k={args.k}, {os.cpu_count()} CPUs seen\n")
        print("| part of one search | ms (median) |\n| --- | ---: |")
        for what, ms in work_of_one_search(state, args.k, args.repeats):
            print(f"| {what} | {ms:.1f} |")
        report_load(index, model, args)


def report_load(index: Path, model: Path, args: argparse.Namespace) -> None:
    default = Limits()
    holds_all = dataclasses.replace(default, queue_size=args.requests)
    rows = [(f"{c}", dataclasses.replace(holds_all, concurrency=c), None) for c in args.concurrency]
    cores = os.cpu_count() or 1
    rows.append((f"{default.concurrency}, {cores} FAISS threads per search", holds_all, cores))
    rows.append((f"{default.concurrency} (default Limits, queue {default.queue_size})", default, None))
    with app_process(index, model, default) as base:
        alone = [under_load(base, 1, args.k) for _ in range(5)]
    print(
        f"\none search alone over HTTP: answer {1000 * statistics.median(r['answer_p50'] for r in alone):.0f} ms, ",
        end="",
    )
    print(f"with its {args.k} images downloaded {1000 * statistics.median(r['p50'] for r in alone):.0f} ms\n")
    print(f"{args.requests} searches at once (latency = until every result image is downloaded):\n")
    print("| concurrency limit | p50 s | p95 s | answer p50 s | failed | wall s | searches/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    errors = []
    for name, limits, faiss_threads in rows:
        with app_process(index, model, limits, faiss_threads) as base:
            row = under_load(base, args.requests, args.k)
        errors += [f"{name}: {error}" for error in row["errors"]]
        print(
            f"| {name} | {row['p50']:.2f} | {row['p95']:.2f} | {row['answer_p50']:.2f} | {row['failed']} "
            f"| {row['wall']:.1f} | {row['rate']:.1f} |",
            flush=True,
        )
    if errors:
        print("\nfailures:\n" + "\n".join(errors))


if __name__ == "__main__":
    main()
