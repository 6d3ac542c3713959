"""softclip.export: ONNX export of each tower, the parity check, and the ONNX Runtime encoder.

``export_model(checkpoint, out_dir)`` writes an export folder; ``OnnxEncoder(out_dir)`` embeds with it
through the encoder protocol; ``verify_parity`` measures how closely one encoder reproduces another.
"""

from softclip.export.exporter import DEFAULT_OPSET, export_model
from softclip.export.folder import EXPORT_FILES, ExportError
from softclip.export.onnx_encoder import OnnxEncoder, default_providers, encoder_for
from softclip.export.parity import ParityError, ParityReport, check_parity, parity_samples, verify_parity

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FILES",
    "ExportError",
    "OnnxEncoder",
    "ParityError",
    "ParityReport",
    "check_parity",
    "default_providers",
    "encoder_for",
    "export_model",
    "parity_samples",
    "verify_parity",
]
