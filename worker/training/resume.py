"""Reading a checkpoint's weights back into the model that resumes from it, exactly.

A checkpoint folder holds the weights the way they were written: the full model through
``save_pretrained`` (which writes Hugging Face's *original* key layout, e.g.
``language_model.model.layers.0...``, not the module names ``model.language_model.layers.0...``),
or, for a LoRA run, the adapter and the modules trained beside it through peft. They are read
back through the same mapping: the model's own conversion, reverted key by key, names the key each
tensor was written under; peft's state dict names an adapter's.

A checkpoint that does not fit the model (a tensor missing, one too many, another shape) is an
error that lists what differs, checked before training starts (:func:`problems`) and again when
the weights are read (:func:`load_weights`): never a warning after which training would go on
from weights that were never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SAFE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
ADAPTER = "adapter_model.safetensors"


class CheckpointMismatch(ValueError):
    """The checkpoint's weights do not fit the model: ``problems`` says how."""

    def __init__(self, folder: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"checkpoint {folder} does not fit the model: " + "; ".join(problems))


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def written_names(model) -> dict[str, str]:
    """Each tensor of ``model.state_dict()`` -> the key ``save_pretrained`` writes it under: the
    model's weight conversion reverted (transformers' own ``revert_weight_conversion``, the call
    saving makes), one key at a time. Tied copies (written once, under their source) are left out."""
    from transformers.core_model_loading import revert_weight_conversion

    tied = set(model.get_expanded_tied_weights_keys() or {})
    out = {}
    for key, tensor in model.state_dict().items():
        if key in tied:
            continue
        written = list(revert_weight_conversion(model, {key: tensor}))
        if len(written) != 1:  # a fused/split converter: not one-to-one, never the case for InternVL
            raise CheckpointMismatch(Path("."), [f"{key} is saved as {len(written)} tensors ({written}); "
                                                 "this model's layout cannot be read back key by key"])
        out[key] = written[0]
    return out


def _weight_files(folder: Path) -> list[Path]:
    if (folder / SAFE).is_file():
        return [folder / SAFE]
    if (folder / SAFE_INDEX).is_file():
        shards = sorted(set(json.loads((folder / SAFE_INDEX).read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    return []


def _saved_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes


def _expected(model) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """What the checkpoint must hold: written key -> shape, written key -> model key."""
    if is_peft(model):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
        return {k: tuple(v.shape) for k, v in state.items()}, {k: k for k in state}
    state = model.state_dict()
    names = written_names(model)
    return {w: tuple(state[k].shape) for k, w in names.items()}, {w: k for k, w in names.items()}


def problems(model, folder: Path) -> list[str]:
    """What keeps the checkpoint ``folder`` from loading into ``model`` exactly (empty: it fits)."""
    if is_peft(model):
        files = [folder / ADAPTER] if (folder / ADAPTER).is_file() else []
        if not files:
            kind = "a full model (model.safetensors)" if _weight_files(folder) else "no weights"
            return [f"the run trains a LoRA adapter but the checkpoint holds {kind}, not {ADAPTER}"]
    else:
        files = _weight_files(folder)
        if not files:
            kind = f"a LoRA adapter ({ADAPTER})" if (folder / ADAPTER).is_file() else "no weights"
            return [f"the run trains the full model but the checkpoint holds {kind}, not {SAFE}"]
    expected, _ = _expected(model)
    saved = _saved_shapes(files)
    out = []
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing:
        out.append(f"{len(missing)} of the model's tensors are not in it (first: {', '.join(missing[:3])})")
    if extra:
        out.append(f"{len(extra)} of its tensors are not the model's (first: {', '.join(extra[:3])})")
    shaped = [f"{k} {list(saved[k])} where the model has {list(expected[k])}"
              for k in sorted(set(saved) & set(expected)) if saved[k] != expected[k]]
    if shaped:
        out.append(f"{len(shaped)} tensors have another shape (first: {'; '.join(shaped[:3])})")
    return out


def load_weights(model, folder: Path) -> int:
    """Read the checkpoint's weights into ``model`` through the mapping they were written with;
    :class:`CheckpointMismatch` unless every tensor fits. Returns the number of tensors read."""
    from safetensors.torch import load_file

    found = problems(model, folder)
    if found:
        raise CheckpointMismatch(folder, found)
    if is_peft(model):
        from peft import set_peft_model_state_dict

        saved = load_file(str(folder / ADAPTER), device="cpu")
        result = set_peft_model_state_dict(model, saved)
        if result.unexpected_keys:
            raise CheckpointMismatch(folder, [f"peft did not place {len(result.unexpected_keys)} tensors "
                                              f"(first: {', '.join(result.unexpected_keys[:3])})"])
        return len(saved)
    _, to_model = _expected(model)
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        state.update({to_model[k]: v for k, v in load_file(str(f), device="cpu").items()})
    result = model.load_state_dict(state, strict=False)
    tied = set(model.get_expanded_tied_weights_keys() or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:  # problems() said it fits: this would be a bug of the mapping
        raise CheckpointMismatch(folder, [f"not loaded: {missing[:3]}", f"unexpected: {result.unexpected_keys[:3]}"])
    if tied:
        model.tie_weights()
    return len(state)
