"""The SoftCLIP dual encoder: image towers, text tower, ROI path and ``create_model``.

What this file holds, top to bottom:

- ``Transformer``: pre-LN residual attention blocks shared by the ViT and the text tower.
- ``VisionTransformer``: a ViT with a patch stem or a small convolutional stem, plus the ROI path
  that feeds region features through the ViT's last ``roi_layers`` blocks.
- ``ModifiedResNet``: CLIP's ResNet (3-conv stem, anti-aliased Bottlenecks, attention pooling),
  plus the ROI path that pools region features with the same attention pooling layer.
- ``TextTransformer``: a causal Transformer pooled at the end-of-text token.
- ``SoftCLIP``: both towers and the learnable temperature; every ``encode_*`` returns
  L2-normalised embeddings, ``forward`` returns the dict of features the objective consumes.
- ``create_model``: builds a ``SoftCLIP`` from a preset name, a JSON path, a dict or a config.

The ROI path is "the rear part of the image encoder": detector region features (appearance and box
coordinates) enter the image tower late, so that ROI embeddings live in the image embedding space.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softclip.config import ModelConfig, TextConfig, VisionConfig, load_config
from softclip.save import push_to_hub, save_pretrained
from softclip.tokenizer import Tokenizer
from softclip.transform import PreprocessConfig


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, C) -> (B, heads, T, C // heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, T, hs) -> (B, T, heads * hs)."""
    return x.transpose(1, 2).flatten(2)


def with_query_visible(mask: Tensor) -> Tensor:
    """Key mask for [query token, *regions]: (B, K) -> (B, 1, 1, 1 + K), True = may be attended to.

    The leading token (class token or pooling query) is always visible, so a row with no real
    region still attends to something and the softmax never sees only -inf.
    """
    visible = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
    return visible[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``scaled_dot_product_attention`` (exports to standard ONNX ops)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))  # each (B, nh, T, hs)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        return self.out(merge_heads(out))


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation OpenAI's CLIP was trained with (so its weights need it)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class ResidualBlock(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str = "gelu") -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(fc=nn.Linear(width, hidden), gelu=ACTIVATIONS[act](), proj=nn.Linear(hidden, width))
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ``ResidualBlock``; ``start``/``stop`` run a slice of it (the ROI path and Grad-CAM need that)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: str = "gelu") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(width, heads, mlp_ratio, act) for _ in range(layers))
        self.init_weights(width, layers)

    def init_weights(self, width: int, layers: int) -> None:
        """CLIP's scheme: residual-branch outputs shrink with depth so the stream's variance stays bounded."""
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.normal_(block.attn.out.weight, std=proj_std)
            nn.init.normal_(block.mlp.fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.zeros_(block.attn.out.bias)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False, start: int = 0, stop: int | None = None
    ) -> Tensor:
        for block in self.blocks[start:stop]:
            x = block(x, attn_mask, causal)
        return x


def conv_stem(config: VisionConfig) -> nn.Sequential:
    """Strided 3x3 convs (each halves the size) + BatchNorm/GELU, then a 1x1 conv to the token width."""
    layers: list[nn.Module] = []
    channels = 3
    for out_channels in config.stem_channels:
        layers += [
            nn.Conv2d(channels, out_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        ]
        channels = out_channels
    layers.append(nn.Conv2d(channels, config.width, 1))
    return nn.Sequential(*layers)


def patch_stem(config: VisionConfig) -> nn.Module:
    """One strided conv that cuts the image into ``patch_size`` patches, or the conv stem."""
    if config.stem == "conv":
        return conv_stem(config)
    return nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size, bias=False)


