"""Pretrained CLIP models from the files their libraries write: which format a path holds, and loading it.

- transformers: ``config.json`` with ``model_type`` clip; weights ``model.safetensors`` or ``pytorch_model.bin``;
  tokenizer ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``; preprocessing ``preprocessor_config.json``.
- open_clip: ``open_clip_config.json`` (``model_cfg`` and ``preprocess_cfg``); weights
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``; the tokenizer files beside them, or named.
- openai: a ``.pt`` file, a state dict or OpenAI's TorchScript archive (read as data); the architecture comes
  from the shapes; ``vocab.json`` + ``merges.txt`` beside it or named; OpenAI's preprocessing.

Every loader returns a ``SoftCLIP`` in eval mode whose ROI path is freshly initialised.
"""

from __future__ import annotations

from pathlib import Path

import torch

from softclip.clip_tokenizer import folder_tokenizer, has_vocab
from softclip.convert import (
    ConversionError,
    config_from_open_clip,
    config_from_openai_state,
    config_from_transformers,
    first_file,
    load_converted,
    openai_to_softclip,
    preprocess_from_open_clip,
    preprocess_from_transformers,
    read_json,
    read_weights,
    transformers_to_openai,
)
from softclip.tokenizer import Tokenizer
from softclip.transform import PreprocessConfig

FORMATS = ("softclip", "transformers", "open_clip", "openai")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Every file a CLIP source may need, for fetching from the Hub: the weights are chosen from these afterwards.
SMALL_FILES = [
    "config.json",
    "open_clip_config.json",
    "preprocessor_config.json",
    "preprocess.json",
    "tokenizer.json",
    "tokenizer_settings.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]


def detect_format(path: Path) -> str:
    """Which of ``FORMATS`` ``path`` holds (a folder, or a ``.pt``/``.bin``/``.safetensors`` file for openai)."""
    if path.is_file():
        return "openai"
    if (path / "open_clip_config.json").is_file():
        return "open_clip"
    config = path / "config.json"
    if (path / "preprocess.json").is_file() and not config.is_file():
        return "softclip"  # a softclip checkpoint missing its config: loading it says which file is missing
    if config.is_file():
        data = read_json(config)
        if data.get("model_type") == "clip" or "CLIPModel" in data.get("architectures", []):
            return "transformers"
        if "vision" in data and "text" in data:
            return "softclip"
        raise ConversionError(f"{config} is neither a softclip config nor a transformers CLIP config")
    raise ConversionError(
        f"{path} holds no model: expected a softclip checkpoint (config.json, model.safetensors, ...), "
        "a transformers CLIP folder (config.json with model_type clip), an open_clip folder "
        "(open_clip_config.json) or an OpenAI .pt file"
    )


def _build(config, state: dict[str, torch.Tensor], tokenizer: Tokenizer, preprocess: PreprocessConfig, source: str):
    from softclip.model import SoftCLIP

    # A fixed seed for the one part CLIP has no weights for (the ROI path): every conversion of a source gives
    # the same model, so a checkpoint still matches the export made from an earlier conversion.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SoftCLIP(config)
    load_converted(model, openai_to_softclip(state, resnet=config.vision.kind == "resnet"), source)
    model.tokenizer, model.preprocess_config = tokenizer, preprocess
    return model.eval()


def _check_vocab(tokenizer: Tokenizer, config, source: str) -> None:
    if tokenizer.vocab_size > config.text.vocab_size:
        raise ConversionError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens, the text tower embeds {config.text.vocab_size}"
        )


def load_transformers(folder: Path):
    """A ``CLIPModel`` folder written by transformers' ``save_pretrained`` (model and processor)."""
    config = config_from_transformers(read_json(folder / "config.json"))
    state = transformers_to_openai(read_weights(first_file(folder, TRANSFORMERS_WEIGHTS)))
    if not has_vocab(folder):
        raise ConversionError(f"{folder}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    tokenizer = folder_tokenizer(folder, "transformers")
    _check_vocab(tokenizer, config, str(folder))
    processor = folder / "preprocessor_config.json"
    preprocess = preprocess_from_transformers(
        read_json(processor) if processor.is_file() else {}, config.vision.image_size
    )
    return _build(config, state, tokenizer, preprocess, str(folder))


def load_open_clip(folder: Path, tokenizer_folder: Path | None = None):
    """An open_clip folder as open_clip writes it for the Hub (``open_clip_config.json`` and weights)."""
    settings = read_json(folder / "open_clip_config.json")
    if "model_cfg" not in settings:
        raise ConversionError(f"{folder / 'open_clip_config.json'} has no model_cfg")
    config = config_from_open_clip(settings["model_cfg"])
    state = read_weights(first_file(folder, OPEN_CLIP_WEIGHTS))
    tokenizer = folder_tokenizer(_tokenizer_folder(folder, tokenizer_folder), "openai")
    _check_vocab(tokenizer, config, str(folder))
    preprocess = preprocess_from_open_clip(settings.get("preprocess_cfg", {}), config.vision.image_size)
    return _build(config, state, tokenizer, preprocess, str(folder))


def load_openai(file: Path, tokenizer_folder: Path | None = None):
    """OpenAI's ``.pt`` (TorchScript archive or plain state dict); the architecture is read from the shapes."""
    state = read_weights(file)
    config = config_from_openai_state(state)
    tokenizer = folder_tokenizer(_tokenizer_folder(file.parent, tokenizer_folder), "openai")
    _check_vocab(tokenizer, config, str(file))
    preprocess = PreprocessConfig(size=config.vision.image_size, crop_offset="round")
    return _build(config, state, tokenizer, preprocess, str(file))


def _tokenizer_folder(beside: Path, named: Path | None) -> Path:
    """The folder with the tokenizer's files: the one named, else the model's own, else an error saying so."""
    for folder in (named, beside):
        if folder is not None and has_vocab(Path(folder)):
            return Path(folder)
    where = f"{named} nor {beside}" if named else str(beside)
    raise ConversionError(
        f"no CLIP tokenizer in {where}: pass tokenizer=FOLDER (or --tokenizer) naming a folder with vocab.json and "
        "merges.txt (or a transformers tokenizer.json), e.g. a downloaded openai/clip-vit-base-patch32"
    )


def load_clip(path: Path, tokenizer: str | Path | None = None):
    """Any format but softclip's own, detected from ``path``."""
    kind = detect_format(path)
    named = Path(tokenizer) if tokenizer is not None else None
    if kind == "transformers":
        return load_transformers(path)
    if kind == "open_clip":
        return load_open_clip(path, named)
    if kind == "openai":
        return load_openai(path, named)
    raise ConversionError(f"{path} is a softclip checkpoint, not a CLIP source to convert")
