"""``OnnxEncoder``: the encoder protocol over an export folder, on ONNX Runtime; ``encoder_for`` opens any model.

CUDA is asked for only when ONNX Runtime offers it and an NVIDIA device is present, so a CPU machine
runs quietly on the CPU provider. Sessions log errors only.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from softclip.encoder import Encoder, is_export_dir, open_encoder
from softclip.export.folder import (
    IMAGE_GRAPH,
    IMAGE_INPUT,
    PREPROCESS_FILE,
    TEXT_GRAPH,
    TEXT_INPUT,
    TOKENIZER_FILE,
    ExportError,
    check_files,
    read_info,
)
from softclip.tokenizer import Tokenizer
from softclip.transform import PreprocessConfig, image_to_array

if TYPE_CHECKING:
    import onnxruntime

CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
ERROR_SEVERITY = 3  # ONNX Runtime log levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


@functools.lru_cache(maxsize=1)
def cuda_device_present() -> bool:
    """Whether an NVIDIA GPU is visible: the driver lists one in /proc, or ``nvidia-smi -L`` does."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return False
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return listing.returncode == 0 and "GPU" in listing.stdout


def default_providers() -> list[str]:
    """CUDA then CPU where ONNX Runtime has CUDA and a device exists; the CPU provider alone otherwise."""
    import onnxruntime

    if CUDA_PROVIDER in onnxruntime.get_available_providers() and cuda_device_present():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def disable_telemetry() -> None:
    """Keep ONNX Runtime from sending usage events: the environment switch, then its own call."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime

    onnxruntime.disable_telemetry_events()


def open_session(path: Path, providers: list[str], threads: int | None) -> onnxruntime.InferenceSession:
    """An ``onnxruntime.InferenceSession`` for ``path``, or ``ExportError`` naming the file."""
    disable_telemetry()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = ERROR_SEVERITY
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per physical core
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        raise ExportError(f"{path} is not a loadable ONNX graph: {error}") from error


def _load_companion(folder: Path, name: str, load: Callable[[Path], Any]) -> Any:
    try:
        return load(folder / name)
    except (OSError, ValueError) as error:
        raise ExportError(f"export folder {folder}: {name} is corrupt: {error}") from error


class OnnxEncoder:
    """The encoder protocol (``softclip.encoder.Encoder``) over an export folder, on ONNX Runtime."""

    def __init__(
        self,
        export_dir: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.folder = check_files(export_dir)
        self.info = read_info(self.folder)
        self.embed_dim: int = self.info["embed_dim"]
        self.model_id: str = self.info["model_id"]
        self.context_length: int = self.info["context_length"]
        self.image_size: int = self.info["image_size"]
        self.batch_size = batch_size
        self.tokenizer = _load_companion(self.folder, TOKENIZER_FILE, Tokenizer.load)
        self.preprocess_config = _load_companion(self.folder, PREPROCESS_FILE, PreprocessConfig.load)
        if self.preprocess_config.size != self.image_size:
            raise ExportError(
                f"export folder {self.folder}: {PREPROCESS_FILE} says size {self.preprocess_config.size}, "
                f"export.json says image_size {self.image_size}"
            )
        providers = list(providers) if providers else default_providers()
        self.image_session = open_session(self.folder / IMAGE_GRAPH, providers, threads)
        self.text_session = open_session(self.folder / TEXT_GRAPH, providers, threads)

    @property
    def providers(self) -> list[str]:
        """The execution providers the sessions actually run on, preferred first."""
        return self.image_session.get_providers()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 [3, H, W], the preprocessing saved with the export."""
        return image_to_array(image, self.preprocess_config)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [B, 3, H, W] -> L2-normalised float32 [B, D]."""
        pixels = np.asarray(pixels, dtype=np.float32)
        expected = (3, self.image_size, self.image_size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(f"pixels must be [B, {', '.join(map(str, expected))}], got {list(pixels.shape)}")
        return self._run(self.image_session, IMAGE_INPUT, pixels)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """B strings -> L2-normalised float32 [B, D]."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings, got one string")
        ids = self.tokenizer(list(texts), self.context_length).numpy()  # int64 [B, L]
        return self._run(self.text_session, TEXT_INPUT, ids)

    def _run(self, session: onnxruntime.InferenceSession, input_name: str, inputs: np.ndarray) -> np.ndarray:
        """Run ``session`` over ``inputs`` [B, ...] in chunks of ``batch_size``: [B, D] float32."""
        chunks = [
            session.run(None, {input_name: np.ascontiguousarray(inputs[start : start + self.batch_size])})[0]
            for start in range(0, len(inputs), self.batch_size)
        ]
        if not chunks:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"OnnxEncoder({str(self.folder)!r}, precision={self.info['precision']!r}, providers={self.providers})"


def encoder_for(source: str | Path | torch.nn.Module | Encoder) -> Encoder:
    """An encoder from an ONNX export folder, or from whatever `softclip.encoder.open_encoder` opens."""
    if isinstance(source, (str, Path)) and is_export_dir(source):
        return OnnxEncoder(source)
    return open_encoder(source)
