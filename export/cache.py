"""Exports made on first use and kept: ``softclip index PHOTOS --model openai/clip-vit-base-patch32`` works in one step.

An export is cached under ``$SOFTCLIP_CACHE/exports`` (default ``~/.cache/softclip``), in a folder named after
the source and a key of what it resolved to (the Hub snapshot's revision is in its path; a local source's
files are keyed by their sizes and modification times) and the precision, so that new weights get a new export.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from softclip.encoder import is_export_dir
from softclip.export.exporter import export_model, precision_of
from softclip.pretrained import resolve


def cache_root() -> Path:
    """``$SOFTCLIP_CACHE``, else ``~/.cache/softclip``."""
    return Path(os.environ.get("SOFTCLIP_CACHE") or Path.home() / ".cache" / "softclip")


def _fingerprint(path: Path) -> str:
    """What identifies the weights at ``path``: its resolved location and its files' sizes and times."""
    files = [path] if path.is_file() else sorted(item for item in path.iterdir() if item.is_file())
    stats = [(item.name, item.stat().st_size, item.stat().st_mtime_ns) for item in files]
    return f"{path.resolve()}|{stats}"


def cached_export_dir(source: str | Path, fp16: bool = False, int8: bool = False) -> Path:
    """Where the export of ``source`` at this precision is kept (it may not exist yet)."""
    precision = precision_of(fp16, int8)
    key = hashlib.sha256(f"{_fingerprint(resolve(source))}|{precision}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(source).removeprefix("hf-hub:")).strip("-.")[-60:]
    return cache_root() / "exports" / f"{name}-{precision}-{key}"


def cached_export(source: str | Path, fp16: bool = False, int8: bool = False) -> Path:
    """An export folder for ``source``: itself when it is one, else the cached export, made now if missing."""
    if is_export_dir(source):
        return Path(source)
    folder = cached_export_dir(source, fp16, int8)
    if not is_export_dir(folder):
        print(f"exporting {source} to {folder} (once; later runs reuse it)", flush=True)
        export_model(source, folder, fp16=fp16, int8=int8)
    return folder
