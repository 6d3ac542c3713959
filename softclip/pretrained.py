"""Checkpoint folders: save, load (local or from the Hugging Face Hub) and push.

A checkpoint folder holds `config.json` (architecture), `model.safetensors` (weights, never pickle),
`tokenizer.json` and `preprocess.json`. Loading needs nothing else.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from softclip.config import ModelConfig
from softclip.tokenizer import Tokenizer
from softclip.transform import PreprocessConfig

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "preprocess.json")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing a file or holds a corrupt one."""


def save_pretrained(model: torch.nn.Module, folder: str | Path) -> Path:
    """Write `model` (with its tokenizer and preprocessing) as a checkpoint folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / "config.json")
    # save_model handles the tensors the ROI path shares with the image tower.
    save_model(model, str(folder / "model.safetensors"))
    model.tokenizer.save(folder / "tokenizer.json")
    model.preprocess_config.save(folder / "preprocess.json")
    return folder


def from_pretrained(
    name_or_path: str | Path, device: str | torch.device = "cpu", cache_dir: str | Path | None = None
) -> torch.nn.Module:
    """A model from a checkpoint folder or a Hub repo id (the Hub cache is used offline)."""
    folder = _resolve(name_or_path, cache_dir)
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


def _resolve(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local folder as is; anything else is a Hub repo id, fetched (or found in the cache when offline)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") != 1:
        raise CheckpointError(f"{name_or_path} is neither a checkpoint folder nor a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=list(CHECKPOINT_FILES), cache_dir=cache_dir))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise CheckpointError(
            f"could not find {name_or_path} locally, in the Hub cache or on the Hub: {error}"
        ) from error


def push_to_hub(
    model: torch.nn.Module,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload softclip model",
    api=None,
) -> list[str]:
    """Upload the checkpoint folder of `model` to the Hub; returns the file names uploaded."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=tmp, repo_id=repo_id, commit_message=commit_message)
        return sorted(p.name for p in Path(tmp).iterdir())
