"""vlstudio's training program: one InternVL fine-tune, read top to bottom.

Run by the worker (the exact command is also in the run folder's ``command.txt``)::

    torchrun --nproc_per_node N --master_port P -m worker.training.train --spec RUN/spec.json

It reads only the resolved spec; writes ``metrics.jsonl`` (one JSON object per logging step),
checkpoints under ``RUN/checkpoints`` and the final Hugging Face model under ``RUN/final``.
It never touches the database, Celery or the web stack.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    InternVLForConditionalGeneration,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from backend.core.spec import TrainingSpec
from backend.core.templates import get_template
from worker.training.data import Collator, SupervisedDataset

STOP_REQUESTED = False


def _on_sigterm(signum, frame):  # noqa: ARG001
    # Cooperative cancel: finish the step, save a checkpoint, exit. The worker escalates to
    # SIGKILL of the process group only after a grace period.
    global STOP_REQUESTED
    STOP_REQUESTED = True


def log(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(msg, flush=True)


# ----------------------------------------------------------------------------------------- setup
def deepspeed_config(spec: TrainingSpec, bf16: bool) -> dict:
    h = spec.hyper
    zero: dict = {"stage": h.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if h.zero_stage in (1, 2):
        bucket = 1e9 if h.zero_stage == 1 else 1e8
        zero.update(allgather_bucket_size=bucket, reduce_bucket_size=bucket, allgather_partitions=True,
                    reduce_scatter=True)
    if h.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_prefetch_bucket_size="auto",
                    stage3_param_persistence_threshold="auto", reduce_bucket_size="auto",
                    sub_group_size=1e9, stage3_max_live_parameters=1e9, stage3_max_reuse_distance=1e9)
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": [0.9, 0.999], "eps": 1e-8,
                                                    "weight_decay": "auto"}},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class InternVLTrainer(Trainer):
    """Merges image features into the text embeddings with ``image_flags`` (the reference's
    approach), so a dummy tile keeps the vision tower in every rank's graph."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        flags = inputs.pop("image_flags")
        pixel_values = inputs.pop("pixel_values")
        input_ids = inputs["input_ids"]
        core = model.module.model if hasattr(model, "module") else model.model
        embeds = core.get_input_embeddings()(input_ids)
        feats = core.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        real = feats[flags == 1].reshape(-1, feats.shape[-1]).to(embeds.dtype)
        mask = input_ids == core.config.image_token_id
        if int(mask.sum()) != real.shape[0]:
            raise ValueError(f"{int(mask.sum())} image tokens but {real.shape[0]} image features")
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), real)
        # Zero-weighted dummy features keep the vision parameters in the graph.
        embeds = embeds + 0.0 * feats[flags == 0].sum().to(embeds.dtype)
        outputs = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=inputs["labels"],
                        num_items_in_batch=num_items_in_batch)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


