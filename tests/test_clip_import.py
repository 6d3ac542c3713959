"""Pretrained CLIP loads exactly: softclip's features, token ids, logit scale and pixels equal the source library's.

Every checkpoint here is written by the real transformers or open_clip (small architectures, random weights
with noise on every tensor, so that a wrong mapping cannot hide behind zeros and ones).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from softclip import from_pretrained
from softclip.clip_tokenizer import openai_tokenizer, transformers_tokenizer
from softclip.convert import ConversionError
from softclip.transform import image_to_tensor
from tests import clip_references as refs

TEXTS = [
    "a photo of a cat",
    "A  Dog's   bone!!",
    "&amp;lt;b&amp;gt; html &quot;entities&quot;",
    "café naïve ÉCOLE",
    "“curly” quotes’s",
    "123 4567.89",
    "emoji 😀 ok",
    "<|endoftext|> inside",
    "x" * 300,
    "",
    "   ",
    "日本語のテキスト",
    "tab\tnew\nline",
    "don't won't they're I'll we've",
    "mixed-CASE_under_score",
    "word " * 100,
    "!<|endoftext|>",
]


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Strings of letters, digits, punctuation, accents, CJK and whitespace in random runs."""
    alphabet = "abcXYZ019 .,!?'\"-_&;<>|éüßİ中文😀\t\n"
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def images(seed: int = 0) -> list[Image.Image]:
    """Noise images of odd and even, landscape and portrait sizes (the crop offsets differ between libraries)."""
    rng = np.random.default_rng(seed)
    sizes = [(50, 77), (91, 40), (64, 64), (65, 100), (33, 32)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def assert_features_equal(ours: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(ours, F.normalize(reference, dim=-1), atol=1e-4, rtol=0)


def check_same_model(ours, pixels, ids, image_ref, text_ref, logit_scale: torch.Tensor) -> None:
    """Our token ids for ``TEXTS`` are ``ids``; our features of ``pixels`` and ``ids`` and our scale the source's."""
    assert torch.equal(ours.tokenizer(TEXTS, 77), ids)
    with torch.no_grad():
        assert_features_equal(ours.encode_image(pixels), image_ref)
        assert_features_equal(ours.encode_text(ids), text_ref)
    assert ours.logit_scale.item() == logit_scale.item()


def level_difference(ours: torch.Tensor, reference: torch.Tensor, std: tuple[float, ...]) -> float:
    """Largest pixel difference in 8-bit levels between two normalised batches."""
    scale = torch.tensor(std)[None, :, None, None] * 255
    return float(((ours - reference) * scale).abs().max())


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    return refs.write_clip_vocab(tmp_path_factory.mktemp("clip-vocab"))


# ---- tokenizers ------------------------------------------------------------------------------------------------


def test_openai_tokenizer_ids_equal_open_clip(vocab: Path) -> None:
    reference = refs.open_clip().get_tokenizer("ViT-B-32")
    ours = openai_tokenizer(vocab)
    texts = TEXTS + random_texts(200)
    assert torch.equal(ours(texts, 77), reference(texts))
    assert torch.equal(ours(texts, 16), reference(texts, context_length=16))  # truncation keeps the end token


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab+merges"])
def test_transformers_tokenizer_ids_equal_transformers(vocab: Path, tmp_path: Path, files: str) -> None:
    reference = refs.transformers().CLIPTokenizer.from_pretrained(vocab)
    folder = vocab
    if files == "tokenizer.json":
        reference.save_pretrained(tmp_path)
        folder = tmp_path
        assert not (tmp_path / "vocab.json").exists()
    ours = transformers_tokenizer(folder)
    texts = TEXTS + random_texts(200, seed=1)
    expected = reference(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert torch.equal(ours(texts, 77), expected["input_ids"])


# ---- transformers ----------------------------------------------------------------------------------------------


def transformers_folder(vocab: Path, folder: Path, safetensors: bool = True):
    """A tiny ``CLIPModel`` and its processor saved as transformers saves them."""
    library = refs.transformers()
    text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2)
    vision = dict(hidden_size=48, intermediate_size=96, num_attention_heads=3, num_hidden_layers=2, image_size=32)
    config = library.CLIPConfig(text_config=text, vision_config={**vision, "patch_size": 8}, projection_dim=24)
    torch.manual_seed(0)
    model = refs.perturb(library.CLIPModel(config))
    model.save_pretrained(folder, safe_serialization=safetensors)
    library.CLIPTokenizer.from_pretrained(vocab).save_pretrained(folder)
    crop = {"height": 32, "width": 32}
    processor = library.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop)
    processor.save_pretrained(folder)
    return model, folder


def transformers_features(model, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        image, text = model.get_image_features(pixel_values=pixels), model.get_text_features(input_ids=ids)
    return getattr(image, "pooler_output", image), getattr(text, "pooler_output", text)


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_transformers_model_features_equal(vocab: Path, tmp_path: Path, safetensors: bool) -> None:
    library = refs.transformers()
    reference, folder = transformers_folder(vocab, tmp_path / "clip", safetensors)
    model = from_pretrained(folder)
    processor = library.CLIPImageProcessor.from_pretrained(folder)
    pixels = processor(images=images(), return_tensors="pt")["pixel_values"]
    tokenizer = library.CLIPTokenizer.from_pretrained(folder)
    ids = tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    check_same_model(model, pixels, ids, *transformers_features(reference, pixels, ids), reference.logit_scale)


def photo_like(height: int, width: int) -> Image.Image:
    """Smooth gradients and stripes, as photos have them (noise hides resampling differences less kindly)."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [np.sin(x / 17.0) * 100 + 128, np.cos(y / 23.0) * 90 + 128, (x + y) % 255]
    return Image.fromarray(np.stack(channels, -1).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("processor", ["CLIPImageProcessorPil", "CLIPImageProcessor"])
def test_transformers_pixels_equal(vocab: Path, tmp_path: Path, processor: str) -> None:
    """Both of transformers' CLIP processors (Pillow, torchvision) give our pixels within one 8-bit level."""
    library = refs.transformers()
    _, folder = transformers_folder(vocab, tmp_path / "clip")
    model = from_pretrained(folder)
    pictures = [*images(), photo_like(480, 640), photo_like(301, 225)]
    ours = torch.stack([image_to_tensor(image, model.preprocess_config) for image in pictures])
    reference = getattr(library, processor).from_pretrained(folder)(images=pictures, return_tensors="pt")
    assert level_difference(ours, reference["pixel_values"], model.preprocess_config.std) <= 1.0 + 1e-4


# ---- open_clip and OpenAI --------------------------------------------------------------------------------------

VIT = {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 64}
RESNET = {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16, "head_width": 64}


def open_clip_features(model, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(ids)


def check_against_open_clip(ours, reference, image_size: int) -> None:
    library = refs.open_clip()
    preprocess = library.image_transform(image_size, is_train=False)
    pixels = torch.stack([preprocess(image) for image in images()])
    ours_pixels = torch.stack([image_to_tensor(image, ours.preprocess_config) for image in images()])
    assert level_difference(ours_pixels, pixels, ours.preprocess_config.std) <= 1.0
    ids = library.get_tokenizer("ViT-B-32")(TEXTS)
    check_same_model(ours, pixels, ids, *open_clip_features(reference, pixels, ids), reference.logit_scale)


def open_clip_folder(vocab: Path, folder: Path, vision: dict, quick_gelu: bool):
    """A small open_clip model saved as open_clip saves models for the Hub (config, weights, tokenizer)."""
    from open_clip.push_to_hf_hub import save_for_hf

    model, config = refs.open_clip_model(vision, quick_gelu)
    save_for_hf(model, refs.transformers().CLIPTokenizer.from_pretrained(vocab), config, folder)
    return model, folder


@pytest.mark.parametrize(
    "vision, quick_gelu", [(VIT, True), (VIT, False), (RESNET, False)], ids=["vit-quickgelu", "vit-gelu", "resnet"]
)
def test_open_clip_model_features_equal(vocab: Path, tmp_path: Path, vision: dict, quick_gelu: bool) -> None:
    reference, folder = open_clip_folder(vocab, tmp_path / "open_clip", vision, quick_gelu)
    assert (folder / "open_clip_model.safetensors").is_file()
    check_against_open_clip(from_pretrained(folder), reference, vision["image_size"])
    (folder / "open_clip_model.safetensors").unlink()  # the pickled copy is read with weights_only
    check_against_open_clip(from_pretrained(folder), reference, vision["image_size"])


@pytest.mark.parametrize("vision", [VIT, RESNET], ids=["vit", "resnet"])
@pytest.mark.parametrize("archive", ["torchscript", "state_dict"])
def test_openai_file_features_equal(vocab: Path, tmp_path: Path, vision: dict, archive: str) -> None:
    reference, _ = refs.open_clip_model(vision, quick_gelu=True)
    file = tmp_path / "model.pt"
    if archive == "torchscript":
        torch.jit.save(torch.jit.script(reference), file)
    else:
        torch.save(reference.state_dict(), file)
    with pytest.raises(ConversionError, match="tokenizer=FOLDER"):
        from_pretrained(file)
    check_against_open_clip(from_pretrained(file, tokenizer=vocab), reference, vision["image_size"])


def test_torchscript_archive_is_read_without_running_code(vocab: Path, tmp_path: Path) -> None:
    """The archive's code is never compiled: a code file replaced by garbage changes nothing."""
    import zipfile

    reference, _ = refs.open_clip_model(VIT, quick_gelu=True)
    file = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(reference), file)
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(file) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, b"raise SystemExit('ran')\n" if "/code/" in item.filename else data)
    with pytest.raises(RuntimeError):
        torch.jit.load(broken)  # torch itself would compile the code
    check_against_open_clip(from_pretrained(broken, tokenizer=vocab), reference, VIT["image_size"])


# ---- saving, the Hub cache, errors -----------------------------------------------------------------------------


def test_converted_model_saves_as_a_softclip_checkpoint(vocab: Path, tmp_path: Path) -> None:
    reference, folder = open_clip_folder(vocab, tmp_path / "open_clip", VIT, True)
    converted = from_pretrained(folder)
    again = from_pretrained(folder).state_dict()
    assert all(torch.equal(tensor, again[name]) for name, tensor in converted.state_dict().items())  # ROI path too
    converted.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer_settings.json").is_file()
    check_against_open_clip(from_pretrained(tmp_path / "saved"), reference, VIT["image_size"])


def lay_out_hub_cache(cache: Path, repo_id: str, files: Path) -> None:
    """A Hub cache as huggingface_hub writes it: blobs, a snapshot of links to them, and refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for index, file in enumerate(sorted(files.iterdir())):
        blob = repo / "blobs" / f"{index:040x}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.mark.parametrize("kind", ["transformers", "open_clip"])
def test_hub_ids_load_from_the_cache_offline(vocab: Path, tmp_path: Path, monkeypatch, kind: str) -> None:
    if kind == "transformers":
        reference, folder = transformers_folder(vocab, tmp_path / "files")
        repo_id, name = "openai/clip-vit-tiny-patch8", "openai/clip-vit-tiny-patch8"
    else:
        reference, folder = open_clip_folder(vocab, tmp_path / "files", VIT, True)
        repo_id, name = "timm/tiny_clip.test", "hf-hub:timm/tiny_clip.test"
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, repo_id, folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = from_pretrained(name, cache_dir=cache)
    direct = from_pretrained(folder)
    ids = model.tokenizer(TEXTS, 77)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), direct.encode_text(ids), atol=0, rtol=0)
    with pytest.raises(ValueError, match="could not find"):
        from_pretrained("openai/not-in-the-cache", cache_dir=cache)


def test_conversion_errors_name_what_does_not_fit(vocab: Path, tmp_path: Path) -> None:
    _, folder = open_clip_folder(vocab, tmp_path / "open_clip", VIT, True)
    settings = json.loads((folder / "open_clip_config.json").read_text())

    settings["model_cfg"]["vision_cfg"]["timm_model_name"] = "vit_base_patch16_224"
    (folder / "open_clip_config.json").write_text(json.dumps(settings))
    with pytest.raises(ConversionError, match="unsupported architecture: open_clip vision_cfg.timm_model_name"):
        from_pretrained(folder)

    del settings["model_cfg"]["vision_cfg"]["timm_model_name"]
    settings["model_cfg"]["vision_cfg"]["layers"] = 3  # the weights hold 2 blocks
    (folder / "open_clip_config.json").write_text(json.dumps(settings))
    with pytest.raises(ConversionError, match="no weights for 'visual.transformer.blocks.2"):
        from_pretrained(folder)

    settings["model_cfg"]["vision_cfg"]["layers"] = 2
    settings["model_cfg"]["embed_dim"] = 32
    (folder / "open_clip_config.json").write_text(json.dumps(settings))
    needs = r"unexpected shape for 'text.projection': \(64, 24\), the model needs \(64, 32\)"
    with pytest.raises(ConversionError, match=needs):
        from_pretrained(folder)

    state = refs.open_clip_model(VIT, True)[0].state_dict()
    state["visual.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(ConversionError, match="unknown key 'visual.extra.weight'"):
        from_pretrained(tmp_path / "extra.pt", tokenizer=vocab)


def test_not_clip_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ConversionError, match="neither a softclip config nor a transformers CLIP config"):
        from_pretrained(tmp_path)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConversionError, match="not a CLIP state dict: no tensor 'ln_final.weight'"):
        from_pretrained(tmp_path / "other.pt")


# ---- the whole chain on an imported model ------------------------------------------------------------------------


@pytest.mark.parametrize("vision", [VIT, RESNET], ids=["vit", "resnet"])
def test_imported_model_through_convert_export_index_search_label_explain(
    vocab: Path, tmp_path: Path, monkeypatch, capsys, vision: dict
) -> None:
    from softclip import label
    from softclip.cli import main
    from softclip.export.cache import cached_export_dir

    _, source = open_clip_folder(vocab, tmp_path / "open_clip", vision, quick_gelu=True)
    monkeypatch.setenv("SOFTCLIP_CACHE", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, picture in enumerate(images(seed=3)):
        picture.save(photos / f"photo{index}.png")

    assert main(["convert", str(source), "--out", str(tmp_path / "ckpt")]) == 0
    assert main(["index", str(photos), "--model", str(source), "--index", str(tmp_path / "idx")]) == 0
    export = cached_export_dir(source)
    assert "exporting" in capsys.readouterr().out and (export / "export.json").is_file()
    assert json.loads((export / "export.json").read_text())["parity"]["max_abs_diff"] < 1e-4
    assert main(["index", str(photos), "--model", str(source), "--index", str(tmp_path / "idx")]) == 0
    assert "exporting" not in capsys.readouterr().out  # the cached export is reused

    model = from_pretrained(tmp_path / "ckpt")
    assert main(["search", str(tmp_path / "idx"), "a red square", "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        pictures = torch.stack([image_to_tensor(photos / f"photo{i}.png", model.preprocess_config) for i in range(5)])
        scores = model.encode_image(pictures) @ model.encode_text(model.tokenizer(["a red square"], 77))[0]
    expected = [f"photo{i}.png" for i in scores.argsort(descending=True).tolist()]
    assert [Path(hit["path"]).name for hit in hits] == expected
    np.testing.assert_allclose([hit["score"] for hit in hits], scores.sort(descending=True).values, atol=1e-4)

    labels = "cat,dog,car"
    assert main(["label", str(photos / "photo0.png"), "--model", str(export), "--labels", labels, "--json"]) == 0
    onnx_scores = json.loads(capsys.readouterr().out)
    torch_scores = label([photos / "photo0.png"], labels.split(","), model=model, top_k=3)[0]
    by_label = {score.label: score.probability for score in torch_scores}
    assert [entry["label"] for entry in onnx_scores[0]["labels"]] == [score.label for score in torch_scores]
    for entry in onnx_scores[0]["labels"]:
        assert abs(entry["probability"] - by_label[entry["label"]]) < 1e-3

    heatmaps = tmp_path / "heat.png"
    photo, checkpoint = str(photos / "photo0.png"), str(tmp_path / "ckpt")
    assert main(["explain", photo, "a red square", "--model", checkpoint, "--out", str(heatmaps)]) == 0
    assert np.asarray(Image.open(heatmaps).convert("L")).std() > 1  # drawn panels, not a blank file


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50"])
def test_full_size_architectures_load_without_a_preset(vocab: Path, tmp_path: Path, name: str) -> None:
    """open_clip's real architectures (random weights): read from the config, features equal."""
    library = refs.open_clip()
    from open_clip.push_to_hf_hub import save_for_hf

    torch.manual_seed(0)
    reference = library.create_model(name).eval()
    config = library.get_model_config(name)
    save_for_hf(reference, refs.transformers().CLIPTokenizer.from_pretrained(vocab), config, tmp_path / name)
    check_against_open_clip(from_pretrained(tmp_path / name), reference, reference.visual.image_size[0])
