"""The training-job spec: the single source of truth for a run.

``TrainingSpec`` is validated at the API (every problem listed at once, each under its field),
written resolved into the run folder as ``spec.json``, re-read by the training program and
rendered by the UI. Defaults live here and in :mod:`backend.core.presets`; nothing else
repeats them. The switches are the reference recipe's (``internvl_chat_finetune.py``), with
the same names where the reference has one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from backend.core.fields import MAX_SEQ_LENGTH, MIN_SEQ_LENGTH, Tiles
from backend.core.model_card import DEFAULT_TILING, Tiling
from backend.core.templates import TEMPLATES, TOKENIZER_TEMPLATE
from backend.core.tiling import DOWNSAMPLE_RATIO, PATCH_SIZE

#: image tokens per tile at 448 px; the problem check below scales it for force_image_size
TOKENS_PER_TILE_448 = 256
#: Bounds of what a real run could use (issue 18): beyond them a request is refused with a 422
#: naming the field, instead of overflowing a column or a seed, or asking for a worker that
#: cannot exist. MAX_STEPS keeps every step count inside a 32-bit column.
MAX_STEPS = 10_000_000
MAX_SEED = 2**32 - 1  # numpy's and CUDA's seeds


class Hyperparameters(BaseModel):
    """What a user may set for a run. The tiling fields left empty are the model's own: a job
    records them resolved against the model's card (:meth:`with_tiling`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # --- schedule
    max_steps: int = Field(-1, le=MAX_STEPS, description="stop after this many optimizer steps (-1: train for "
                           "num_train_epochs)")
    num_train_epochs: float = Field(1.0, gt=0, le=1000, description="passes over the data (used when max_steps is -1)")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="peak learning rate (the seed: 4e-5)")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay (the seed: 0.01 for 2B, 0.05 for 4B)")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of the steps spent warming up linearly")
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule after the warmup")
    max_grad_norm: float = Field(1.0, gt=0, le=1e4, description="gradient clipping threshold")
    # --- batch and processes
    per_device_batch_size: int = Field(2, ge=1, le=1024, description="samples per process per forward pass")
    global_batch_size: int | None = Field(
        None, ge=1, le=1 << 20, description="samples per optimizer step over all processes; kept when the process count "
        "changes, gradient accumulation is derived (empty: no accumulation)")
    nproc_per_node: int = Field(1, ge=1, le=64, description="training processes per node (GPUs, or CPU ranks)")
    nnodes: int = Field(1, ge=1, le=128, description="nodes (more than one needs the Slurm backend)")
    gpus: int = Field(0, ge=0, le=64, description="GPUs per node; 0 trains on the CPU (fp32)")
    zero_stage: Literal[0, 1, 2, 3] = Field(1, description="DeepSpeed ZeRO stage (0: plain DDP)")
    offload: Literal["none", "optimizer", "optimizer+parameters"] = Field(
        "none", description="DeepSpeed CPU offload: optimizer states (ZeRO 1-3), or also parameters (ZeRO-3)")
    optimizer: Literal["adamw_torch", "adamw_deepspeed"] = Field(
        "adamw_torch", description="AdamW (0.9, 0.999, 1e-8). adamw_torch: torch's fused kernel, nothing to compile "
        "(with CPU offload torch's CPU AdamW, slower than DeepSpeed's); adamw_deepspeed: DeepSpeed's FusedAdam (GPU) "
        "or cpu_adam (offload), which each node JIT-compiles at its first run (needs nvcc, ninja and the Python "
        "headers; minutes)")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "varlen", "flex_attention", "eager"] = Field(
        "auto", description="LLM attention kernel. varlen: torch's own flash kernels over the packed sequences "
        "(no package, GPU); flex_attention: torch FlexAttention with a block-sparse mask per pack (GPU); "
        "flash_attention_2: the flash-attn package (GPU); auto: on GPUs flash_attention_2 where installed, else "
        "varlen, else flex_attention; SDPA on the CPU. The vision tower uses flash_attention_2 with it, else SDPA")
    dataloader_num_workers: int | None = Field(
        None, ge=0, le=64, description="data-loading processes per rank (empty: on GPUs one per core of the "
        "rank's share but one, up to 8; on the CPU 0)")
    # --- data
    max_seq_length: int = Field(4096, ge=MIN_SEQ_LENGTH, le=MAX_SEQ_LENGTH, description="longer samples are truncated (dropped and counted "
                                "when the cut would fall inside an image)")
    # tiling: empty takes the model's own (its model card, backend.core.model_card); a job records
    # the resolved values
    max_dynamic_patch: Tiles | None = Field(None, description="most tiles per image (shared by "
                                          "multi-image samples; empty: the model's)")
    min_dynamic_patch: Tiles | None = Field(None, description="fewest tiles per image (empty: the model's)")
    use_thumbnail: bool | None = Field(None, description="add a whole-image thumbnail tile when an image has several "
                                       "tiles (empty: the model's)")
    dynamic_image_size: bool | None = Field(None, description="dynamic tiling; off: every image is one tile (empty: "
                                            "the model's)")
    force_image_size: int | None = Field(
        None, ge=28, le=1792, description="tile size in pixels (empty: the model's, 448); other sizes interpolate "
        "the vision position embeddings")
    group_by_length: bool = Field(True, description="batch samples of similar length together (less padding)")
    packing: bool = Field(False, description="pack whole samples into sequences of max_seq_length tokens, "
                          "attention never crossing samples; per_device_batch_size then counts packs")
    max_tiles_per_pack: int | None = Field(
        None, ge=1, le=1024, description="with packing: most image tiles in one pack, which bounds the vision "
        "tower's memory (empty: as many as fit in max_seq_length)")
    # --- what trains
    freeze_backbone: bool = Field(False, description="freeze the vision tower (InternViT)")
    freeze_mlp: bool = Field(False, description="freeze the vision-to-language projector (mlp1)")
    freeze_llm: bool = Field(False, description="freeze the language model (and its output head)")
    unfreeze_vit_layers: int = Field(0, ge=-256, le=256, description="with freeze_backbone: train the ViT layers "
                                     "from this slice start on, as the reference (-2: the last two; 20: layer 20 and "
                                     "later; 0: none)")
    unfreeze_lm_head: bool = Field(False, description="with freeze_llm: train the output head anyway")
    use_backbone_lora: int = Field(0, ge=0, le=512, description="LoRA rank on the vision tower (0: off)")
    use_llm_lora: int = Field(0, ge=0, le=512, description="LoRA rank on the language model (0: off)")
    lora_alpha: int | None = Field(None, ge=1, le=1 << 16, description="LoRA alpha (empty: 2 x rank, as the reference)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA path")
    merge_lora: bool = Field(False, description="LoRA runs: also save the model with the adapter merged in")
    vision_select_layer: int = Field(-1, ge=-256, le=256, description="ViT layer whose output feeds the projector (-1: the last)")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth in the ViT, rising linearly to "
                                  "this rate over the layers")
    loss_reduction: Literal["token", "micro_batch_mean", "sample", "square"] = Field(
        "token", description="how token losses make the step loss: token (mean over the step's trained tokens), "
        "micro_batch_mean (the V1.5 recipe: token mean per micro-batch, averaged), sample or square (InternVL 2.5: "
        "each sample weighted 1/n or 1/sqrt(n) of its n trained tokens); see docs/training.md")
    grad_checkpoint: bool = Field(False, description="recompute activations in the backward pass (less memory)")
    grad_checkpoint_vision: bool | None = Field(
        None, description="gradient checkpointing in the vision tower (empty: as grad_checkpoint)")
    grad_checkpoint_llm: bool | None = Field(
        None, description="gradient checkpointing in the language model (empty: as grad_checkpoint)")
    # --- fused kernels (speed)
    liger_kernels: bool = Field(False, description="Liger Triton kernels in the language model: RMSNorm, RoPE, "
                                "SwiGLU (GPU only; needs the liger-kernel package)")
    fused_cross_entropy: bool = Field(False, description="Liger fused linear cross-entropy: the loss without "
                                      "materialising the logits (GPU only; needs the liger-kernel package)")
    torch_compile: bool = Field(False, description="torch.compile the language model (dynamic shapes)")
    # --- bookkeeping
    logging_steps: int = Field(1, ge=1, le=MAX_STEPS, description="write a metrics row every N optimizer steps")
    eval_steps: int = Field(0, ge=0, le=MAX_STEPS, description="loss on the dataset's validation split every N steps (0: never)")
    save_steps: int = Field(0, ge=0, le=MAX_STEPS, description="save a checkpoint every N steps (0: only the final model)")
    save_total_limit: int = Field(2, ge=1, le=1000, description="checkpoints kept (older ones are deleted)")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="seed of the data order, initialisation of new weights and dropout")
    report_to: Literal["none", "tensorboard"] = Field(
        "none", description="also write TensorBoard event files under the run folder's tensorboard/")
    template: str | None = Field(
        None, description="conversation template; empty: the model's. 'tokenizer' uses the tokenizer's own chat "
        "template (transformers -hf checkpoints)")

    @model_validator(mode="after")
    def _check_combination(self) -> Hyperparameters:
        problems = combination_problems(self)
        if problems:
            raise ValidationError.from_exception_data("Hyperparameters", [
                InitErrorDetails(type=PydanticCustomError("invalid_combination", msg.replace("{", "(")),
                                 loc=(field,), input=getattr(self, field)) for field, msg in problems])
        return self

    # ------------------------------------------------------------------------ derived values
    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def gradient_accumulation_steps(self) -> int:
        if self.global_batch_size is None:
            return 1
        return max(1, self.global_batch_size // (self.per_device_batch_size * self.world_size))

    @property
    def effective_global_batch_size(self) -> int:
        return self.per_device_batch_size * self.world_size * self.gradient_accumulation_steps

    @property
    def uses_lora(self) -> bool:
        return bool(self.use_backbone_lora or self.use_llm_lora)

    @property
    def tiling(self) -> Tiling:
        """The run's tiling (what is left empty: :data:`DEFAULT_TILING`'s; resolve against the model's
        card first with :meth:`with_tiling`)."""
        return DEFAULT_TILING.updated(self)

    @property
    def tiling_resolved(self) -> bool:
        return all(getattr(self, k) is not None for k in Tiling.KEYS)

    def with_tiling(self, base: Tiling) -> Hyperparameters:
        """The empty tiling fields filled from ``base`` (a model card's tiling), checked again."""
        if self.tiling_resolved:
            return self
        return Hyperparameters(**fill_tiling(self.model_dump(), base))

    def derived(self) -> dict[str, Any]:
        """The numbers the UI and API show next to the settings."""
        return {"world_size": self.world_size, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "effective_global_batch_size": self.effective_global_batch_size,
                "precision": "bf16" if self.gpus else "fp32",
                "tokens_per_tile": tokens_per_tile_for(self.force_image_size)}


def fill_tiling(values: dict[str, Any], base: Tiling | None) -> dict[str, Any]:
    """``values`` (hyperparameters as a dict) with the tiling keys they leave empty taken from
    ``base`` (the model card's tiling; None: left empty)."""
    if base is None:
        return dict(values)
    return {**values, **{k: v for k, v in base.to_dict().items() if values.get(k) is None}}


def tokens_per_tile_for(force_image_size: int | None) -> int:
    size = force_image_size or 448
    return int((size // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)


def combination_problems(h: Hyperparameters) -> list[tuple[str, str]]:
    """Every invalid combination of ``h`` as (field, message); empty when it is consistent."""
    p: list[tuple[str, str]] = []
    t = h.tiling  # the tile-budget checks wait for a known max_dynamic_patch (the model's, at submission)
    if h.min_dynamic_patch is not None and h.max_dynamic_patch is not None and h.min_dynamic_patch > h.max_dynamic_patch:
        p.append(("min_dynamic_patch", "min_dynamic_patch must not exceed max_dynamic_patch"))
    if h.max_steps == 0 or h.max_steps < -1:
        p.append(("max_steps", "max_steps must be positive, or -1 to train by epochs"))
    if h.gpus and h.gpus != h.nproc_per_node:
        p.append(("nproc_per_node", "with GPUs, nproc_per_node must equal gpus (one process per GPU)"))
    per_step = h.per_device_batch_size * h.world_size
    if h.global_batch_size is not None and h.global_batch_size % per_step:
        p.append(("global_batch_size", f"global_batch_size {h.global_batch_size} must be a multiple of "
                  f"per_device_batch_size x nproc_per_node x nnodes = {per_step}"))
    _what_trains(h, p)
    if h.optimizer == "adamw_deepspeed" and h.zero_stage == 0:
        p.append(("optimizer", "adamw_deepspeed is DeepSpeed's optimizer: it needs zero_stage 1, 2 or 3"))
    if h.offload != "none" and h.zero_stage == 0:
        p.append(("offload", "CPU offload needs DeepSpeed ZeRO (zero_stage 1, 2 or 3)"))
    if h.offload == "optimizer+parameters" and h.zero_stage != 3:
        p.append(("offload", "parameter offload needs zero_stage 3"))
    if h.attn_implementation in ("flash_attention_2", "varlen", "flex_attention") and not h.gpus:
        why = "its backward runs on CUDA only" if h.attn_implementation == "flex_attention" else "a CUDA kernel"
        p.append(("attn_implementation", f"{h.attn_implementation} needs GPUs ({why}); this job trains on the CPU "
                  "(gpus 0): use auto or sdpa"))
    _speed_options(h, p)
    if h.force_image_size is not None and h.force_image_size % (2 * PATCH_SIZE):
        p.append(("force_image_size", f"force_image_size must be a multiple of {2 * PATCH_SIZE} "
                  "(14 px patches, pixel shuffle 0.5)"))
    if h.vision_select_layer == 0:
        p.append(("vision_select_layer", "vision_select_layer 0 is the patch embedding, not a ViT layer"))
    image_tokens = t.tiles_per_image * tokens_per_tile_for(h.force_image_size) + 2
    if h.max_dynamic_patch is not None and t.dynamic_image_size and image_tokens >= h.max_seq_length:
        p.append(("max_seq_length", f"one image at max_dynamic_patch {t.max_dynamic_patch} takes {image_tokens} "
                  f"tokens, not less than max_seq_length {h.max_seq_length}: such samples would all be dropped"))
    if h.template is not None and h.template not in TEMPLATES and h.template != TOKENIZER_TEMPLATE:
        p.append(("template", f"unknown template {h.template!r}; known: "
                  f"{', '.join([*sorted(TEMPLATES), TOKENIZER_TEMPLATE])}"))
    return p


def spec_problems(values: dict[str, Any]) -> list[dict[str, str]]:
    """Every problem of ``values`` at once, as ``{field, message}``.

    pydantic stops before the combination checks when any field is invalid, so a user would see
    the combination problems only after fixing the fields; here they are checked too, with the
    valid fields as given (the invalid ones left at their defaults, and their combinations not
    reported)."""
    try:
        Hyperparameters(**values)
        return []
    except ValidationError as e:
        errors = e.errors()
    out = [{"field": ".".join(str(x) for x in err["loc"]) or "hyperparameters", "message": err["msg"]}
           for err in errors]
    if any(err["type"] == "invalid_combination" for err in errors):
        return out  # the fields were valid: this is already everything
    bad = {str(err["loc"][0]) for err in errors if err["loc"]}
    try:
        Hyperparameters(**{k: v for k, v in values.items() if k not in bad})
    except ValidationError as e:
        out += [{"field": str(err["loc"][0]), "message": err["msg"]} for err in e.errors()
                if err["type"] == "invalid_combination" and err["loc"] and str(err["loc"][0]) not in bad]
    return out


def _speed_options(h: Hyperparameters, p: list[tuple[str, str]]) -> None:
    for field in ("liger_kernels", "fused_cross_entropy"):
        if getattr(h, field) and not h.gpus:
            p.append((field, f"{field} runs Triton kernels that need GPUs; this job trains on the CPU (gpus 0)"))
    if h.fused_cross_entropy and h.zero_stage == 3:
        p.append(("fused_cross_entropy", "fused_cross_entropy reads the output head's weight directly, which "
                  "ZeRO-3 partitions: use zero_stage 1 or 2"))
    if h.max_tiles_per_pack is not None and not h.packing:
        p.append(("max_tiles_per_pack", "max_tiles_per_pack only applies with packing"))
    t = h.tiling  # checked once the tile budget is known (the model's, filled in at submission)
    if (h.packing and h.max_tiles_per_pack is not None and h.max_dynamic_patch is not None
            and h.max_tiles_per_pack < t.tiles_per_image):
        p.append(("max_tiles_per_pack", f"max_tiles_per_pack {h.max_tiles_per_pack} is less than the "
                  f"{t.tiles_per_image} tiles of one image at max_dynamic_patch {t.max_dynamic_patch}"))


def max_tiles_per_pack(h: Hyperparameters, tokens_per_tile: int | None = None) -> int:
    """The tile budget of a pack: the setting, or as many tiles as max_seq_length holds
    (``tokens_per_tile``: the model's, where known)."""
    per_tile = tokens_per_tile or tokens_per_tile_for(h.force_image_size)
    return h.max_tiles_per_pack or max(1, h.max_seq_length // per_tile)


def _what_trains(h: Hyperparameters, p: list[tuple[str, str]]) -> None:
    if h.unfreeze_vit_layers and not h.freeze_backbone:
        p.append(("unfreeze_vit_layers", "unfreeze_vit_layers only applies with freeze_backbone"))
    if h.unfreeze_lm_head and not h.freeze_llm:
        p.append(("unfreeze_lm_head", "unfreeze_lm_head only applies with freeze_llm"))
    if h.use_llm_lora and not h.freeze_llm:
        p.append(("use_llm_lora", "LLM LoRA trains an adapter on a frozen LLM: set freeze_llm"))
    if h.use_backbone_lora and not h.freeze_backbone:
        p.append(("use_backbone_lora", "backbone LoRA trains an adapter on a frozen ViT: set freeze_backbone"))
    if h.use_backbone_lora and h.unfreeze_vit_layers:
        p.append(("unfreeze_vit_layers", "unfreeze_vit_layers and use_backbone_lora both change the ViT: pick one"))
    if h.merge_lora and not h.uses_lora:
        p.append(("merge_lora", "merge_lora needs use_llm_lora or use_backbone_lora"))
    if (h.lora_alpha is not None) and not h.uses_lora:
        p.append(("lora_alpha", "lora_alpha needs use_llm_lora or use_backbone_lora"))
    trains_something = (not h.freeze_backbone or h.unfreeze_vit_layers or h.use_backbone_lora or not h.freeze_mlp
                        or not h.freeze_llm or h.unfreeze_lm_head or h.use_llm_lora)
    if not trains_something:
        p.append(("freeze_llm", "everything is frozen and no LoRA is set: nothing would train"))


class DatasetEntry(BaseModel):
    """One entry of the meta file, in the seed's format."""

    model_config = ConfigDict(extra="allow")

    root: str
    annotation: str
    data_augment: bool = False
    repeat_time: float = 1
    length: int = 0
    max_dynamic_patch: int | None = None


class TrainingSpec(BaseModel):
    """Everything the training program needs, resolved to absolute paths."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    model_path: str
    template: str
    meta_path: str
    output_dir: str
    hyper: Hyperparameters
    eval_meta_path: str | None = Field(None, description="meta file of the validation split (eval loss)")
    resume_from_checkpoint: str | None = Field(
        None, description="a checkpoint folder, or 'latest' for the newest under output_dir/checkpoints")

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2))

    @classmethod
    def read(cls, path: Path) -> TrainingSpec:
        return cls.model_validate_json(path.read_text())


#: Set (to "1") in the environment of every program a worker launches for a job or an evaluation.
#: The trainer writes into the job's run folder only then (a rerun of command.txt by hand writes to
#: a fresh RUN/rerun-N), and the worker's reaper ends only such processes, never a user's own rerun.
WORKER_RUN_ENV = "VLSTUDIO_WORKER_RUN"