class StreamCallback(TrainerCallback):
    """Writes one JSON line per logging step to metrics.jsonl and a readable log line."""

    def __init__(self, metrics_path: Path, tokens_per_sample: float) -> None:
        self.path = metrics_path
        self.t0 = time.monotonic()
        self.last_t = self.t0
        self.last_step = 0
        self.tokens_per_sample = tokens_per_sample

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        now = time.monotonic()
        dt = max(now - self.last_t, 1e-9)
        steps = max(state.global_step - self.last_step, 1)
        samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        sps = samples_per_step * steps / dt
        eta = (state.max_steps - state.global_step) * dt / steps
        row = {
            "step": state.global_step, "total_steps": state.max_steps, "loss": logs.get("loss"),
            "grad_norm": logs.get("grad_norm"), "learning_rate": logs.get("learning_rate"),
            "epoch": logs.get("epoch"), "samples_per_second": sps,
            "tokens_per_second": sps * self.tokens_per_sample, "eta_seconds": eta, "time": time.time(),
        }
        if torch.cuda.is_available():
            row["gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"step {state.global_step}/{state.max_steps} | loss {logs.get('loss'):.4f} | "
              f"lr {logs.get('learning_rate', 0):.3e} | grad_norm {logs.get('grad_norm') or 0:.3f} | "
              f"{dt / steps:.2f} s/it | ETA {eta:.0f}s", flush=True)
        self.last_t, self.last_step = now, state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if STOP_REQUESTED:
            control.should_save = True
            control.should_training_stop = True


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    spec = TrainingSpec.read(args.spec)
    h = spec.hyper
    out = Path(spec.output_dir)
    use_gpu = h.gpus > 0 and torch.cuda.is_available()
    if h.gpus > 0 and not use_gpu:
        raise SystemExit("the job asks for GPUs but CUDA is not available on this node")
    bf16 = use_gpu and torch.cuda.is_bf16_supported()

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    template = get_template(spec.template)
    dataset = SupervisedDataset(
        Path(spec.meta_path), tokenizer, template, max_seq_length=h.max_seq_length,
        max_dynamic_patch=h.max_dynamic_patch, min_dynamic_patch=h.min_dynamic_patch,
        use_thumbnail=h.use_thumbnail, dynamic_image_size=h.dynamic_image_size, seed=h.seed)
    for name, n in dataset.lengths.items():
        log(f"dataset {name}: {n} samples")
    log(f"tiling: max_dynamic_patch={h.max_dynamic_patch} min_dynamic_patch={h.min_dynamic_patch} "
        f"use_thumbnail={h.use_thumbnail}; 256 image tokens per tile; template {template.name}")

    dtype = torch.bfloat16 if bf16 else torch.float32
    model = InternVLForConditionalGeneration.from_pretrained(spec.model_path, dtype=dtype)
    if h.freeze_backbone:
        model.model.vision_tower.requires_grad_(False)
    if h.freeze_mlp:
        model.model.multi_modal_projector.requires_grad_(False)
    if h.freeze_llm:
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"parameters: {trainable:,} trainable of {total:,}")

    targs = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=h.per_device_batch_size,
        gradient_accumulation_steps=h.gradient_accumulation_steps,
        learning_rate=h.learning_rate, weight_decay=h.weight_decay, warmup_steps=h.warmup_ratio,
        lr_scheduler_type=h.lr_scheduler_type, num_train_epochs=h.num_train_epochs, max_steps=h.max_steps,
        logging_steps=h.logging_steps, save_strategy="steps" if h.save_steps else "no",
        save_steps=h.save_steps or 500, save_total_limit=h.save_total_limit, seed=h.seed, data_seed=h.seed,
        bf16=bf16, use_cpu=not use_gpu, deepspeed=deepspeed_config(spec, bf16) if h.zero_stage else None,
        gradient_checkpointing=h.grad_checkpoint, remove_unused_columns=False, report_to=[],
        disable_tqdm=True, dataloader_num_workers=0, save_only_model=False, ddp_backend=None if use_gpu else "gloo",
    )
    tokens_per_sample = sum(dataset.token_length(i) for i in range(min(len(dataset), 64))) / max(
        1, min(len(dataset), 64))
    trainer = InternVLTrainer(
        model=model, args=targs, train_dataset=dataset, data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[StreamCallback(out / "metrics.jsonl", tokens_per_sample)])
    log(f"training: {len(dataset)} samples, world size {targs.world_size}, "
        f"global batch {h.per_device_batch_size * targs.world_size * h.gradient_accumulation_steps}")
    trainer.train(resume_from_checkpoint=spec.resume_from_checkpoint)

    if STOP_REQUESTED:
        log("stopped on request; checkpoint saved")
        return 143
    final = out / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(final)
        model.generation_config.save_pretrained(final)
        log(f"saved final model to {final}")
    return 0


if __name__ == "__main__":
    code = main()
    # Under torchrun a clean exit lets the agent collect every rank.
    sys.exit(code if not math.isnan(code) else 1)
