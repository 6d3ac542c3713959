"""The reference libraries (transformers, open_clip) and checkpoints they write, for the exactness tests.

They are test dependencies (the ``reference`` extra), never runtime ones. open_clip and transformers import
torchvision; the torchvision wheel on the package index is built against a CUDA torch, so on a CPU torch
its compiled ops do not load and its import stops at registering fake kernels for two ops it assumes
exist. Declaring those two op schemas lets the pure-Python parts these libraries use (transforms) import;
no torchvision op is ever called by the tests.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import pytest
import torch


@functools.lru_cache(maxsize=1)
def _declare_torchvision_ops() -> None:
    try:
        torch.ops.torchvision.nms  # noqa: B018 (present when torchvision's compiled ops load)
    except (AttributeError, RuntimeError):
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _declare_torchvision_ops.library = library  # keep the definitions alive


def open_clip():
    """The open_clip package, or a skip when it is not installed."""
    _declare_torchvision_ops()
    return pytest.importorskip("open_clip")


def transformers():
    """The transformers package, or a skip when it is not installed."""
    _declare_torchvision_ops()
    return pytest.importorskip("transformers")


def write_clip_vocab(folder: Path) -> Path:
    """CLIP's ``vocab.json`` and ``merges.txt`` built from the BPE file open_clip ships (OpenAI's vocabulary).

    The vocabulary is the 256 byte symbols, the same with the end-of-word mark ``</w>``, one token per merge
    of the first 48,894 merges, and the two special tokens: 49,408 in all.
    """
    package = open_clip()
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(package.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter and float buffer, so that no weight keeps a telling initial value (0 or 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # state_dict: parameters and saved buffers (BatchNorm statistics), not a causal mask
        for name, tensor in module.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
            if name.endswith("running_var"):
                tensor.abs_().add_(0.5)  # a variance must stay positive
    return module.eval()


def open_clip_model(vision: dict, quick_gelu: bool, seed: int = 0):
    """A small open_clip ``CLIP`` with random weights and OpenAI's preprocessing settings."""
    package = open_clip()
    from open_clip.model import CLIP, set_model_preprocess_cfg

    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}
    config = {"embed_dim": 24, "vision_cfg": vision, "text_cfg": text, "quick_gelu": quick_gelu}
    torch.manual_seed(seed)
    model = perturb(CLIP(**config), seed)
    preprocess = {
        "size": vision["image_size"],
        "mean": package.OPENAI_DATASET_MEAN,
        "std": package.OPENAI_DATASET_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    set_model_preprocess_cfg(model, preprocess)
    return model, config
