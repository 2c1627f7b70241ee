"""Generation with exactly the training pipeline: the same template rendering, the same
``<image>`` expansion and token ids (``backend.core.samples.tokenize_sample``), the same
dynamic tiling and pixel transform (``worker.training.data``).

The prompt of a conversation whose last turn is from the user is the token ids that training
would put before the first trained token of an (empty) assistant reply: by construction the
model sees at generation time what it saw before every answer in training.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from backend.core.chat_prompt import prompt_ids
from backend.core.model_card import Tiling, read_card
from backend.core.model_folder import ModelFolderError
from backend.core.samples import SampleError
from backend.core.templates import Template
from backend.core.tiling import IMAGE_SIZE, max_patches_per_image
from worker.evaluation.readable import readable_text
from worker.training.data import tile_image, to_tensor

__all__ = ["Generator", "Prompt", "Tiling", "build_prompt", "collate_left", "stop_token_ids"]


@dataclass
class Prompt:
    input_ids: list[int]
    pixel_values: torch.Tensor  # [tiles, 3, 448, 448]


def build_prompt(conversations: list[dict], images: Sequence[Image.Image], template: Template, tokenizer,
                 tiling: Tiling, tokens_per_tile: int = 256, image_size: int = IMAGE_SIZE) -> Prompt:
    """Token ids and tiles for a conversation ending with a user turn (``from: human``): the ids
    are :func:`backend.core.chat_prompt.prompt_ids`, what the API bounds a chat by."""
    if not conversations or conversations[-1].get("from") != "human":
        raise SampleError("the conversation must end with a user turn to generate a reply")
    per_image = max_patches_per_image(tiling.max_dynamic_patch, len(images))
    tiles: list[Image.Image] = []
    counts: list[int] = []
    for img in images:
        t = tile_image(img.convert("RGB"), max_num=per_image, min_num=tiling.min_dynamic_patch,
                       use_thumbnail=tiling.use_thumbnail, dynamic=tiling.dynamic_image_size, size=image_size)
        tiles += t
        counts.append(len(t))
    ids = prompt_ids(conversations, counts, template, tokenizer, tokens_per_tile)
    pixel_values = (torch.stack([to_tensor(t, image_size) for t in tiles]) if tiles
                    else torch.zeros(0, 3, image_size, image_size))
    return Prompt(ids, pixel_values)


def stop_token_ids(template: Template, tokenizer) -> list[int]:
    ids = {tokenizer.convert_tokens_to_ids(s) for s in template.stop_strings}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def collate_left(prompts: Sequence[Prompt], pad_id: int) -> dict:
    """Left-pad so every prompt ends at the same position (generation continues from there)."""
    n = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for i, p in enumerate(prompts):
        k = len(p.input_ids)
        ids[i, n - k:] = torch.tensor(p.input_ids)
        mask[i, n - k:] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    tiles = [p.pixel_values for p in prompts if len(p.pixel_values)]
    if tiles:
        batch["pixel_values"] = torch.cat(tiles)
    return batch


def model_dtype(device: str) -> torch.dtype:
    """bf16 on a CUDA device that has it (``cuda`` or ``cuda:N``, as the model server passes a
    leased GPU), fp32 elsewhere."""
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def release_device_memory(device: str | None) -> None:
    """Give the memory of dropped models back to the GPU: PyTorch's allocator keeps freed blocks
    cached for this process, where the next job on the GPU (another process) cannot get them."""
    import gc

    gc.collect()
    if device is None or torch.device(device).type != "cuda":
        return
    with torch.cuda.device(torch.device(device)):
        torch.cuda.empty_cache()


class Generator:
    """A loaded model with its tokenizer, and the template and tiling of its card (``template``
    and ``tiling`` override them); greedy by default."""

    def __init__(self, model_path: Path, template: str | None = None, tiling: Tiling | None = None,
                 device: str | None = None) -> None:
        from transformers import AutoTokenizer, InternVLForConditionalGeneration

        self.path = Path(model_path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = model_dtype(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = InternVLForConditionalGeneration.from_pretrained(self.path, dtype=dtype).to(self.device)
        self.model.eval()
        try:
            self.card = read_card(self.path)
            self.template: Template = self.card.conversation_template(template)
        except ModelFolderError as e:
            raise SampleError(str(e)) from None
        self.image_size, self.tokens_per_tile = self.card.image_size, self.card.tokens_per_tile
        self.tiling: Tiling = tiling or self.card.tiling
        self.stop_ids = stop_token_ids(self.template, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        # One generation at a time per loaded model (the playground may get concurrent requests).
        self.lock = threading.Lock()

    def prompt(self, conversations: list[dict], images: Sequence[Image.Image]) -> Prompt:
        return build_prompt(conversations, images, self.template, self.tokenizer, self.tiling,
                            self.tokens_per_tile, self.image_size)

    def _kwargs(self, max_new_tokens: int, temperature: float, min_new_tokens: int = 0) -> dict:
        kw: dict = {"max_new_tokens": max_new_tokens, "eos_token_id": self.stop_ids, "pad_token_id": self.pad_id}
        if min_new_tokens:
            kw["min_new_tokens"] = min_new_tokens
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        for k, t in enumerate(ids):
            if t in self.stop_ids:
                ids = ids[:k]
                break
        return readable_text(self.tokenizer, ids).strip()  # stray bytes as <0xNN>, not the tokenizer's �

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 32, temperature: float = 0.0,
                 min_new_tokens: int = 0) -> list[str]:
        batch = {k: v.to(self.device) for k, v in collate_left(prompts, self.pad_id).items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        with self.lock:
            out = self.model.generate(**batch, **self._kwargs(max_new_tokens, temperature, min_new_tokens))
        n = batch["input_ids"].shape[1]
        return [self.decode(row[n:].tolist()) for row in out]

    def stream(self, prompt: Prompt, max_new_tokens: int = 256, temperature: float = 0.0) -> Iterator[str]:
        """Yield text pieces as tokens are generated (one request at a time per model)."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        batch = {k: v.to(self.device) for k, v in collate_left([prompt], self.pad_id).items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with self.lock, torch.inference_mode():
                    self.model.generate(**batch, **self._kwargs(max_new_tokens, temperature), streamer=streamer)
            except BaseException as e:  # re-raised in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from (piece for piece in streamer if piece)
        thread.join()
        if errors:
            raise errors[0]
