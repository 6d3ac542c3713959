"""The encoder protocol that labeling, indexing and the app embed with, and its torch implementation.

Two implementations exist: `TorchEncoder` here (a checkpoint in memory) and `softclip.export.OnnxEncoder`
(an ONNX export folder, opened by its caller: the core never imports ONNX Runtime). Everything that embeds
at scale takes any object following `Encoder`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from softclip.transform import PreprocessConfig, image_to_array, load_image


@runtime_checkable
class Encoder(Protocol):
    """What softclip needs from a model to embed images and texts."""

    embed_dim: int
    model_id: str

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> float32 [3, H, W] pixels."""

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [B, 3, H, W] -> L2-normalised float32 [B, D]."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """B strings -> L2-normalised float32 [B, D]."""


def state_dict_id(model: torch.nn.Module) -> str:
    """A short content hash of a model's weights: the same weights give the same id."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TorchEncoder:
    """The encoder protocol over a `SoftCLIP` model with its tokenizer and preprocessing attached."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 64, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = model.tokenizer
        self.preprocess_config: PreprocessConfig = model.preprocess_config
        self.context_length = model.config.text.context_length
        self.embed_dim = model.config.embed_dim
        self.batch_size = batch_size
        self.model_id = state_dict_id(model)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return image_to_array(image, self.preprocess_config)

    @torch.no_grad()
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        chunks = [
            self.model.encode_image(
                torch.from_numpy(np.ascontiguousarray(pixels[i : i + self.batch_size])).to(self.device)
            )
            for i in range(0, len(pixels), self.batch_size)
        ]
        return _stack(chunks, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        chunks = [
            self.model.encode_text(
                self.tokenizer(list(texts[i : i + self.batch_size]), self.context_length).to(self.device)
            )
            for i in range(0, len(texts), self.batch_size)
        ]
        return _stack(chunks, self.embed_dim)


def _stack(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    return torch.cat(chunks).float().cpu().numpy()


def is_export_dir(path: str | Path) -> bool:
    """An ONNX export folder (as `softclip export` writes it) rather than a checkpoint folder."""
    return (Path(path) / "image_encoder.onnx").is_file()


def open_encoder(source: str | Path | torch.nn.Module | Encoder) -> Encoder:
    """An encoder from a model, an encoder, or a checkpoint folder / Hub id.

    An ONNX export folder needs ONNX Runtime, which the core never imports: open it with
    `softclip.export.OnnxEncoder` (or `softclip.export.encoder_for`, which takes any of these) and pass that.
    """
    if isinstance(source, torch.nn.Module):
        return TorchEncoder(source)
    if isinstance(source, (str, Path)):
        if is_export_dir(source):
            raise ValueError(
                f"{source} is an ONNX export folder: pass softclip.export.OnnxEncoder({str(source)!r}) instead"
            )
        from softclip.pretrained import from_pretrained

        return TorchEncoder(from_pretrained(source))
    if isinstance(source, Encoder):
        return source
    raise TypeError(f"cannot make an encoder from {type(source).__name__}: give a model, a folder or an encoder")


def load_pixels(images: list[str | Path | Image.Image], encoder: Encoder) -> np.ndarray:
    """Paths or PIL images -> float32 [B, 3, H, W] through the encoder's preprocessing."""
    return np.stack([encoder.preprocess(load_image(image)) for image in images])
