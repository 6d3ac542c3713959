"""Pretrained CLIP weights (transformers, open_clip, OpenAI) converted into softclip models.

Each source is read in three parts: its architecture (from its config, or from the weights' shapes as
OpenAI's own loader does), its weights renamed onto softclip's (OpenAI's names are the common ground:
transformers' are renamed to them first), and its tokenizer and image preprocessing, set so that the
converted model sees the same ids and pixels as the source library. The ROI path has no counterpart in
CLIP and keeps its fresh initialisation; everything else must be matched by a source tensor of the same
shape, or the conversion fails naming the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from softclip.config import ModelConfig, TextConfig, VisionConfig
from softclip.transform import CLIP_MEAN, CLIP_STD, PreprocessConfig

# Tensors a source may hold that are not weights: position ids, the causal mask, OpenAI's size scalars.
IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|attn_mask|input_resolution|context_length|vocab_size)$")
NEW_IN_SOFTCLIP = re.compile(r"^visual\.roi_projection\.")  # the ROI path: no CLIP tensor to copy
HF_INTERPOLATIONS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL resample codes


class ConversionError(ValueError):
    """Weights or a config that do not fit a softclip model, with what does not fit."""


# ---- architecture ----------------------------------------------------------------------------------------------


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct values of the first group of ``pattern`` over the keys (e.g. block indices)."""
    return len({m.group(1) for key in state if (m := re.match(pattern, key))})


def config_from_openai_state(state: dict[str, torch.Tensor], quick_gelu: bool = True) -> ModelConfig:
    """The architecture of an OpenAI-named state dict, read from its shapes (ViT or ModifiedResNet)."""
    try:
        width = state["ln_final.weight"].shape[0]
        text = TextConfig(
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
            width=width,
            heads=width // 64,
            layers=_count(state, r"transformer\.resblocks\.(\d+)\."),
        )
        embed_dim = state["text_projection"].shape[-1]
        vision = _vit_from_state(state) if "visual.proj" in state else _resnet_from_state(state)
    except KeyError as error:
        raise ConversionError(f"not a CLIP state dict: no tensor {error.args[0]!r}") from None
    for tower, tower_width in (("text", width), ("image", vision.width if vision.kind == "vit" else 64)):
        if tower_width % 64:
            raise ConversionError(
                f"unsupported architecture: {tower} width {tower_width} is not a multiple of OpenAI's head width 64"
            )
    act = "quick_gelu" if quick_gelu else "gelu"
    vision.act, text.act = act, act
    text.end_id = text.vocab_size - 1  # CLIP's vocabulary ends with <|endoftext|>
    return ModelConfig(name="clip", embed_dim=embed_dim, vision=vision, text=text)


def _vit_from_state(state: dict[str, torch.Tensor]) -> VisionConfig:
    width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    layers = _count(state, r"visual\.transformer\.resblocks\.(\d+)\.")
    return VisionConfig(
        kind="vit", image_size=patch * grid, width=width, layers=layers, heads=width // 64, patch_size=patch
    )


