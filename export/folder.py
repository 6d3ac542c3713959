"""The export folder: its file names, ``export.json``, and the content id of its two graphs.

An export folder holds ``image_encoder.onnx`` (``pixel_values`` float32 [B, 3, H, W] -> ``image_embeds``
[B, D], L2-normalised), ``text_encoder.onnx`` (``input_ids`` int64 [B, L] -> ``text_embeds`` [B, D]),
``tokenizer.json``, ``preprocess.json`` and ``export.json`` (dimensions, opset, precision, ids, parity).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

IMAGE_GRAPH = "image_encoder.onnx"
TEXT_GRAPH = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
PREPROCESS_FILE = "preprocess.json"
INFO_FILE = "export.json"
EXPORT_FILES = (IMAGE_GRAPH, TEXT_GRAPH, TOKENIZER_FILE, PREPROCESS_FILE, INFO_FILE)

IMAGE_INPUT, IMAGE_OUTPUT = "pixel_values", "image_embeds"
TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"

FORMAT_NAME = "softclip-export"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
# What a reader of export.json relies on, with the type each must have.
REQUIRED_INFO = {
    "embed_dim": int,
    "context_length": int,
    "image_size": int,
    "opset": int,
    "precision": str,
    "model_id": str,
    "state_dict_id": str,
}


class ExportError(ValueError):
    """An export that cannot be written, or an export folder that is missing a file or holds a corrupt one."""


def graphs_id(folder: str | Path) -> str:
    """A short content hash of the two ONNX graphs: the ``model_id`` of an export."""
    digest = hashlib.blake2b(digest_size=8)
    for name in (IMAGE_GRAPH, TEXT_GRAPH):
        digest.update(name.encode())
        with open(Path(folder) / name, "rb") as graph:
            for block in iter(lambda: graph.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_files(folder: str | Path) -> Path:
    """``folder`` as a Path, or ``ExportError`` naming the first export file it lacks."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"export folder not found: {folder}")
    for name in EXPORT_FILES:
        if not (folder / name).is_file():
            raise ExportError(f"export folder {folder} is missing {name}")
    return folder


def write_info(folder: str | Path, info: dict[str, Any]) -> Path:
    """Write ``export.json`` into ``folder``."""
    file = Path(folder) / INFO_FILE
    file.write_text(json.dumps(info, indent=2) + "\n")
    return file


def read_info(folder: str | Path) -> dict[str, Any]:
    """The contents of ``export.json``, checked for the fields every reader needs."""
    file = Path(folder) / INFO_FILE
    try:
        info = json.loads(file.read_text())
    except FileNotFoundError:
        raise ExportError(f"export folder {file.parent} is missing {INFO_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(info, dict):
        raise ExportError(f"{file} must hold a JSON object, got {type(info).__name__}")
    for key, kind in REQUIRED_INFO.items():
        if not isinstance(info.get(key), kind):
            raise ExportError(f"{file}: {key!r} is missing or not a {kind.__name__} (got {info.get(key)!r})")
    if info["precision"] not in PRECISIONS:
        raise ExportError(f"{file}: precision must be one of {PRECISIONS}, got {info['precision']!r}")
    return info
