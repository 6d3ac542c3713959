"""Loading checkpoint folders, locally or from the Hugging Face Hub (`softclip.save` writes and pushes them).

A checkpoint folder holds `config.json` (architecture), `model.safetensors` (weights, never pickle),
`tokenizer.json` (with `tokenizer_settings.json` for CLIP-style tokenizers) and `preprocess.json`.
Loading needs nothing else. `from_pretrained` also converts pretrained CLIP models (transformers,
open_clip and OpenAI files, locally or from the Hub): see `softclip.clip_sources`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model

from softclip.config import ModelConfig
from softclip.tokenizer import Tokenizer
from softclip.transform import PreprocessConfig

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "preprocess.json")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing a file or holds a corrupt one."""


def from_pretrained(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
) -> torch.nn.Module:
    """A model from a softclip checkpoint, a pretrained CLIP (transformers or open_clip folder, OpenAI ``.pt``)
    or a Hub repo id of either (downloaded once, then served from the Hub cache, also offline).

    ``tokenizer`` names a folder with CLIP's ``vocab.json`` and ``merges.txt`` for an OpenAI file or an
    open_clip folder that has no tokenizer beside it.
    """
    from softclip.clip_sources import detect_format, load_clip

    path = resolve(name_or_path, cache_dir)
    if detect_format(path) != "softclip":
        return load_clip(path, tokenizer).to(device)
    return _load_checkpoint(path, device)


def _load_checkpoint(folder: Path, device: str | torch.device) -> torch.nn.Module:
    for name in CHECKPOINT_FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {folder} is missing {name}")
    model = _build(folder / "config.json")
    try:
        missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {folder}: model.safetensors is corrupt or does not fit: {error}") from error
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {folder}: model.safetensors does not match config.json "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.tokenizer = Tokenizer.load(folder / "tokenizer.json")
    model.preprocess_config = PreprocessConfig.load(folder / "preprocess.json")
    return model.eval()


def _build(config_path: Path) -> torch.nn.Module:
    from softclip.model import SoftCLIP

    try:
        config = ModelConfig.from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path} is not a valid model config: {error}") from error
    return SoftCLIP(config)


def resolve(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local folder or file as is; anything else is a Hub repo id, fetched (or found in the cache when offline)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    repo_id = str(name_or_path).removeprefix("hf-hub:")  # open_clip's spelling of a Hub model
    if repo_id.startswith((".", "/")) or repo_id.count("/") != 1:
        raise CheckpointError(f"{name_or_path} is neither a model folder or file nor a Hub repo id (owner/name)")
    return _download(repo_id, cache_dir)


def _download(repo_id: str, cache_dir: str | Path | None) -> Path:
    """The repo's small files, then only the weights its format needs (progress bars from huggingface_hub)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    from softclip.clip_sources import OPEN_CLIP_WEIGHTS, SMALL_FILES, TRANSFORMERS_WEIGHTS, detect_format

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=SMALL_FILES, cache_dir=cache_dir))
        kind = detect_format(folder)
        weights = {"open_clip": OPEN_CLIP_WEIGHTS, "transformers": TRANSFORMERS_WEIGHTS}.get(
            kind, ("model.safetensors",)
        )
        for name in weights:
            try:
                return Path(hf_hub_download(repo_id, name, cache_dir=cache_dir)).parent
            except (EntryNotFoundError, LocalEntryNotFoundError):  # not in the repo, or not cached when offline
                continue
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise CheckpointError(f"could not find {repo_id} locally, in the Hub cache or on the Hub: {error}") from error
    raise CheckpointError(f"the Hub repo {repo_id} has none of the weight files {', '.join(weights)}")
