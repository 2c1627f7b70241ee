"""Import a checkpoint folder: detect its format, convert an original InternVL folder to the
transformers-native layout (or check a native one), and write the result atomically.

Nothing from the folder is ever executed: configs are read as JSON, weights through safetensors or
``torch.load(weights_only=True)``, tokenizers from their data files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from backend.core.families import get_family
from backend.core.model_card import read_card
from backend.core.model_shapes import shapes_from_config
from backend.core.samples import IMG_CONTEXT
from backend.core.templates import TEMPLATES
from worker.convert.configs import OriginalModel, native_config, parse_original
from worker.convert.errors import ConversionError
from worker.convert.files import atomic_folder, read_json
from worker.convert.layout import Link, TextSpec, all_links
from worker.convert.model_info import ModelInfo
from worker.convert.native import expected_native_shapes, import_native
from worker.convert.streaming import Progress, import_job, order_jobs, plan_entries, run_jobs
from worker.convert.tensor_io import CheckpointReader, TensorMeta, dominant_dtype, dtype_name
from worker.convert.tokenizer import build_tokenizer, save_tokenizer

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def detect_format(path: Path) -> str:
    """``"original"`` for an InternVL remote-code folder (``model_type: internvl_chat``), ``"hf"`` for a
    transformers-native one (``model_type: internvl``); :class:`ConversionError` otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"{path}: not a folder")
    if not (path / "config.json").is_file():
        raise ConversionError(f"{path}: no config.json, so this is not a model checkpoint folder")
    model_type = read_json(path / "config.json").get("model_type")
    if model_type == "internvl_chat":
        return "original"
    if model_type == "internvl":
        return "hf"
    raise ConversionError(f"config.json: model_type is {model_type!r}; expected 'internvl_chat' (an original "
                          "InternVL checkpoint) or 'internvl' (a transformers-native -hf one)")



def check_source(reader: CheckpointReader, links: list[Link], text: TextSpec) -> None:
    """Every tensor the config implies is present with its shape, and nothing else is there."""
    expected = {link.original: link.shape for link in links}
    present = set(reader.meta)
    ignorable = {n for n in present if n.endswith("rotary_emb.inv_freq")}
    if text.tied:
        ignorable.add(text.lm_head)
    problems = []
    missing = sorted(set(expected) - present)
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the weights, e.g. {', '.join(missing[:5])}")
    unexpected = sorted(present - set(expected) - ignorable)
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) that config.json does not describe, e.g. "
                        f"{', '.join(unexpected[:5])}")
    for name in sorted(set(expected) & present):
        if reader.meta[name].shape != expected[name]:
            problems.append(f"tensor {name} has shape {list(reader.meta[name].shape)}, but config.json implies "
                            f"{list(expected[name])}")
    if problems:
        raise ConversionError("; ".join(problems[:8]))


def _check_native_plan(config, entries: list[tuple[str, TensorMeta]]) -> None:
    want = expected_native_shapes(config)
    have = {name: meta.shape for name, meta in entries}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or sorted(n for n in want if want[n] != have[n])
        raise ConversionError(f"internal: the converted tensors do not fit the native model ({', '.join(diff[:5])})")


def _generation_config(m: OriginalModel, sep_id: int):
    from transformers import GenerationConfig

    eos = m.llm.get("eos_token_id")
    eos_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    eos_ids += [] if sep_id in eos_ids else [sep_id]
    return GenerationConfig(bos_token_id=m.llm.get("bos_token_id"), eos_token_id=eos_ids,
                            pad_token_id=m.llm.get("pad_token_id"))


def _import_original(src: Path, out: Path, progress: Progress | None, max_shard_bytes: int) -> ModelInfo:
    m = parse_original(read_json(src / "config.json"))
    reader = CheckpointReader(src)
    links = all_links(m.vision, m.scale, m.text)
    check_source(reader, links, m.text)
    m = dataclasses.replace(m, dtype=dtype_name(dominant_dtype([reader.meta[lk.original] for lk in links])))
    template = TEMPLATES[m.template]
    tokenizer = build_tokenizer(src, m.text.family, template)
    image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    sep_id = tokenizer.convert_tokens_to_ids(template.sep.strip())
    for token, idx in ((IMG_CONTEXT, image_token_id), (template.sep.strip(), sep_id)):
        if idx is None or idx == tokenizer.unk_token_id or idx >= m.text.vocab:
            raise ConversionError(f"tokenizer: {token} has id {idx}, which the model's vocabulary "
                                  f"({m.text.vocab}) does not hold")
    config = native_config(m, image_token_id)
    jobs = order_jobs(reader, [import_job(link) for link in links])
    _check_native_plan(config, plan_entries(reader, jobs))
    config.save_pretrained(out)
    _generation_config(m, sep_id).save_pretrained(out)
    save_tokenizer(tokenizer, out)
    entries = run_jobs(reader, jobs, out, max_shard_bytes, progress)
    card = read_card(out)  # what is registered is what the converted folder's card says
    return ModelInfo(
        family=m.text.family, text_model_type=get_family(m.text.family).native_type, template=card.template,
        vision_hidden_size=m.vision.hidden, vision_layers=m.vision.layers, text_hidden_size=m.text.hidden,
        text_layers=m.text.layers, vocab_size=m.text.vocab, image_token_id=image_token_id,
        image_size=card.image_size, num_image_token=card.tokens_per_tile, **card.tiling.to_dict(),
        param_count=sum(meta.nbytes // meta.dtype.itemsize for _, meta in entries), dtype=m.dtype,
        source_format="original", source_path=str(src.resolve()), native_path="",
        shapes=shapes_from_config(m.raw).to_dict())


def import_checkpoint(src: Path, dst: Path, progress: Progress | None = None, *,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ModelInfo:
    """Import the checkpoint folder ``src`` into the new folder ``dst`` (transformers-native layout).

    ``progress(done, total, message)`` is called as bytes of weights are written. On any error a
    :class:`ConversionError` is raised and ``dst`` is not created.
    """
    src, dst = Path(src), Path(dst)
    fmt = detect_format(src)
    with atomic_folder(dst) as out:
        if fmt == "original":
            info = _import_original(src, out, progress, max_shard_bytes)
        else:
            info = import_native(src, out, progress)
    return dataclasses.replace(info, native_path=str(dst.resolve()))


