"""Model architectures as data: dataclass configs, JSON presets in ``model_configs/``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent / "model_configs"


@dataclass
class VisionConfig:
    """Image tower. ``kind`` is ``"vit"`` or ``"resnet"``."""

    kind: str = "vit"
    image_size: int = 224
    width: int = 768  # ViT: token width; ResNet: width of the stem (64 for RN50)
    layers: int | list[int] = 12  # ViT: blocks; ResNet: blocks per stage, e.g. [3, 4, 6, 3]
    heads: int = 12
    patch_size: int = 32  # ViT with the patch stem; the conv stem reaches the same grid
    stem: str = "patch"  # ViT: "patch" (one strided conv) or "conv" (strided 3x3 convs)
    stem_channels: list[int] = field(default_factory=list)  # conv stem widths; each conv halves the size
    mlp_ratio: float = 4.0
    roi_layers: int = 1  # ViT: how many of the last blocks the ROI tokens pass through
    act: str = "gelu"  # ViT MLP activation: "gelu", or "quick_gelu" (x * sigmoid(1.702 x), OpenAI's CLIP)


@dataclass
class TextConfig:
    """Causal text Transformer, pooled at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    act: str = "gelu"  # MLP activation: "gelu" or "quick_gelu"
    end_id: int = 2  # the end-of-text token id: the tower pools there (first occurrence), whatever the padding


# The detector regions every SoftCLIP model and data source shares: up to MAX_ROIS regions per image, each
# ROI_DIM = 2048 appearance features + 4 box coordinates (as VinVL gives them).
MAX_ROIS = 10
ROI_DIM = 2052


@dataclass
class ModelConfig:
    """A whole SoftCLIP dual encoder; written as ``config.json`` into every checkpoint."""

    name: str = "custom"
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    roi_dim: int = ROI_DIM
    max_rois: int = MAX_ROIS
    init_logit_scale: float = 2.659260036932778  # log(1 / 0.07)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        vision = VisionConfig(**data.pop("vision", {}))
        text = TextConfig(**data.pop("text", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(vision=vision, text=text, **data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def list_presets() -> list[str]:
    """Names of the architectures shipped in ``softclip/model_configs``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_config(name_or_path: str | Path | dict | ModelConfig) -> ModelConfig:
    """A preset name (``"tiny-vit"``), a JSON file path, a dict or a config."""
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    if isinstance(name_or_path, dict):
        return ModelConfig.from_dict(name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return ModelConfig.from_dict(json.loads(path.read_text()))
    preset = PRESET_DIR / f"{name_or_path}.json"
    if not preset.is_file():
        raise ValueError(f"unknown model {str(name_or_path)!r}; presets: {', '.join(list_presets())}")
    return ModelConfig.from_dict(json.loads(preset.read_text()))
