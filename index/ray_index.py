"""Indexing on Ray: the index ``build_index`` makes, with decoding and the model spread over a Ray cluster.

This process (the driver) lists the files, compares them with the manifest and commits every batch, as a
local run does (``IndexWriter``); only the embedding step runs on Ray. Ray Data reads and decodes the files in
tasks with the local path's ``decode_file`` (a file that fails is recorded with its reason and never fails the
job), then an actor pool of encoders, one model load per actor, embeds them (Ray Data fuses the two steps into
the actors when they ask for the same resources, as CPU actors do); ``num_gpus_per_worker`` gives
each actor a share of a GPU, where ONNX Runtime runs on CUDA. Ray restarts an actor that dies and retries its
batches (Ray Data's default for actor pools), so the index comes out complete, and a rerun is incremental.

Files are read where the tasks run: a local folder, and the export folder, must be visible under the same
path on every node (a shared filesystem); ``s3://``, ``gs://``, ``hdfs://`` and other URIs are listed and read
through pyarrow's filesystems, with the URIs themselves as the manifest's paths. ray is imported only here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from softclip.index.build import DEFAULT_BATCH_SIZE, EmbeddedBatch, IndexReport, RunOptions, build_index
from softclip.index.decode import DEFAULT_MAX_MEGAPIXELS, DecodedFile, Reader, decode_file, draft_side, read_file
from softclip.index.scan import ScannedFile, ScanResult, is_image_path, scan_folder

if TYPE_CHECKING:
    import pyarrow.fs

    from softclip.encoder import Encoder

# Builds the encoder of an export folder inside each actor: the model loads once per actor.
EncoderFactory = Callable[[str], "Encoder"]


def build_index_on_ray(
    source: str | os.PathLike,
    export_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    address: str | None = None,
    num_gpus_per_worker: float = 0.0,
    max_encoders: int | None = None,
    factory: str | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool | None = None,
    on_disk_above: int | None = None,
    make_encoder: EncoderFactory | None = None,
) -> IndexReport:
    """Index every image under ``source`` (a folder or a filesystem URI) into ``index_dir``, embedding on Ray.

    ``address`` is the cluster to join (``"auto"``: the one this machine belongs to; None: a running
    ``ray.init`` in this process, else a local Ray instance). ``max_encoders`` caps the actor pool (default:
    one per ``num_gpus_per_worker`` GPUs, else one per CPU of the cluster).
    ``make_encoder(export_dir)`` builds each actor's encoder (default: ``OnnxEncoder``).
    """
    if num_gpus_per_worker < 0:
        raise ValueError(f"num_gpus_per_worker must be 0 or more, got {num_gpus_per_worker}")
    if max_encoders is not None and max_encoders < 1:
        raise ValueError(f"max_encoders must be at least 1, got {max_encoders}")
    export_dir = os.path.abspath(export_dir)
    make_encoder = make_encoder or onnx_encoder
    scan, reader = list_source(source)
    encoder = make_encoder(export_dir)  # the driver's copy names the model and its preprocessing
    embed = RayEmbedder(export_dir, encoder, reader, address, num_gpus_per_worker, max_encoders, make_encoder)
    return build_index(
        scan,
        encoder,
        index_dir,
        factory=factory,
        max_megapixels=max_megapixels,
        batch_size=batch_size,
        progress=progress,
        on_disk_above=on_disk_above,
        embed=embed,
    )


def onnx_encoder(export_dir: str) -> Encoder:
    """The ONNX Runtime encoder of an export folder (CUDA where the actor has a GPU)."""
    from softclip.export import OnnxEncoder

    return OnnxEncoder(export_dir)


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address``, or start a local instance; keep a connection already made."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)


def list_source(source: str | os.PathLike) -> tuple[ScanResult, Reader]:
    """The image files of a local folder or a filesystem URI, and how a Ray task reads one of them."""
    text = os.fspath(source)
    if "://" not in text:
        return scan_folder(text), read_file
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(text.rstrip("/"))
    base = _uri_base(text.rstrip("/"), root)
    selector = pyarrow.fs.FileSelector(root, recursive=True)
    files = [
        ScannedFile(base + info.path, int(info.size), int(info.mtime_ns or 0))
        for info in filesystem.get_file_info(selector)
        if info.type == pyarrow.fs.FileType.File and _visible_image(info.path, root)
    ]
    files.sort(key=lambda file: file.path)
    return ScanResult(root=base + root, files=files), FilesystemReader(filesystem, base)


@dataclass(frozen=True)
class FilesystemReader:
    """Reads a file named by its URI from a pyarrow filesystem (picklable: it travels to Ray tasks)."""

    filesystem: pyarrow.fs.FileSystem
    base: str  # what precedes the filesystem's own path in a URI, e.g. "s3://"

    def __call__(self, uri: str) -> tuple[bytes, ScannedFile]:
        path = uri[len(self.base) :]
        with self.filesystem.open_input_stream(path) as stream:
            data = stream.readall()
        mtime_ns = self.filesystem.get_file_info(path).mtime_ns
        return data, ScannedFile(uri, len(data), int(mtime_ns or 0))


class RayEmbedder:
    """The embedding step of an indexing run (``build.Embedder``) on Ray Data: decode tasks, encoder actors.

    Ray is joined (``connect(address)``) only when there is something to embed: a rerun that finds
    nothing new never starts it.
    """

    def __init__(
        self,
        export_dir: str,
        encoder: Encoder,
        reader: Reader,
        address: str | None,
        num_gpus_per_worker: float,
        max_encoders: int | None,
        make_encoder: EncoderFactory,
    ) -> None:
        self.export_dir = export_dir
        self.preprocess_config = encoder.preprocess_config
        self.embed_dim = int(encoder.embed_dim)
        self.min_side = draft_side(encoder)
        self.reader = reader
        self.address = address
        self.num_gpus = num_gpus_per_worker
        self.max_encoders = max_encoders
        self.make_encoder = make_encoder

    def __call__(self, files: list[ScannedFile], options: RunOptions) -> Iterator[EmbeddedBatch]:
        import ray.data

        connect(self.address)
        rows = [{"path": file.path, "size": file.size, "mtime_ns": file.mtime_ns} for file in files]
        decode = functools.partial(
            decode_batch,
            preprocess_config=self.preprocess_config,
            max_megapixels=options.max_megapixels,
            min_side=self.min_side,
            reader=self.reader,
        )
        dataset = ray.data.from_items(rows).map_batches(decode, batch_size=options.batch_size)
        dataset = dataset.map_batches(
            EncoderActor,
            fn_constructor_args=(self.make_encoder, self.export_dir, self.embed_dim),
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.max_encoders or self._default_encoders()),
            num_cpus=1,
            num_gpus=self.num_gpus or None,
        )
        for batch in dataset.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
            yield embedded_batch(batch)

    def _default_encoders(self) -> int:
        """One actor per ``num_gpus`` GPUs of the cluster; on CPUs, one per CPU.

        CPU actors ask for the same resources as the decode step, so Ray Data fuses the two into the
        actors and every CPU decodes and encodes (2 actors on 2 CPUs: 60 images/s against 48 with one).
        """
        import ray

        resources = ray.cluster_resources()
        if self.num_gpus:
            return max(1, int(resources.get("GPU", 0) / self.num_gpus))
        return max(1, int(resources.get("CPU", 1)))


def decode_batch(
    batch: dict[str, np.ndarray],
    preprocess_config: object,
    max_megapixels: float,
    min_side: int | None,
    reader: Reader,
) -> dict[str, np.ndarray]:
    """A Ray task: read, hash, decode and preprocess a batch of files with ``decode_file``.

    Pixels are [B, 3, H, W] (zeros where a file failed, ``has_pixels`` False); strings are "" for none.
    """
    from softclip.transform import image_to_array

    preprocess = functools.partial(image_to_array, config=preprocess_config)
    listed = [ScannedFile(str(p), int(s), int(m)) for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])]
    decoded = [decode_file(file, preprocess, max_megapixels, min_side, reader) for file in listed]
    side = preprocess_config.size
    pixels = np.zeros((len(decoded), 3, side, side), dtype=np.float32)
    for row, item in enumerate(decoded):
        if item.pixels is not None:
            pixels[row] = item.pixels
    return {
        "path": np.array([item.file.path for item in decoded], dtype=object),
        "size": np.array([item.file.size for item in decoded], dtype=np.int64),
        "mtime_ns": np.array([item.file.mtime_ns for item in decoded], dtype=np.int64),
        "content_hash": np.array([item.content_hash or "" for item in decoded], dtype=object),
        "error": np.array([item.error or "" for item in decoded], dtype=object),
        "vanished": np.array([item.vanished for item in decoded], dtype=bool),
        "has_pixels": np.array([item.pixels is not None for item in decoded], dtype=bool),
        "pixels": pixels,
    }


class EncoderActor:
    """A Ray actor holding one encoder: decoded batches in, embeddings [B, D] out (zeros where none)."""

    def __init__(self, make_encoder: EncoderFactory, export_dir: str, embed_dim: int) -> None:
        self.encoder = make_encoder(export_dir)
        self.embed_dim = embed_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        has_pixels = batch["has_pixels"]
        embeddings = np.zeros((len(has_pixels), self.embed_dim), dtype=np.float32)
        if has_pixels.any():
            embeddings[has_pixels] = self.encoder.encode_images(batch["pixels"][has_pixels])
        out = {name: column for name, column in batch.items() if name != "pixels"}
        out["embedding"] = embeddings
        return out


def embedded_batch(batch: dict[str, np.ndarray]) -> EmbeddedBatch:
    """The driver's view of an embedded batch: ``(DecodedFile, embedding or None)`` for the commit step."""
    items = []
    for row in range(len(batch["path"])):
        file = ScannedFile(str(batch["path"][row]), int(batch["size"][row]), int(batch["mtime_ns"][row]))
        item = DecodedFile(
            file,
            content_hash=str(batch["content_hash"][row]) or None,
            error=str(batch["error"][row]) or None,
            vanished=bool(batch["vanished"][row]),
        )
        items.append((item, np.asarray(batch["embedding"][row]) if batch["has_pixels"][row] else None))
    return items


def _uri_base(uri: str, root: str) -> str:
    """The part of ``uri`` before the filesystem path ``root`` ("s3://" for "s3://bucket/photos")."""
    if not uri.endswith(root):
        raise ValueError(f"cannot tell the filesystem path in {uri!r} (pyarrow reads it as {root!r})")
    return uri[: len(uri) - len(root)]


def _visible_image(path: str, root: str) -> bool:
    """An image file name, with no hidden folder between ``root`` and it (as ``scan_folder`` skips them)."""
    relative = path[len(root) :].strip("/")
    return is_image_path(path) and not any(part.startswith(".") for part in relative.split("/")[:-1])
