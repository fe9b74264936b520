"""Checkpoint -> validated bundle (bridges trainer/ and scorer/)."""

from ncnc.exporter.export import ExportConfig, ExportValidationError, export_bundle

__all__ = ["ExportConfig", "ExportValidationError", "export_bundle"]
