"""Import a folder that is already transformers-native (``model_type: internvl``, the ``-hf``
checkpoints): check it against the model class, fix the tied-embeddings trap, and link or copy it."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch

from backend.core.model_card import ModelCard, read_card
from backend.core.model_folder import ModelFolderError
from backend.core.model_shapes import shapes_from_config
from backend.core.samples import IMG_CONTEXT
from backend.core.templates import TOKENIZER_TEMPLATE
from worker.convert.errors import ConversionError
from worker.convert.files import (
    INDEX_FILES,
    copy_side_files,
    link_or_copy,
    read_json,
    write_json,
)
from worker.convert.layout import disk_name
from worker.convert.model_info import ModelInfo
from worker.convert.streaming import Progress, copy_job, order_jobs, run_jobs
from worker.convert.tensor_io import CheckpointReader, dominant_dtype, dtype_name

EMBED, HEAD = "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"


def expected_native_shapes(config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor ``InternVLForConditionalGeneration`` has for this config (on-disk
    names), from a model built on the meta device (no memory, no weights)."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    shapes = {disk_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("language_model.lm_head.weight", None)
    return shapes


def load_native_config(raw: dict) -> Any:
    from transformers import InternVLConfig

    try:
        return InternVLConfig.from_dict(copy.deepcopy(raw))
    except Exception as e:  # the config classes raise many kinds of errors
        raise ConversionError(f"config.json: not a valid native InternVL config ({e})") from None


def _untie_if_different(reader: CheckpointReader, names: dict[str, str], raw: dict, config: Any) -> None:
    """``InternVLConfig`` ties the embeddings unless told otherwise; a checkpoint that carries its own,
    different ``lm_head`` would silently lose it on load. Write ``tie_word_embeddings: false`` then."""
    if not config.tie_word_embeddings or HEAD not in names:
        return
    with reader.open_file(reader.file_of[names[EMBED]]) as get:
        embed = get(names[EMBED]).clone()
    with reader.open_file(reader.file_of[names[HEAD]]) as get:
        same = torch.equal(embed, get(names[HEAD]))
    if not same:
        raw["tie_word_embeddings"] = False
        raw.setdefault("text_config", {})["tie_word_embeddings"] = False
        config.tie_word_embeddings = False
        config.text_config.tie_word_embeddings = False


def _check_weights(reader: CheckpointReader, names: dict[str, str], config: Any) -> None:
    want = expected_native_shapes(config)
    have = {n: reader.meta[actual].shape for n, actual in names.items()}
    if config.tie_word_embeddings:
        have.pop(HEAD, None)
    problems = []
    missing = sorted(set(want) - set(have))
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the weights, e.g. {', '.join(missing[:5])}")
    extra = sorted(set(have) - set(want))
    if extra:
        problems.append(f"{len(extra)} tensor(s) the native model does not have, e.g. {', '.join(extra[:5])}")
    for n in sorted(set(want) & set(have)):
        if tuple(have[n]) != tuple(want[n]):
            problems.append(f"tensor {n} has shape {list(have[n])}, but config.json implies {list(want[n])}")
    if problems:
        raise ConversionError("; ".join(problems[:8]))


def _check_tokenizer(src: Path, config: Any) -> None:
    from tokenizers import Tokenizer

    if not (src / "tokenizer.json").exists():
        raise ConversionError(f"{src}: a native model folder needs a tokenizer.json")
    try:
        idx = Tokenizer.from_file(str(src / "tokenizer.json")).token_to_id(IMG_CONTEXT)
    except Exception as e:  # tokenizers raises a plain Exception
        raise ConversionError(f"tokenizer.json: cannot load it ({e})") from None
    if idx != config.image_token_id:
        raise ConversionError(f"config.json: image_token_id is {config.image_token_id}, but the tokenizer gives "
                              f"{IMG_CONTEXT} the id {idx}")



def _place_weights(reader: CheckpointReader, names: dict[str, str], out: Path, progress: Progress | None) -> None:
    if reader.is_pickle:
        jobs = order_jobs(reader, [copy_job(actual, n) for n, actual in names.items()])
        run_jobs(reader, jobs, out, 2 * 1024**3, progress)
        return
    total = sum(p.stat().st_size for p in reader.files)
    done = 0
    for path in reader.files:
        link_or_copy(path, out / path.name)
        done += path.stat().st_size
        if progress is not None:
            progress(done, total, path.name)
    index = reader.folder / INDEX_FILES[0]
    if index.exists():
        shutil.copy2(index, out / index.name)


def source_card(src: Path) -> ModelCard:
    """The card of the folder being imported: its template (a folder vlstudio wrote names one; an
    ``-hf`` checkpoint with a chat template renders with it, ``tokenizer``; else its family's
    default) and its tiling (its config's, else its image processor's)."""
    try:
        card = read_card(src)
    except ModelFolderError as e:
        raise ConversionError(str(e)) from None
    if card.template is None:
        raise ConversionError("this model has no chat template and no \"template\" in config.json, and its "
                              "language model is none of vlstudio's families; add \"template\" to config.json")
    return card


def import_native(src: Path, out: Path, progress: Progress | None) -> ModelInfo:
    raw = read_json(src / "config.json")
    config = load_native_config(raw)
    reader = CheckpointReader(src)
    names = {disk_name(n): n for n in reader.meta}
    _untie_if_different(reader, names, raw, config)
    _check_weights(reader, names, config)
    _check_tokenizer(src, config)
    card = source_card(src)
    if card.template != TOKENIZER_TEMPLATE:  # else config.json stays without one: the tokenizer's own is used
        raw["template"] = card.template
    raw.update(**card.tiling.to_dict())
    _place_weights(reader, names, out, progress)
    copy_side_files(src, out, skip={"config.json"}, include_code=False)
    write_json(out / "config.json", raw)
    card = read_card(out)  # what is registered is what the imported folder's card says
    v, t = config.vision_config, config.text_config
    kept = [m for n, m in ((n, reader.meta[a]) for n, a in names.items())
            if not (config.tie_word_embeddings and n == HEAD)]
    return ModelInfo(
        family=card.family or t.model_type, text_model_type=t.model_type, template=card.template,
        vision_hidden_size=v.hidden_size, vision_layers=v.num_hidden_layers, text_hidden_size=t.hidden_size,
        text_layers=t.num_hidden_layers, vocab_size=t.vocab_size, image_token_id=int(config.image_token_id),
        image_size=card.image_size, num_image_token=card.tokens_per_tile, **card.tiling.to_dict(),
        param_count=sum(m.nbytes // m.dtype.itemsize for m in kept), dtype=dtype_name(dominant_dtype(kept)),
        source_format="hf", source_path=str(src.resolve()), native_path="", shapes=shapes_from_config(raw).to_dict())
