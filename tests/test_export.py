"""ONNX export: both tiny presets export with torch parity, the folder follows its contract, OnnxEncoder
follows the encoder protocol on real ONNX Runtime sessions, and bad exports and folders fail by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest
import torch

import softclip
import softclip.export.exporter as exporter
import softclip.export.onnx_encoder as onnx_encoder
from softclip.encoder import Encoder, TorchEncoder, load_pixels, state_dict_id
from softclip.export import (
    DEFAULT_OPSET,
    EXPORT_FILES,
    ExportError,
    OnnxEncoder,
    ParityError,
    ParityReport,
    check_parity,
    default_providers,
    encoder_for,
    export_model,
    parity_samples,
    verify_parity,
)
from softclip.export.folder import IMAGE_GRAPH, INFO_FILE, TEXT_GRAPH, graphs_id, read_info
from softclip.model import create_model
from softclip.pretrained import from_pretrained
from softclip.save import save_pretrained
from softclip.tokenizer import Tokenizer
from softclip.transform import PreprocessConfig

PRESETS = ["tiny-vit", "tiny-rn"]
EMBED_DIM, IMAGE_SIZE, CONTEXT_LENGTH = 128, 64, 32  # both tiny presets


class Exported(NamedTuple):
    checkpoint: Path
    folder: Path


def make_checkpoint(name: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(name)
    model.tokenizer = Tokenizer.default()
    model.preprocess_config = PreprocessConfig(size=model.config.vision.image_size)
    return save_pretrained(model, folder)


def leftovers(folder: Path) -> list[str]:
    """Hidden staging or retired folders an export may have left next to its target."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Exports and parity runs are tiny; one torch thread leaves the other core to the rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=PRESETS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = make_checkpoint(request.param, root / "checkpoint")
    return Exported(checkpoint, export_model(checkpoint, root / "export"))


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint("tiny-vit", tmp_path_factory.mktemp("vit") / "checkpoint")


@pytest.fixture
def torch_encoder(exported: Exported) -> TorchEncoder:
    return TorchEncoder(from_pretrained(exported.checkpoint), device="cpu")


@pytest.fixture
def broken_copy(exported: Exported, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported.folder, tmp_path / "export"))


def sample_pixels(encoder: Encoder, count: int) -> np.ndarray:
    return load_pixels(parity_samples(count)[0], encoder)


def test_export_folder_holds_exactly_the_contract_files(exported: Exported) -> None:
    assert sorted(path.name for path in exported.folder.iterdir()) == sorted(EXPORT_FILES)
    assert leftovers(exported.folder.parent) == []


