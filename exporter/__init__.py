"""Checkpoint -> validated bundle (bridges ncnc.trainer and ncnc.scorer).

Needs the ``[train]`` extra (the checkpoint's model and ONNX export); importing without it is one
line saying so.
"""

from ncnc.core.extras import require

require("torch_geometric", "onnx", "onnxscript", extra="train",
        purpose="exporting a checkpoint (ncnc export)")

from ncnc.exporter.evaluate import evaluate_bundle
from ncnc.exporter.export import ExportConfig, ExportValidationError, export_bundle
from ncnc.exporter.precision import AgreementError

__all__ = ["AgreementError", "ExportConfig", "ExportValidationError", "evaluate_bundle",
           "export_bundle"]
