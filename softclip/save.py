"""Writing checkpoint folders: `save_pretrained` to a folder, `push_to_hub` to a Hugging Face Hub repo.

A checkpoint folder holds `config.json` (architecture), `model.safetensors` (weights, never pickle),
`tokenizer.json` (with `tokenizer_settings.json` for CLIP-style tokenizers) and `preprocess.json`;
`softclip.pretrained.from_pretrained` reads it back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_model


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
