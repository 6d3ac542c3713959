"""``export_model``: a checkpoint -> an export folder of two ONNX graphs, with parity measured and recorded.

Each tower is its own graph with a dynamic batch axis; the text graph takes ids padded to the model's
context length, as the tokenizer writes them. The folder is written into a hidden staging folder next
to the target and renamed into place only once everything, parity included, has succeeded, so a
failed or refused export leaves nothing behind.

Precisions: ``fp32`` (as trained), ``int8`` (ONNX Runtime dynamic quantisation of the matrix products'
weights, for CPUs) and ``fp16`` (weights and arithmetic in half precision, for GPUs; inputs, outputs and
the final L2 normalisation stay float32). Each records its parity against the torch model and is
refused when it is poor (see ``softclip.export.parity``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from softclip.encoder import TorchEncoder
from softclip.export.folder import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_GRAPH,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    INFO_FILE,
    TEXT_GRAPH,
    TEXT_INPUT,
    TEXT_OUTPUT,
    ExportError,
    graphs_id,
    write_info,
)
from softclip.export.onnx_encoder import CPU_PROVIDER, OnnxEncoder, default_providers, disable_telemetry
from softclip.export.parity import ParityReport, check_parity, verify_parity

# Opset 20 has a Gelu operator and opset 23 an Attention operator, which torch's exporter emits for
# F.gelu and F.scaled_dot_product_attention; earlier opsets decompose both into 5-7 elementwise and matrix
# ops each, which made ONNX Runtime's fp32 ViT-B/32 slower than torch eager (docs/results.md).
DEFAULT_OPSET = 23
# Dynamic int8 quantisation covers the matrix products only (ConvInteger is slow on CPUs), with one scale
# per output channel, which kept top-1 rankings closest to fp32 on the tiny presets.
INT8_OP_TYPES = ("MatMul", "Gemm")
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types
_EXAMPLE_BATCH = 2  # torch.export specialises a batch of 1, so trace with 2 and mark the axis dynamic


class ImageTower(nn.Module):
    """The graph of ``image_encoder.onnx``: ``pixel_values`` [B, 3, H, W] -> L2-normalised [B, D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_image(pixel_values)


class TextTower(nn.Module):
    """The graph of ``text_encoder.onnx``: ``input_ids`` int64 [B, L] -> L2-normalised [B, D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model.encode_text(input_ids)


def precision_of(fp16: bool, int8: bool) -> str:
    """``"fp32"``, ``"fp16"`` or ``"int8"`` from the two switches (which exclude each other)."""
    if fp16 and int8:
        raise ValueError("choose one of fp16 (for GPUs) and int8 (for CPUs), not both")
    return "fp16" if fp16 else "int8" if int8 else "fp32"


def load_model(source: str | Path | nn.Module) -> nn.Module:
    """A model with its tokenizer and preprocessing: ``source`` itself, or loaded from a checkpoint folder."""
    if isinstance(source, (str, Path)):
        from softclip.pretrained import from_pretrained

        return from_pretrained(source)
    if not isinstance(source, nn.Module):
        raise TypeError(f"export_model takes a checkpoint folder or a SoftCLIP model, got {type(source).__name__}")
    missing = [name for name in ("config", "tokenizer", "preprocess_config") if not hasattr(source, name)]
    if missing:
        raise ExportError(
            f"the model has no {', '.join(missing)}: load it with from_pretrained, or attach them before exporting"
        )
    return source


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence warnings and log lines of the exporter and quantiser that say nothing about the model.

    (Deprecation notices from inside torch, the missing optional torchvision ops, and the quantiser's
    advice to pre-process, which it logs on the root logger.)
    """
    loggers = [logging.getLogger("torch.onnx"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_tower(tower: nn.Module, example: Tensor, names: tuple[str, str], path: Path, opset: int) -> None:
    """Write one tower as an ONNX graph with input ``names[0]``, output ``names[1]`` and a dynamic batch axis."""
    input_name, output_name = names
    batch = torch.export.Dim("batch", min=1)
    try:
        with quiet_exporter():
            torch.onnx.export(
                tower.eval(),
                (example,),
                str(path),
                dynamo=True,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes={input_name: {0: batch}},
                external_data=False,
                opset_version=opset,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; all mean the same thing here
        raise ExportError(f"torch.onnx could not export {path.name}: {error}") from error


def export_graphs(model: nn.Module, folder: Path, opset: int) -> None:
    """Write ``image_encoder.onnx`` and ``text_encoder.onnx`` of ``model`` (on the CPU, in eval mode) to ``folder``."""
    size, context_length = model.config.vision.image_size, model.config.text.context_length
    pixels = torch.randn(_EXAMPLE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = model.tokenizer(["a photo of a red circle", "two squares"][:_EXAMPLE_BATCH], context_length)
    export_tower(ImageTower(model), pixels, (IMAGE_INPUT, IMAGE_OUTPUT), folder / IMAGE_GRAPH, opset)
    export_tower(TextTower(model), ids, (TEXT_INPUT, TEXT_OUTPUT), folder / TEXT_GRAPH, opset)


def quantize_graph_int8(path: Path) -> None:
    """Replace the graph at ``path`` by its dynamically quantised version (int8 weights, activations at run time)."""
    disable_telemetry()  # the quantiser may open sessions of its own
    from onnxruntime.quantization import QuantType, quantize_dynamic

    staged = path.with_name(f"{path.name}.int8")
    with quiet_exporter():
        quantize_dynamic(
            path, staged, op_types_to_quantize=list(INT8_OP_TYPES), per_channel=True, weight_type=QuantType.QInt8
        )
    staged.replace(path)


def quantize_int8(folder: Path) -> None:
    """Quantise both graphs of ``folder`` to int8."""
    for name in (IMAGE_GRAPH, TEXT_GRAPH):
        quantize_graph_int8(folder / name)


def float16_converter() -> Callable[..., Any]:
    """``convert_float_to_float16`` from onnxruntime's transformer tools, or else from onnxconverter-common."""
    with contextlib.suppress(ImportError):
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16
    with contextlib.suppress(ImportError):
        from onnxconverter_common.float16 import convert_float_to_float16

        return convert_float_to_float16
    raise ExportError(
        "fp16 export needs a float16 converter, and none is installed: neither onnxruntime.transformers.float16 "
        "(shipped with onnxruntime) nor onnxconverter-common was found; pip install onnxconverter-common"
    )


def normalisation_nodes(graph: Any) -> list[str]:
    """Names of the nodes from the last ``ReduceL2`` on: the final L2 normalisation, kept in float32."""
    kinds = [node.op_type for node in graph.node]
    if "ReduceL2" not in kinds:
        return []
    start = len(kinds) - 1 - kinds[::-1].index("ReduceL2")
    return [node.name for node in graph.node[start:]]


def cast_target(node: Any) -> int | None:
    """The element type a ``Cast`` node converts to; None for other nodes."""
    if node.op_type != "Cast":
        return None
    return next((attribute.i for attribute in node.attribute if attribute.name == "to"), None)


def skip_float16_round_trips(graph: Any, float32_nodes: list[str]) -> None:
    """Feed the float32 outputs of ``float32_nodes`` straight to the casts that turn them back into float32.

    The float16 converter puts a Cast to float16 after every node it keeps in float32 and a Cast back
    before the next one, which rounds the norm (and the output) to float16 on the way.
    """
    kept = set(float32_nodes)
    producer = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        down = producer.get(node.input[0]) if cast_target(node) == FLOAT else None
        if down is None or cast_target(down) != FLOAT16 or down.input[0] not in producer:
            continue
        if producer[down.input[0]].name in kept:
            node.input[0] = down.input[0]  # a float32 -> float32 Cast now: an identity
    drop_unused_nodes(graph)


def drop_unused_nodes(graph: Any) -> None:
    """Remove nodes none of whose outputs is read by another node or is a graph output."""
    while True:
        used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
        unused = [node for node in graph.node if not any(output in used for output in node.output)]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)


def convert_fp16(folder: Path) -> None:
    """Replace both graphs by float16 versions whose inputs, outputs and final normalisation stay float32."""
    import onnx

    convert = float16_converter()
    for name in (IMAGE_GRAPH, TEXT_GRAPH):
        model = onnx.load(folder / name)
        float32_nodes = normalisation_nodes(model.graph)
        half = convert(model, keep_io_types=True, node_block_list=float32_nodes)
        skip_float16_round_trips(half.graph, float32_nodes)
        onnx.save(half, folder / name)


CONVERTERS: dict[str, Callable[[Path], None]] = {"int8": quantize_int8, "fp16": convert_fp16}


def describe(model: nn.Module, reference: TorchEncoder, folder: Path, precision: str, opset: int) -> dict[str, Any]:
    """The parts of ``export.json`` that do not depend on parity."""
    from softclip import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": model.config.name,
        "embed_dim": model.config.embed_dim,
        "context_length": model.config.text.context_length,
        "image_size": model.config.vision.image_size,
        "inputs": {"image": IMAGE_INPUT, "text": TEXT_INPUT},
        "outputs": {"image": IMAGE_OUTPUT, "text": TEXT_OUTPUT},
        "opset": opset,
        "precision": precision,
        "model_id": graphs_id(folder),
        "state_dict_id": reference.model_id,
        "softclip_version": __version__,
        "torch_version": torch.__version__,
    }


def measure(reference: TorchEncoder, folder: Path, info: dict[str, Any]) -> ParityReport:
    """Write ``info`` as ``export.json``, then parity of the folder's graphs with ``reference``, refused if poor.

    fp32 and int8 are measured on the CPU provider (int8 is a CPU format, and GPU float32 arithmetic
    may use TF32); fp16 on the providers the encoder would pick.
    """
    write_info(folder, info)
    providers = default_providers() if info["precision"] == "fp16" else [CPU_PROVIDER]
    candidate = OnnxEncoder(folder, providers=providers)
    return check_parity(verify_parity(reference, candidate, precision=info["precision"]))


def write_export(model: nn.Module, folder: Path, precision: str, opset: int) -> dict[str, Any]:
    """Fill ``folder`` with the export of ``model``; returns the contents of ``export.json``."""
    reference = TorchEncoder(model, device="cpu")  # moves the model to the CPU, in eval mode
    export_graphs(model, folder, opset)
    model.tokenizer.save(folder)
    model.preprocess_config.save(folder)
    info = describe(model, reference, folder, "fp32", opset)
    info["parity"] = measure(reference, folder, info).to_dict()
    if precision != "fp32":
        CONVERTERS[precision](folder)
        fp32_parity = info["parity"]
        info = describe(model, reference, folder, precision, opset)
        info["parity"], info["fp32_parity"] = measure(reference, folder, info).to_dict(), fp32_parity
    write_info(folder, info)
    return info


def check_target(out_dir: Path) -> None:
    """Refuse to replace anything but a missing folder, an empty one or an earlier export."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INFO_FILE).is_file():
        raise ExportError(f"refusing to write into {out_dir}: it is not empty and holds no {INFO_FILE}")


def move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``, replacing an earlier export there."""
    if out_dir.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(retired / out_dir.name)
        staging.rename(out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out_dir)


def export_model(
    checkpoint_dir_or_model: str | Path | nn.Module,
    out_dir: str | Path,
    fp16: bool = False,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a checkpoint folder (or a model with its tokenizer and preprocessing) to an ONNX export folder.

    Writes ``image_encoder.onnx``, ``text_encoder.onnx``, ``tokenizer.json``, ``preprocess.json`` and
    ``export.json`` into ``out_dir`` (replacing an earlier export there) and returns ``out_dir``. A model
    passed in is moved to the CPU in eval mode. Raises ``ParityError`` (leaving nothing written) when the
    exported graphs' embeddings are too far from the torch model's for their precision.
    """
    precision = precision_of(fp16, int8)
    if precision == "fp16":
        float16_converter()  # fail before the slow part when the tooling is missing
    model = load_model(checkpoint_dir_or_model)
    out_dir = Path(out_dir)
    check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        with torch.no_grad():
            write_export(model, staging, precision, opset)
        move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
    return out_dir
