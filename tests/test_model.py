"""The model: every preset builds (paper presets at CLIP's size), tiny ones train, the ROI path masks padding."""

from __future__ import annotations

import pytest
import torch

from softclip.config import list_presets, load_config
from softclip.model import SoftCLIP, create_model

# Parameter counts of OpenAI's CLIP models, which the paper presets reproduce (ROI projection excluded).
CLIP_PARAMETERS = {"RN50": 102_007_137, "ViT-B-32": 151_277_313, "ViT-B-16": 149_620_737}
TINY = ["tiny-vit", "tiny-rn"]


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", params=TINY)
def model(request: pytest.FixtureRequest) -> SoftCLIP:
    torch.manual_seed(0)
    return create_model(request.param).eval()


def random_images(model: SoftCLIP, batch: int = 2) -> torch.Tensor:
    size = model.config.vision.image_size
    return torch.randn(batch, 3, size, size)


def random_rois(model: SoftCLIP, batch: int = 2, regions: int = 3) -> torch.Tensor:
    return torch.randn(batch, regions, model.config.roi_dim)


def token_ids(*rows: list[int], length: int = 8) -> torch.Tensor:
    """Rows of ids, each padded with 0 to ``length``."""
    return torch.tensor([row + [0] * (length - len(row)) for row in rows])


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_with_expected_size(name: str) -> None:
    with torch.device("meta"):  # no memory, no init cost: paper presets build in milliseconds
        built = create_model(name)
    config = load_config(name)
    roi_parameters = parameter_count(built.visual.roi_projection)
    assert roi_parameters == (config.roi_dim + 1) * built.visual.roi_projection.out_features
    if name in CLIP_PARAMETERS:
        assert parameter_count(built) - roi_parameters == pytest.approx(CLIP_PARAMETERS[name], rel=0.01)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_runs_shapes_through_on_meta(name: str) -> None:
    with torch.device("meta"):  # shape-only forward: checks wiring of the paper presets without computing
        built = create_model(name)
        size, dim = built.config.vision.image_size, built.config.embed_dim
        images, ids = torch.empty(2, 3, size, size), torch.ones(2, built.config.text.context_length, dtype=torch.long)
        rois, mask = (
            torch.empty(2, built.config.max_rois, built.config.roi_dim),
            torch.ones(2, built.config.max_rois, dtype=torch.bool),
        )
        out = built(images, ids, rois=rois, roi_mask=mask, tags=ids[:, :5])
        embedding, feature_maps = built.image_feature_maps(images)
    assert all(out[key].shape == (2, dim) for key in out if key.endswith("features"))
    assert embedding.shape == (2, dim) and all(feature_map.ndim == 4 for feature_map in feature_maps)


def test_logit_scale_starts_at_config_value() -> None:
    built = create_model("tiny-vit")
    assert built.logit_scale.shape == ()
    assert built.logit_scale.item() == pytest.approx(built.config.init_logit_scale)


def test_create_model_accepts_name_dict_and_config() -> None:
    config = load_config("tiny-rn")
    for source in ("tiny-rn", config.to_dict(), config):
        assert create_model(source).config.to_dict() == config.to_dict()


