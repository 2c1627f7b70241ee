"""Import released InternVL checkpoints into the transformers-native layout and export them back.

Public API (used by ``vlstudio models import/export``, the API and the worker):

- :func:`detect_format` ``(path) -> "original" | "hf"``
- :func:`import_checkpoint` ``(src, dst, progress=None) -> ModelInfo``
- :func:`export_model` ``(src_native, dst, fmt, original_source=None, progress=None) -> ExportResult``
- :class:`ModelInfo`, :class:`ExportResult`, :class:`ConversionError`

No code shipped in a checkpoint folder is ever imported or run. See docs/models.md.
"""

from worker.convert.errors import ConversionError
from worker.convert.exporter import ExportResult, export_model
from worker.convert.importer import detect_format, import_checkpoint
from worker.convert.model_info import ModelInfo

__all__ = ["ConversionError", "ExportResult", "ModelInfo", "detect_format", "export_model", "import_checkpoint"]