class VisionTransformer(nn.Module):
    """ViT image tower with a class token; ROI tokens reuse its last ``roi_layers`` blocks."""

    def __init__(self, config: VisionConfig, embed_dim: int, roi_dim: int) -> None:
        super().__init__()
        width, scale = config.width, config.width**-0.5
        self.grid = config.image_size // config.patch_size
        self.roi_layers = config.roi_layers
        self.stem = patch_stem(config)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, config.act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))
        self.roi_projection = nn.Linear(roi_dim, width)

    def class_token(self, like: Tensor) -> Tensor:
        """The class token for every row of ``like`` (B, T, width): (B, 1, width)."""
        return self.class_embedding.to(like.dtype).expand(like.shape[0], 1, -1)

    def image_tokens(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + g*g, width): class token and patches, positions added, after ln_pre."""
        patches = self.stem(images).flatten(2).transpose(1, 2)  # (B, g*g, width)
        tokens = torch.cat([self.class_token(patches), patches], dim=1) + self.positional_embedding
        return self.ln_pre(tokens)

    def head(self, tokens: Tensor) -> Tensor:
        """ln_post on the class token, then the projection: (B, T, width) -> (B, embed_dim)."""
        return self.ln_post(tokens[:, 0]) @ self.proj

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.transformer(self.image_tokens(images)))

    def feature_maps(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Embedding (B, embed_dim) and, for every block, its ln_1 output for the patch tokens (B, width, g, g).

        Grad-CAM needs the maps after that LayerNorm: before it, each token's gradient is orthogonal to the
        token itself, which leaves sum_c w_c A_c without a reliable sign. Each block's normalised tokens are
        rebuilt from its returned map, so that gradients of the embedding reach every map.
        """
        tokens = self.image_tokens(images)
        maps = []
        for block in self.transformer.blocks:
            normed = block.ln_1(tokens)
            feature_map = normed[:, 1:].transpose(1, 2).unflatten(2, (self.grid, self.grid))
            normed = torch.cat([normed[:, :1], feature_map.flatten(2).transpose(1, 2)], dim=1)
            tokens = tokens + block.attn(normed)
            tokens = tokens + block.mlp(block.ln_2(tokens))
            maps.append(feature_map)
        return self.head(tokens), maps

    def encode_rois(self, rois: Tensor, roi_mask: Tensor) -> Tensor:
        """(B, K, roi_dim) regions -> (B, embed_dim). No positional embedding: the box coordinates carry position."""
        regions = self.roi_projection(rois)  # (B, K, width)
        tokens = self.ln_pre(torch.cat([self.class_token(regions), regions], dim=1))
        tokens = self.transformer(tokens, attn_mask=with_query_visible(roi_mask), start=-self.roi_layers)
        return self.head(tokens)


class Bottleneck(nn.Module):
    """ResNet bottleneck whose stride comes from an average pool before the last 1x1 conv (anti-aliased)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn3.weight)  # each block starts as the identity
        self.downsample: nn.Module = nn.Identity()
        if stride > 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride), nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.pool(out)))
        return F.relu(out + self.downsample(x))


class AttentionPool(nn.Module):
    """One attention step whose query is the first token (the mean of the others), projected to ``out_dim``."""

    def __init__(self, spatial: int, width: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(spatial**2 + 1, width) / width**0.5)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, out_dim)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(layer.weight, std=width**-0.5)
            nn.init.zeros_(layer.bias)

    def attend(self, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """(B, T, C) tokens whose first one is the query -> (B, out_dim)."""
        q = split_heads(self.q_proj(tokens[:, :1]), self.heads)  # (B, nh, 1, hs)
        k = split_heads(self.k_proj(tokens), self.heads)  # (B, nh, T, hs)
        v = split_heads(self.v_proj(tokens), self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, nh, 1, hs)
        return self.c_proj(merge_heads(out)[:, 0])

    def forward(self, feature_map: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, out_dim)."""
        tokens = feature_map.flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.positional_embedding
        return self.attend(tokens)

    def pool_regions(self, regions: Tensor, roi_mask: Tensor) -> Tensor:
        """(B, K, C) region tokens -> (B, out_dim); padding regions are neither averaged nor attended to."""
        real = roi_mask.unsqueeze(-1).to(regions.dtype)  # (B, K, 1)
        query = (regions * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True).clamp(min=1)
        # The query gets the mean-token position, as in the image path, so q_proj sees the kind of input it
        # is trained on; region tokens get none, because the spatial grid does not apply to them and their
        # box coordinates already say where they are.
        query = query + self.positional_embedding[0]
        return self.attend(torch.cat([query, regions], dim=1), with_query_visible(roi_mask))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem with an average pool, 4 Bottleneck stages, attention pooling."""

    def __init__(self, config: VisionConfig, embed_dim: int, roi_dim: int) -> None:
        super().__init__()
        width = config.width
        self.stem = nn.Sequential(
            *self.stem_conv(3, width // 2, stride=2),
            *self.stem_conv(width // 2, width // 2),
            *self.stem_conv(width // 2, width),
            nn.AvgPool2d(2),
        )
        stages, in_channels = [], width
        for index, blocks in enumerate(config.layers):
            planes = width * 2**index  # stage outputs: width * [1, 2, 4, 8] * 4 channels
            stages.append(self.stage(in_channels, planes, blocks, stride=1 if index == 0 else 2))
            in_channels = planes * Bottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.attnpool = AttentionPool(config.image_size // 32, in_channels, config.heads, embed_dim)
        self.roi_projection = nn.Linear(roi_dim, in_channels)

    @staticmethod
    def stage(in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """``blocks`` Bottlenecks; only the first one changes the channels and strides."""
        first = Bottleneck(in_channels, planes, stride)
        return nn.Sequential(first, *(Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)))

    @staticmethod
    def stem_conv(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
        """3x3 conv, BatchNorm, ReLU."""
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        return [conv, nn.BatchNorm2d(out_channels), nn.ReLU()]

    def forward(self, images: Tensor) -> Tensor:
        return self.attnpool(self.stages(self.stem(images)))

    def feature_maps(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Embedding (B, embed_dim) and [the last stage's output (B, C, h, w)] it is pooled from."""
        feature_map = self.stages(self.stem(images))
        return self.attnpool(feature_map), [feature_map]

    def encode_rois(self, rois: Tensor, roi_mask: Tensor) -> Tensor:
        """(B, K, roi_dim) regions -> (B, embed_dim), pooled by the image path's attention pooling."""
        return self.attnpool.pool_regions(self.roi_projection(rois), roi_mask)