@pytest.mark.parametrize("name", TINY)
def test_forward_and_backward_with_rois_and_tags(name: str) -> None:
    torch.manual_seed(0)
    built = create_model(name).train()
    rois, mask = random_rois(built), torch.tensor([[True, True, False], [True, False, False]])
    texts, tags = token_ids([1, 5, 6, 2], [1, 7, 2]), token_ids([1, 9, 10, 11, 2], [1, 3, 2])
    out = built(random_images(built), texts, rois=rois, roi_mask=mask, tags=tags)
    assert set(out) == {"image_features", "text_features", "roi_features", "tag_features", "logit_scale"}
    for key in ("image_features", "text_features", "roi_features", "tag_features"):
        assert out[key].shape == (2, built.config.embed_dim)
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(2))
    assert out["logit_scale"] is built.logit_scale
    loss = sum((out[key] @ out["text_features"].T).sum() for key in out if key.endswith("features"))
    (loss * out["logit_scale"].exp()).backward()
    grads = [p.grad for p in built.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_forward_without_rois_or_tags_omits_them(model: SoftCLIP) -> None:
    out = model(random_images(model), token_ids([1, 5, 2], [1, 2]))
    assert set(out) == {"image_features", "text_features", "logit_scale"}


def test_roi_gradients_reach_projection_and_shared_layers_only(model: SoftCLIP) -> None:
    model.zero_grad()
    model.encode_rois(random_rois(model)).sum().backward()
    visual = model.visual
    assert visual.roi_projection.weight.grad.abs().sum() > 0
    if model.config.vision.kind == "vit":
        assert visual.transformer.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0  # the shared last block
        assert visual.transformer.blocks[0].attn.qkv.weight.grad is None  # earlier blocks are not on the path
        assert visual.stem[0].weight.grad is None
    else:
        assert visual.attnpool.q_proj.weight.grad.abs().sum() > 0  # the shared attention pooling
        assert visual.stages[-1][0].conv1.weight.grad is None
    model.zero_grad()


def test_padding_rois_do_not_change_the_embedding(model: SoftCLIP) -> None:
    torch.manual_seed(1)
    rois = random_rois(model, batch=2, regions=3)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    garbage = 100 * torch.randn(2, 1, model.config.roi_dim)
    padded_rois = torch.cat([rois, garbage], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 1, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        reference = model.encode_rois(rois, mask)
        padded = model.encode_rois(padded_rois, padded_mask)
        changed_masked_row = model.encode_rois(torch.where(mask[..., None], rois, -rois), mask)
        garbage_unmasked = model.encode_rois(padded_rois, torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(changed_masked_row, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(garbage_unmasked, reference, atol=1e-3)  # the mask is what hides the garbage


def test_image_without_real_regions_is_finite(model: SoftCLIP) -> None:
    rois = random_rois(model, batch=2, regions=3)
    mask = torch.tensor([[False, False, False], [True, True, False]])
    with torch.no_grad():
        embeddings = model.encode_rois(rois, mask)
        alone = model.encode_rois(rois[1:], mask[1:])
    assert torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(embeddings[1:], alone, atol=1e-5, rtol=1e-5)  # rows do not mix


def test_roi_mask_defaults_to_all_real(model: SoftCLIP) -> None:
    rois = random_rois(model)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_rois(rois), model.encode_rois(rois, torch.ones(2, 3, dtype=torch.bool)))


def test_text_pools_at_the_end_of_text_token(model: SoftCLIP) -> None:
    ids = token_ids([1, 5, 9, 2], [1, 7, 2], length=6)
    with torch.no_grad():
        padded = model.encode_text(ids)
        longer_padding = model.encode_text(token_ids([1, 5, 9, 2], [1, 7, 2], length=10))
        unpadded = model.encode_text(torch.tensor([[1, 5, 9, 2]]))
        other_word = model.encode_text(token_ids([1, 5, 8, 2], [1, 7, 2], length=6))
    # Causal attention and pooling at the end token: what comes after the end cannot matter.
    torch.testing.assert_close(longer_padding, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unpadded, padded[:1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other_word[0], padded[0], atol=1e-4)
    torch.testing.assert_close(other_word[1], padded[1], atol=1e-5, rtol=1e-5)


def test_image_feature_maps_feed_the_image_embedding(model: SoftCLIP) -> None:
    images = random_images(model)
    embedding, feature_maps = model.image_feature_maps(images)
    vision = model.config.vision
    if vision.kind == "vit":
        grid = vision.image_size // vision.patch_size
        assert [tuple(m.shape) for m in feature_maps] == [(2, vision.width, grid, grid)] * vision.layers
    else:
        side = vision.image_size // 32
        assert [tuple(m.shape) for m in feature_maps] == [(2, vision.width * 32, side, side)]
    with torch.no_grad():
        torch.testing.assert_close(embedding, model.encode_image(images), atol=1e-5, rtol=1e-5)
    gradients = torch.autograd.grad(embedding[:, 0].sum(), feature_maps)
    assert all(gradient.abs().sum() > 0 for gradient in gradients)  # every map is in the embedding's graph


def test_bad_inputs_are_refused_with_the_expected_shape(model: SoftCLIP) -> None:
    size, roi_dim = model.config.vision.image_size, model.config.roi_dim
    with pytest.raises(ValueError, match=f"images must be \\[B, 3, {size}, {size}\\]"):
        model.encode_image(torch.randn(1, 3, size + 8, size))
    with pytest.raises(ValueError, match="input_ids must be an integer"):
        model.encode_text(torch.ones(1, 4))
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text(torch.ones(1, model.config.text.context_length + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=f"rois must be \\[B, K, {roi_dim}\\]"):
        model.encode_rois(torch.randn(1, 2, roi_dim - 4))
    with pytest.raises(ValueError, match="roi_mask must be a bool"):
        model.encode_rois(torch.randn(1, 2, roi_dim), torch.ones(1, 2))
    with pytest.raises(ValueError, match="roi_mask must be a bool"):
        model.encode_rois(torch.randn(1, 2, roi_dim), torch.ones(1, 3, dtype=torch.bool))


@pytest.mark.parametrize(
    ("vision", "message"),
    [
        ({"kind": "mlp"}, "vision.kind"),
        ({"stem": "conv", "patch_size": 8, "stem_channels": [16, 32]}, "stem_channels"),
        ({"roi_layers": 5, "layers": 4}, "roi_layers"),
        ({"image_size": 60, "patch_size": 8}, "image_size"),
        ({"kind": "resnet", "layers": [1, 1, 1]}, "4 ResNet stages"),
        ({"kind": "resnet", "layers": [1, 1, 1, 1], "image_size": 48}, "divisible by 32"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(vision: dict, message: str) -> None:
    config = load_config("tiny-vit").to_dict()
    config["vision"].update(vision)
    with pytest.raises(ValueError, match=message):
        create_model(config)
