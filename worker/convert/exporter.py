"""Export a native model (an import, or a fine-tune's final folder) in the original InternVL layout
or in the native one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.core.model_card import read_card
from backend.core.model_folder import ModelFolderError
from worker.convert.configs import SOURCE_KEY, parse_original
from worker.convert.errors import ConversionError
from worker.convert.files import atomic_folder, copy_side_files, link_or_copy, read_json, write_json
from worker.convert.importer import DEFAULT_MAX_SHARD_BYTES, detect_format
from worker.convert.layout import NATIVE_HEAD, all_links, disk_name
from worker.convert.original_config import (
    check_exportable,
    export_family,
    synthesize_original,
    update_original,
)
from worker.convert.streaming import Progress, export_job, order_jobs, run_jobs
from worker.convert.tensor_io import CheckpointReader, dominant_dtype, dtype_name

FORMATS = ("original", "hf")


@dataclass(frozen=True)
class ExportResult:
    path: str
    format: str
    warnings: list[str] = field(default_factory=list)


def _original_base(native: dict, original_source: Path | None) -> dict | None:
    """The original folder's own config.json when given (every key as written, including those
    transformers drops from a stored copy, e.g. ``_commit_hash``), else the copy kept at import."""
    if original_source is not None and detect_format(original_source) == "original":
        return read_json(original_source / "config.json")
    stored = native.get(SOURCE_KEY)
    if isinstance(stored, dict) and isinstance(stored.get("config"), dict):
        return stored["config"]
    return None


def _native_names(reader: CheckpointReader, expected: set[str], tied_head: str | None) -> dict[str, str]:
    names = {disk_name(n): n for n in reader.meta}
    if tied_head is not None:
        names.pop(tied_head, None)
    missing = sorted(expected - set(names))
    extra = sorted(set(names) - expected)
    if missing or extra:
        raise ConversionError(f"the native weights do not match config.json: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
    return names


def _export_original(src: Path, out: Path, original_source: Path | None, progress: Progress | None,
                     max_shard_bytes: int) -> list[str]:
    native = read_json(src / "config.json")
    check_exportable(native)
    base = _original_base(native, original_source)
    family = export_family(native, base)
    reader = CheckpointReader(src)
    dtype = dtype_name(dominant_dtype(list(reader.meta.values())))
    try:
        card = read_card(src)  # the template and tiling the export carries
    except ModelFolderError as e:
        raise ConversionError(str(e)) from None
    cfg = (update_original(base, native, family, dtype, card) if base
           else synthesize_original(native, family, dtype, card))
    m = parse_original(cfg)
    links = all_links(m.vision, m.scale, m.text)
    tied_head = NATIVE_HEAD if m.text.tied else None
    names = _native_names(reader, {n for link in links for n in link.native}, tied_head)
    jobs = order_jobs(reader, [export_job(link, names) for link in links])
    entries = run_jobs(reader, jobs, out, max_shard_bytes, progress)
    shapes = {name: meta.shape for name, meta in entries}
    bad = [link.original for link in links if shapes[link.original] != link.shape]
    if bad:
        raise ConversionError(f"the native tensors do not fold back to the original shapes: {', '.join(bad[:5])}")
    write_json(out / "config.json", cfg)
    warnings = []
    if original_source is not None:
        copy_side_files(original_source, out, skip={"config.json"}, include_code=True)
    else:
        copy_side_files(src, out, skip={"config.json"}, include_code=False)
        warnings.append("no original folder given: the remote-code files (modeling_internvl_chat.py, ...) and "
                        "the original tokenizer files are not in the export; config.json's auto_map expects them")
    return warnings


def _export_hf(src: Path, out: Path, progress: Progress | None) -> None:
    files = [p for p in sorted(src.iterdir()) if p.is_file() and p.suffix != ".py"]
    total = sum(p.stat().st_size for p in files)
    done = 0
    for path in files:
        link_or_copy(path, out / path.name)
        done += path.stat().st_size
        if progress is not None:
            progress(done, total, path.name)


def export_model(src_native: Path, dst: Path, fmt: str, original_source: Path | None = None,
                 progress: Progress | None = None, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ExportResult:
    """Write the native model folder ``src_native`` to the new folder ``dst``.

    ``fmt="original"``: InternVL's remote-code layout (``internvl_chat`` config with ``auto_map``, the
    original tensor names, fused ``qkv``/``wqkv``); files other than config and weights (remote code,
    tokenizer) are copied from ``original_source``, the folder the model was imported from, when given.
    ``fmt="hf"``: the native layout as it is. Raises :class:`ConversionError`; ``dst`` is then not created.
    """
    src_native, dst = Path(src_native), Path(dst)
    if fmt not in FORMATS:
        raise ConversionError(f"unknown export format {fmt!r}; use 'original' or 'hf'")
    if detect_format(src_native) != "hf":
        raise ConversionError(f"{src_native}: not a native model folder (config.json model_type 'internvl')")
    if original_source is not None:
        original_source = Path(original_source)
        if not original_source.is_dir():
            raise ConversionError(f"{original_source}: the original folder does not exist")
    warnings: list[str] = []
    with atomic_folder(dst) as out:
        if fmt == "original":
            warnings = _export_original(src_native, out, original_source, progress, max_shard_bytes)
        else:
            _export_hf(src_native, out, progress)
    return ExportResult(str(dst.resolve()), fmt, warnings)