def test_export_json_describes_model_ids_and_parity(exported: Exported) -> None:
    info = read_info(exported.folder)
    model = from_pretrained(exported.checkpoint)
    assert info["model_name"] == model.config.name
    assert (info["embed_dim"], info["image_size"], info["context_length"]) == (EMBED_DIM, IMAGE_SIZE, CONTEXT_LENGTH)
    assert (info["opset"], info["precision"]) == (DEFAULT_OPSET, "fp32")
    assert info["model_id"] == graphs_id(exported.folder) and len(info["model_id"]) == 16
    assert info["state_dict_id"] == state_dict_id(model)
    parity = info["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["ranking_agreement"] == 1.0
    assert parity["images"] == parity["texts"] == 8


def test_graphs_have_named_inputs_outputs_and_a_dynamic_batch(exported: Exported) -> None:
    expected = {
        IMAGE_GRAPH: ("pixel_values", onnx.TensorProto.FLOAT, [3, IMAGE_SIZE, IMAGE_SIZE], "image_embeds"),
        TEXT_GRAPH: ("input_ids", onnx.TensorProto.INT64, [CONTEXT_LENGTH], "text_embeds"),
    }
    for name, (input_name, dtype, fixed_dims, output_name) in expected.items():
        graph = onnx.load(exported.folder / name, load_external_data=False).graph
        (graph_input,), (graph_output,) = graph.input, graph.output
        dims = graph_input.type.tensor_type.shape.dim
        assert (graph_input.name, graph_input.type.tensor_type.elem_type) == (input_name, dtype)
        assert dims[0].dim_param and [dim.dim_value for dim in dims[1:]] == fixed_dims
        assert graph_output.name == output_name


def test_fp32_parity_with_torch_on_real_images(exported: Exported, torch_encoder: TorchEncoder) -> None:
    report = verify_parity(torch_encoder, OnnxEncoder(exported.folder))
    assert report.max_abs_diff <= 1e-4
    assert report.ranking_agreement == 1.0
    assert report.min_cosine > 0.9999


def test_batch_of_1_and_5_match_torch(exported: Exported, torch_encoder: TorchEncoder) -> None:
    encoder = OnnxEncoder(exported.folder)
    pixels, texts = sample_pixels(encoder, 5), parity_samples(5)[1]
    for count in (1, 5):  # the graphs see batches of 1 and 5
        images_out, texts_out = encoder.encode_images(pixels[:count]), encoder.encode_texts(texts[:count])
        assert images_out.shape == texts_out.shape == (count, EMBED_DIM)
        np.testing.assert_allclose(images_out, torch_encoder.encode_images(pixels[:count]), atol=1e-5)
        np.testing.assert_allclose(texts_out, torch_encoder.encode_texts(texts[:count]), atol=1e-5)
    chunked = OnnxEncoder(exported.folder, batch_size=2)  # 5 rows run as chunks of 2, 2 and 1
    np.testing.assert_allclose(chunked.encode_images(pixels), encoder.encode_images(pixels), atol=1e-6)


def test_onnx_encoder_follows_the_encoder_protocol(exported: Exported, torch_encoder: TorchEncoder) -> None:
    encoder = OnnxEncoder(exported.folder)
    assert isinstance(encoder, Encoder)
    assert (encoder.embed_dim, encoder.model_id) == (EMBED_DIM, read_info(exported.folder)["model_id"])
    assert encoder.providers == ["CPUExecutionProvider"]
    image = parity_samples(1)[0][0]
    np.testing.assert_array_equal(encoder.preprocess(image), torch_encoder.preprocess(image))
    texts = encoder.encode_texts(["a red circle", "two blue squares"])
    assert texts.dtype == np.float32 and texts.shape == (2, EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert encoder.encode_images(np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)).shape == (0, EMBED_DIM)


def test_label_through_export_agrees_with_the_checkpoint(exported: Exported) -> None:
    images = parity_samples(6, seed=1)[0]
    labels = ["red circle", "blue square", "green triangle", "yellow stripes"]
    through_onnx = softclip.label(images, labels, model=OnnxEncoder(exported.folder), top_k=len(labels))
    through_torch = softclip.label(images, labels, model=exported.checkpoint, top_k=len(labels))
    for onnx_scores, torch_scores in zip(through_onnx, through_torch, strict=True):
        assert onnx_scores[0].label == torch_scores[0].label
        onnx_probabilities = {score.label: score.probability for score in onnx_scores}
        torch_probabilities = {score.label: score.probability for score in torch_scores}
        assert onnx_probabilities == pytest.approx(torch_probabilities, abs=1e-4)


def test_the_core_refuses_an_export_folder_by_name(exported: Exported) -> None:
    # The core never imports ONNX Runtime: an export folder is opened by the caller, or by encoder_for.
    with pytest.raises(ValueError, match=r"is an ONNX export folder: pass softclip\.export\.OnnxEncoder"):
        softclip.label(parity_samples(1, seed=1)[0], ["red circle"], model=exported.folder)
    assert isinstance(encoder_for(exported.folder), OnnxEncoder)
    assert isinstance(encoder_for(exported.checkpoint), TorchEncoder)


def test_wrong_pixel_shape_and_a_single_string_are_refused(exported: Exported) -> None:
    encoder = OnnxEncoder(exported.folder)
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\], got \[2, 3, 32, 32\]"):
        encoder.encode_images(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode_texts("a red circle")


@pytest.mark.parametrize("name", EXPORT_FILES)
def test_missing_file_is_named(broken_copy: Path, name: str) -> None:
    (broken_copy / name).unlink()
    with pytest.raises(ExportError, match=f"missing {name}"):
        OnnxEncoder(broken_copy)


@pytest.mark.parametrize("name", EXPORT_FILES)
def test_corrupt_file_is_named(broken_copy: Path, name: str) -> None:
    (broken_copy / name).write_bytes(b"\x00 not what it should be {")
    with pytest.raises(ExportError, match=name):
        OnnxEncoder(broken_copy)


def test_export_json_without_a_required_field_is_named(broken_copy: Path) -> None:
    info = json.loads((broken_copy / INFO_FILE).read_text())
    del info["model_id"]
    (broken_copy / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ExportError, match="'model_id' is missing"):
        OnnxEncoder(broken_copy)


def test_missing_export_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="export folder not found"):
        OnnxEncoder(tmp_path / "nowhere")


def test_int8_export_records_its_cosines_to_fp32(vit_checkpoint: Path, tmp_path: Path) -> None:
    # An untrained model's rankings are near ties that quantisation flips; int8 is judged by cosine instead.
    out = export_model(vit_checkpoint, tmp_path / "int8", int8=True)
    info = read_info(out)
    assert info["precision"] == "int8" and info["fp32_parity"]["max_abs_diff"] <= 1e-4
    parity = info["parity"]
    assert 0.99 <= parity["mean_cosine"] <= 1.0 and 0.98 <= parity["min_cosine"] <= parity["mean_cosine"]
    assert parity["max_abs_diff"] > 1e-4  # the weights really were quantised
    assert {"image_mean_cosine", "text_mean_cosine", "ranking_agreement"} <= set(parity)
    ops = {node.op_type for node in onnx.load(out / IMAGE_GRAPH).graph.node}
    assert "DynamicQuantizeLinear" in ops or "DynamicQuantizeMatMul" in ops
    assert leftovers(tmp_path) == []