def _resnet_from_state(state: dict[str, torch.Tensor]) -> VisionConfig:
    layers = [_count(state, rf"visual\.layer{stage}\.(\d+)\.") for stage in (1, 2, 3, 4)]
    width = state["visual.layer1.0.conv1.weight"].shape[0]
    grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    return VisionConfig(kind="resnet", image_size=grid * 32, width=width, layers=layers, heads=width * 32 // 64)


_UNSUPPORTED_OPEN_CLIP = {
    "vision_cfg": {
        "timm_model_name": None,
        "ls_init_value": None,
        "attentional_pool": False,
        "pool_type": "tok",
        "final_ln_after_pool": False,
        "no_ln_pre": False,
        "pos_embed_type": "learnable",
        "output_tokens": False,
    },
    "text_cfg": {
        "hf_model_name": None,
        "ls_init_value": None,
        "pool_type": "argmax",
        "embed_cls": False,
        "no_causal_mask": False,
        "proj_bias": False,
        "final_ln_after_pool": False,
        "output_tokens": False,
    },
}


def _check_open_clip_features(model_cfg: dict[str, Any]) -> None:
    """Refuse, by name, open_clip options that softclip's towers do not have."""
    for tower, defaults in _UNSUPPORTED_OPEN_CLIP.items():
        for option, default in defaults.items():
            value = model_cfg.get(tower, {}).get(option, default)
            if value not in (default, None) or (default is None and value is not None):
                raise ConversionError(
                    f"unsupported architecture: open_clip {tower}.{option}={value!r} (softclip converts CLIP's "
                    f"standard ViT and ModifiedResNet towers with a causal text Transformer pooled at end-of-text)"
                )
    if "init_logit_bias" in model_cfg:
        raise ConversionError("unsupported architecture: a sigmoid-loss model (init_logit_bias), not CLIP")


def config_from_open_clip(model_cfg: dict[str, Any]) -> ModelConfig:
    """A softclip config from open_clip's ``model_cfg`` (defaults as open_clip's dataclasses have them)."""
    _check_open_clip_features(model_cfg)
    vcfg, tcfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    head_width, width = vcfg.get("head_width", 64), vcfg.get("width", 768)
    layers = vcfg.get("layers", 12)
    if isinstance(layers, (list, tuple)):
        vision = VisionConfig(kind="resnet", width=width, layers=list(layers), heads=width * 32 // head_width)
    else:
        vision = VisionConfig(
            kind="vit", width=width, layers=layers, heads=width // head_width, patch_size=vcfg.get("patch_size", 16)
        )
    vision.image_size = _single_size(vcfg.get("image_size", 224))
    vision.mlp_ratio, vision.act = vcfg.get("mlp_ratio", 4.0), act
    text = TextConfig(
        context_length=tcfg.get("context_length", 77),
        vocab_size=tcfg.get("vocab_size", 49408),
        width=tcfg.get("width", 512),
        heads=tcfg.get("heads", 8),
        layers=tcfg.get("layers", 12),
        mlp_ratio=tcfg.get("mlp_ratio", 4.0),
        act=act,
    )
    text.end_id = text.vocab_size - 1
    return ModelConfig(name="clip", embed_dim=model_cfg.get("embed_dim", 512), vision=vision, text=text)


def _single_size(size: int | list[int]) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConversionError(f"unsupported architecture: non-square image size {size}")
        return int(size[0])
    return int(size)


def config_from_transformers(config: dict[str, Any]) -> ModelConfig:
    """A softclip config from a transformers ``CLIPConfig`` (``config.json`` with model_type clip)."""
    if config.get("model_type") != "clip":
        raise ConversionError(
            f"unsupported architecture: transformers model_type {config.get('model_type')!r}, not 'clip'"
        )
    vcfg, tcfg = config.get("vision_config", {}), config.get("text_config", {})
    for tower, cfg in (("vision_config", vcfg), ("text_config", tcfg)):
        if cfg.get("hidden_act", "quick_gelu") not in ("gelu", "quick_gelu"):
            raise ConversionError(f"unsupported architecture: {tower}.hidden_act={cfg['hidden_act']!r}")
        if abs(cfg.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
            raise ConversionError(f"unsupported architecture: {tower}.layer_norm_eps={cfg['layer_norm_eps']}")
    vwidth, twidth = vcfg.get("hidden_size", 768), tcfg.get("hidden_size", 512)
    vision = VisionConfig(
        kind="vit",
        image_size=vcfg.get("image_size", 224),
        width=vwidth,
        layers=vcfg.get("num_hidden_layers", 12),
        heads=vcfg.get("num_attention_heads", 12),
        patch_size=vcfg.get("patch_size", 32),
        mlp_ratio=vcfg.get("intermediate_size", 3072) / vwidth,
        act=vcfg.get("hidden_act", "quick_gelu"),
    )
    vocab_size = tcfg.get("vocab_size", 49408)
    end_id = tcfg.get("eos_token_id", 2)
    text = TextConfig(
        context_length=tcfg.get("max_position_embeddings", 77),
        vocab_size=vocab_size,
        width=twidth,
        heads=tcfg.get("num_attention_heads", 8),
        layers=tcfg.get("num_hidden_layers", 12),
        mlp_ratio=tcfg.get("intermediate_size", 2048) / twidth,
        act=tcfg.get("hidden_act", "quick_gelu"),
        # eos_token_id 2 is the legacy value: transformers then pools at the largest id, <|endoftext|>
        end_id=vocab_size - 1 if end_id == 2 else end_id,
    )
    return ModelConfig(name="clip", embed_dim=config.get("projection_dim", 512), vision=vision, text=text)


# ---- weights ---------------------------------------------------------------------------------------------------


def transformers_to_openai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPModel`` state dict renamed to OpenAI's names (q, k, v joined; projections transposed)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if IGNORED_KEYS.search(key) or re.search(r"\.self_attn\.[kv]_proj\.", key):
            continue
        if m := re.match(r"(.*)\.self_attn\.q_proj\.(weight|bias)$", key):
            parts = [state[f"{m.group(1)}.self_attn.{name}_proj.{m.group(2)}"] for name in "qkv"]
            renamed[_rename_hf(f"{m.group(1)}.attn.in_proj_{m.group(2)}")] = torch.cat(parts)
        elif key in ("visual_projection.weight", "text_projection.weight"):
            renamed[key.removesuffix(".weight").replace("visual_projection", "visual.proj")] = value.t()
        else:
            renamed[_rename_hf(key)] = value
    return renamed


_HF_NAMES = [
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]


def _rename_hf(key: str) -> str:
    for pattern, replacement in _HF_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


_SOFTCLIP_NAMES = [
    (r"^visual\.conv1\.", "visual.stem."),  # ViT; the ResNet stem is renamed before this
    (r"\.resblocks\.", ".blocks."),
    (r"\.attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
    (r"\.attn\.out_proj\.", ".attn.out."),
    (r"\.mlp\.c_fc\.", ".mlp.fc."),
    (r"\.mlp\.c_proj\.", ".mlp.proj."),
    (r"^(token_embedding|positional_embedding|transformer|ln_final)", r"text.\1"),
    (r"^text_projection$", "text.projection"),
]
_RESNET_NAMES = [
    *[
        (rf"^visual\.{name}\.", f"visual.stem.{index}.")
        for name, index in (("conv1", 0), ("bn1", 1), ("conv2", 3), ("bn2", 4), ("conv3", 6), ("bn3", 7))
    ],
    (r"^visual\.layer([1-4])\.", lambda m: f"visual.stages.{int(m.group(1)) - 1}."),
    # OpenAI's downsample: "-1" the average pool (no weights), "0" the conv, "1" the BatchNorm; softclip's: 0, 1, 2
    (r"\.downsample\.([01])\.", lambda m: f".downsample.{int(m.group(1)) + 1}."),
]


def openai_to_softclip(state: dict[str, torch.Tensor], resnet: bool) -> dict[str, torch.Tensor]:
    """An OpenAI / open_clip-named state dict renamed to softclip's parameter names."""
    rules = (_RESNET_NAMES if resnet else []) + _SOFTCLIP_NAMES
    renamed = {}
    for key, value in state.items():
        if IGNORED_KEYS.search(key):
            continue
        # "module." from a DDP-wrapped save; "text." from open_clip's CustomTextCLIP
        key = key.removeprefix("module.").removeprefix("text.")
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key, count=1)
        renamed[key] = value
    return renamed


def load_converted(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``: every tensor must fit, every model tensor but the ROI path be covered."""
    own = model.state_dict()
    unknown = sorted(key for key in state if key not in own)
    if unknown:
        raise ConversionError(f"{source}: unknown key {unknown[0]!r} (and {len(unknown) - 1} more) after conversion")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ConversionError(
                f"{source}: unexpected shape for {key!r}: {tuple(value.shape)}, the model needs {tuple(own[key].shape)}"
            )
    missing = sorted(key for key in own if key not in state and not NEW_IN_SOFTCLIP.match(key))
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing:
        raise ConversionError(f"{source}: no weights for {missing[0]!r} (and {len(missing) - 1} more)")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))


# ---- preprocessing ---------------------------------------------------------------------------------------------


def preprocess_from_transformers(config: dict[str, Any], image_size: int) -> PreprocessConfig:
    """Preprocessing of a transformers ``preprocessor_config.json``: short side resized, centre crop floored."""
    size = config.get("size", image_size)
    size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
    crop = config.get("crop_size", size)
    crop = crop.get("height", crop.get("width")) if isinstance(crop, dict) else crop
    if config.get("do_center_crop", True) and crop != size:
        raise ConversionError(f"unsupported preprocessing: resize to {size} then crop {crop} (softclip needs one size)")
    resample = config.get("resample", 3)
    if resample not in HF_INTERPOLATIONS:
        raise ConversionError(f"unsupported preprocessing: resample={resample}")
    return PreprocessConfig(
        size=int(crop),
        mean=tuple(config.get("image_mean", CLIP_MEAN)),
        std=tuple(config.get("image_std", CLIP_STD)),
        interpolation=HF_INTERPOLATIONS[resample],
        crop_offset="floor",
    )


def preprocess_from_open_clip(config: dict[str, Any], image_size: int) -> PreprocessConfig:
    """Preprocessing of open_clip's ``preprocess_cfg`` (torchvision's Resize and CenterCrop)."""
    resize_mode = config.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        raise ConversionError(f"unsupported preprocessing: open_clip resize_mode={resize_mode!r}")
    interpolation = config.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise ConversionError(f"unsupported preprocessing: open_clip interpolation={interpolation!r}")
    return PreprocessConfig(
        size=_single_size(config.get("size", image_size)),
        mean=tuple(config.get("mean", CLIP_MEAN)),
        std=tuple(config.get("std", CLIP_STD)),
        resize_mode=resize_mode,
        interpolation=interpolation,
        crop_offset="round",
    )


# ---- reading files ---------------------------------------------------------------------------------------------


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, a pickled ``.bin``/``.pt`` (tensors only) or a TorchScript archive."""
    from softclip.torchscript import is_torchscript, read_torchscript_tensors

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if is_torchscript(path):
        return read_torchscript_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle raises many kinds on a file that is not a weights pickle
        raise ConversionError(f"{path} is not a state dict torch.load(weights_only=True) can read: {error}") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors")
    return state


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} is not readable JSON: {error}") from error


def first_file(folder: Path, names: tuple[str, ...]) -> Path:
    """The first of ``names`` present in ``folder``, or an error listing them."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ConversionError(f"{folder} holds none of {', '.join(names)}")