class TextTransformer(nn.Module):
    """Causal Transformer over token ids, pooled at the (first) end-of-text token."""

    def __init__(self, config: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.end_id = config.end_id
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads, config.mlp_ratio, config.act)
        self.ln_final = nn.LayerNorm(config.width)
        self.projection = nn.Parameter(config.width**-0.5 * torch.randn(config.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, L) ids, padded after the end token (with any id) -> (B, embed_dim)."""
        tokens = self.token_embedding(input_ids) + self.positional_embedding[: input_ids.shape[1]]
        tokens = self.ln_final(self.transformer(tokens, causal=True))  # (B, L, width)
        end = (input_ids == self.end_id).int().argmax(dim=1)  # first end-of-text position of each row (0 if none)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), end] @ self.projection


def check_vit(config: VisionConfig) -> None:
    """Raise ``ValueError`` if a ViT cannot be built from ``config``."""
    if not isinstance(config.layers, int) or config.layers < 1:
        raise ValueError(f"vision.layers must be a positive int for a ViT, got {config.layers!r}")
    if config.image_size % config.patch_size:
        raise ValueError(f"vision.image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
    if config.stem not in ("patch", "conv"):
        raise ValueError(f"vision.stem must be 'patch' or 'conv', got {config.stem!r}")
    if config.stem == "conv" and 2 ** len(config.stem_channels) != config.patch_size:
        raise ValueError(
            f"the conv stem halves the image once per entry of vision.stem_channels ({len(config.stem_channels)}), "
            f"which must reach patch_size {config.patch_size}: use {config.patch_size.bit_length() - 1} entries"
        )
    if not 1 <= config.roi_layers <= config.layers:
        raise ValueError(f"vision.roi_layers must be in 1..{config.layers}, got {config.roi_layers}")


def check_resnet(config: VisionConfig) -> None:
    """Raise ``ValueError`` if a ResNet cannot be built from ``config``."""
    if not isinstance(config.layers, list) or len(config.layers) != 4:
        raise ValueError(f"vision.layers must list the blocks of 4 ResNet stages, got {config.layers!r}")
    if config.image_size % 32:
        raise ValueError(f"a ResNet needs vision.image_size divisible by 32, got {config.image_size}")
    if (config.width * 32) % config.heads:
        raise ValueError(f"attention pooling width {config.width * 32} is not divisible by vision.heads")


def check_config(config: ModelConfig) -> None:
    """Raise ``ValueError`` naming the first field that cannot build a model."""
    for tower, act in (("vision", config.vision.act), ("text", config.text.act)):
        if act not in ACTIVATIONS:
            raise ValueError(f"{tower}.act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    if config.vision.kind == "vit":
        check_vit(config.vision)
    elif config.vision.kind == "resnet":
        check_resnet(config.vision)
    else:
        raise ValueError(f"vision.kind must be 'vit' or 'resnet', got {config.vision.kind!r}")
    if config.vision.kind == "vit" and config.vision.width % config.vision.heads:
        raise ValueError(f"vision.width {config.vision.width} is not divisible by vision.heads {config.vision.heads}")
    if config.text.width % config.text.heads:
        raise ValueError(f"text.width {config.text.width} is not divisible by text.heads {config.text.heads}")


class SoftCLIP(nn.Module):
    """SoftCLIP dual encoder: ``visual`` (ViT or ResNet, with the ROI path), ``text`` and ``logit_scale``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        tower = VisionTransformer if config.vision.kind == "vit" else ModifiedResNet
        self.visual = tower(config.vision, config.embed_dim, config.roi_dim)
        self.text = TextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.full((), config.init_logit_scale))
        # Replaced by the trained ones when training or loading a checkpoint; these make a fresh model usable.
        self.tokenizer = Tokenizer.default()
        self.preprocess_config = PreprocessConfig(size=config.vision.image_size)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write this model, its tokenizer and preprocessing as a checkpoint folder."""
        return save_pretrained(self, folder)

    def push_to_hub(self, repo_id: str, **options) -> list[str]:
        """Upload this model's checkpoint folder to the Hugging Face Hub; returns the uploaded file names."""
        return push_to_hub(self, repo_id, **options)

    def check_images(self, images: Tensor) -> None:
        """The position embeddings fix the input size, so anything else is refused here, by name."""
        size = self.config.vision.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
            raise ValueError(f"images must be [B, 3, {size}, {size}], got {list(images.shape)}")

    def check_ids(self, input_ids: Tensor) -> None:
        """Integer [B, L] ids, no longer than the positional embedding."""
        if input_ids.ndim != 2 or input_ids.is_floating_point():
            raise ValueError(
                f"input_ids must be an integer [B, L] tensor, got {input_ids.dtype} {list(input_ids.shape)}"
            )
        if input_ids.shape[1] > self.config.text.context_length:
            raise ValueError(
                f"input_ids are {input_ids.shape[1]} long, context_length is {self.config.text.context_length}"
            )

    def check_rois(self, rois: Tensor, roi_mask: Tensor) -> None:
        """[B, K, roi_dim] features with a matching bool [B, K] mask."""
        if rois.ndim != 3 or rois.shape[2] != self.config.roi_dim:
            raise ValueError(f"rois must be [B, K, {self.config.roi_dim}], got {list(rois.shape)}")
        if roi_mask.dtype != torch.bool or tuple(roi_mask.shape) != tuple(rois.shape[:2]):
            raise ValueError(
                f"roi_mask must be a bool [B, K] = {list(rois.shape[:2])} tensor (True = real region), "
                f"got {roi_mask.dtype} {list(roi_mask.shape)}"
            )

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised pixels -> L2-normalised (B, embed_dim)."""
        self.check_images(images)
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """(B, L) token ids, 0-padded at the end -> L2-normalised (B, embed_dim)."""
        self.check_ids(input_ids)
        return F.normalize(self.text(input_ids), dim=-1)

    def encode_rois(self, rois: Tensor, roi_mask: Tensor | None = None) -> Tensor:
        """(B, K, roi_dim) region features, (B, K) bool mask (True = real; default all real) -> (B, embed_dim)."""
        if roi_mask is None:
            roi_mask = torch.ones(rois.shape[:2], dtype=torch.bool, device=rois.device)
        self.check_rois(rois, roi_mask)
        return F.normalize(self.visual.encode_rois(rois, roi_mask), dim=-1)

    def image_feature_maps(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """L2-normalised embedding (B, embed_dim) and the feature maps [(B, C, h, w)] it is computed from, for Grad-CAM.

        ResNet: [the last stage's output]. ViT: the patch tokens entering each block, first to last, each
        as (B, width, g, g).
        """
        self.check_images(images)
        embedding, feature_maps = self.visual.feature_maps(images)
        return F.normalize(embedding, dim=-1), feature_maps

    def forward(
        self,
        images: Tensor,
        texts: Tensor,
        rois: Tensor | None = None,
        roi_mask: Tensor | None = None,
        tags: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Features for the objective; ``roi_features`` and ``tag_features`` only when rois / tags are given."""
        features = {"image_features": self.encode_image(images), "text_features": self.encode_text(texts)}
        if rois is not None:
            features["roi_features"] = self.encode_rois(rois, roi_mask)
        if tags is not None:
            features["tag_features"] = self.encode_text(tags)
        features["logit_scale"] = self.logit_scale
        return features


def create_model(name_or_config: str | Path | dict | ModelConfig) -> SoftCLIP:
    """A freshly initialised model from a preset name, a JSON path, a dict or a ``ModelConfig``."""
    return SoftCLIP(load_config(name_or_config))