def test_fp16_export_of_a_model_object_keeps_float32_io(vit_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime.transformers.float16")
    out = export_model(from_pretrained(vit_checkpoint), tmp_path / "fp16", fp16=True)
    info = read_info(out)
    assert info["precision"] == "fp16"
    assert info["parity"]["max_abs_diff"] <= 0.05 and info["parity"]["ranking_agreement"] >= 0.9
    graph = onnx.load(out / IMAGE_GRAPH).graph
    assert any(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    encoder = OnnxEncoder(out)
    embeds = encoder.encode_images(sample_pixels(encoder, 3))
    assert embeds.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1.0, atol=1e-5)  # normalised in float32


def parity_report(precision: str, **measured: float) -> ParityReport:
    """A report of perfect parity, but for the ``measured`` numbers given."""
    perfect = dict(max_abs_diff=0.0, image_max_abs_diff=0.0, text_max_abs_diff=0.0, min_cosine=1.0, mean_cosine=1.0)
    perfect.update(image_mean_cosine=1.0, text_mean_cosine=1.0, ranking_agreement=1.0, images=8, texts=8)
    return ParityReport(precision, **{**perfect, **measured})


def test_parity_thresholds_refuse_poor_exports() -> None:
    for good in (
        parity_report("int8", max_abs_diff=0.06, mean_cosine=0.995, min_cosine=0.985, ranking_agreement=0.5),
        parity_report("fp16", max_abs_diff=0.01, ranking_agreement=0.95),
        parity_report("fp32", max_abs_diff=5e-5),
    ):
        assert check_parity(good) is good
    for poor, reason in (
        (parity_report("int8", mean_cosine=0.985, min_cosine=0.985), "mean cosine 0.985 < 0.99"),
        (parity_report("int8", mean_cosine=0.995, min_cosine=0.97), "min cosine 0.97 < 0.98"),
        (parity_report("int8", mean_cosine=float("nan")), "mean cosine nan < 0.99"),
        (parity_report("fp16", ranking_agreement=0.8), "top-1 ranking agreement 0.8 < 0.9"),
        (parity_report("fp16", max_abs_diff=float("nan")), "max abs difference nan > 0.05"),
        (parity_report("fp32", max_abs_diff=2e-4), "max abs difference 0.0002 > 0.0001"),
    ):
        with pytest.raises(ParityError, match=f"^{poor.precision} export refused") as refused:
            check_parity(poor)
        assert reason in str(refused.value)


def test_failed_export_leaves_earlier_export_and_no_partial_files(
    vit_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / INFO_FILE).write_text("{}")  # an earlier export, to be kept when the new one fails

    def fail_halfway(model: torch.nn.Module, folder: Path, opset: int) -> None:
        (folder / IMAGE_GRAPH).write_bytes(b"half")
        raise ExportError("the text tower failed")

    monkeypatch.setattr(exporter, "export_graphs", fail_halfway)
    with pytest.raises(ExportError, match="text tower failed"):
        export_model(vit_checkpoint, out)
    assert sorted(path.name for path in out.iterdir()) == [INFO_FILE]
    assert leftovers(tmp_path) == []


def test_a_finished_export_replaces_the_earlier_one_whole(tmp_path: Path) -> None:
    out, staging = tmp_path / "export", tmp_path / ".export.staging"
    out.mkdir()
    staging.mkdir()
    (out / INFO_FILE).write_text("old")
    (out / "stale.onnx").write_text("old")
    (staging / INFO_FILE).write_text("new")
    exporter.move_into_place(staging, out)
    assert [(path.name, path.read_text()) for path in out.iterdir()] == [(INFO_FILE, "new")]
    assert leftovers(tmp_path) == []


def test_export_refuses_a_folder_that_is_not_an_export(vit_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty and holds no export.json"):
        export_model(vit_checkpoint, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_export_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        export_model("unused", tmp_path / "out", fp16=True, int8=True)
    bare = create_model("tiny-rn")
    del bare.tokenizer, bare.preprocess_config
    with pytest.raises(ExportError, match="has no tokenizer, preprocess_config"):
        export_model(bare, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cuda_is_asked_for_only_when_offered_and_a_device_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    for offered, device, expected in [
        (["CPUExecutionProvider"], True, ["CPUExecutionProvider"]),
        (cuda, False, ["CPUExecutionProvider"]),
        (cuda, True, cuda),
    ]:
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda offered=offered: offered)
        monkeypatch.setattr(onnx_encoder, "cuda_device_present", lambda device=device: device)
        assert default_providers() == expected


def test_cpu_machine_runs_without_log_noise(exported: Exported, capfd: pytest.CaptureFixture) -> None:
    if onnx_encoder.cuda_device_present():
        pytest.skip("a GPU is present")
    capfd.readouterr()
    encoder = OnnxEncoder(exported.folder)
    encoder.encode_texts(["a red circle"])
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_import_softclip_loads_no_onnx() -> None:
    code = "import sys, softclip; print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
