"""What the training program reports while it runs, and the cooperative stop.

Batch statistics are counted on every rank by the trainer (``BatchStats``) and summed over
ranks at each logging step, so tokens/s, tiles per batch and the padding ratio describe the
whole job, not rank 0's share of it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from backend.core.checkpoints import rotate, seal

STATS = ("tokens", "padded_tokens", "tiles", "samples", "micro_batches", "text_only_batches", "data_wait_seconds",
         "ranks")


class BatchStats:
    """Per-rank running sums since the last logging step."""

    def __init__(self) -> None:
        self.values = [0.0] * len(STATS)
        self.values[-1] = 1.0

    def add(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_flags: torch.Tensor,
            samples: int | None = None) -> None:
        """One micro-batch; ``samples`` for packed rows (default: one sample per row)."""
        real_tiles = int(image_flags.sum())
        rows = input_ids.shape[0] if samples is None else samples
        for i, v in enumerate((int(attention_mask.sum()), input_ids.numel(), real_tiles, rows, 1,
                               int(real_tiles == 0))):
            self.values[i] += v

    def add_data_wait(self, seconds: float) -> None:
        """Time the training loop spent waiting for the data loader's next batches."""
        self.values[STATS.index("data_wait_seconds")] += seconds

    def collect(self, device: torch.device) -> dict[str, float]:
        """Sum over ranks (a collective: every rank calls it at the same step), then reset."""
        t = torch.tensor(self.values, dtype=torch.float64, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
        self.values = [0.0] * len(STATS)
        self.values[-1] = 1.0
        return dict(zip(STATS, t.tolist(), strict=True))


def stop_everywhere(local_stop: bool, device: torch.device) -> bool:
    """True on every rank when any rank was asked to stop, so all ranks save the same step
    (a rank that saved alone would wait forever in the checkpoint's collectives)."""
    if not (dist.is_available() and dist.is_initialized()):
        return local_stop
    t = torch.tensor([1.0 if local_stop else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def eval_loss_of(logs: dict) -> tuple[str | None, float | None]:
    """``("eval_loss", v)`` for the whole held-out set (a single one, or a mixture's ``overall``),
    ``("eval_loss/NAME", v)`` for one dataset of a mixture (HF prefixes ``eval_NAME_``)."""
    if "eval_loss" in logs:
        return "eval_loss", logs["eval_loss"]
    for k, v in logs.items():
        if k.startswith("eval_") and k.endswith("_loss"):
            name = k[len("eval_"):-len("_loss")]
            return ("eval_loss" if name == "overall" else f"eval_loss/{name}"), v
    return None, None


class MetricsCallback(TrainerCallback):
    """One JSON line per logging step in metrics.jsonl, and a readable ``step N/M | loss`` line."""

    def __init__(self, path: Path, stats: BatchStats, device: torch.device, dropped: dict[str, int],
                 flops: tuple[float, float] = (0.0, 0.0), peak_flops: float = 0.0) -> None:
        self.path = path
        self.stats = stats
        self.device = device
        self.dropped = dropped
        # model FLOPs per LLM token and per real tile (see speed.model_flops)
        self.flops_per_token, self.flops_per_tile = flops
        self.peak_flops = peak_flops  # measured dense matmul FLOP/s of one device
        self.last_t = time.monotonic()
        self.last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_t, self.last_step = time.monotonic(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        key, value = eval_loss_of(logs or {})
        if key:  # issue 8: eval loss on the validation split (issue 17: per dataset of a mixture), its own row
            if state.is_world_process_zero:
                with open(self.path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, "total_steps": state.max_steps,
                                        key: value, "time": time.time()}) + "\n")
                print(f"eval step {state.global_step}/{state.max_steps} | {key} {value:.4f}", flush=True)
            return
        if not logs or "loss" not in logs:
            return
        s = self.stats.collect(self.device)
        if not state.is_world_process_zero:
            return
        now = time.monotonic()
        dt = max(now - self.last_t, 1e-9)
        steps = max(state.global_step - self.last_step, 1)
        eta = (state.max_steps - state.global_step) * dt / steps
        micro = max(s["micro_batches"], 1)
        row = {
            "step": state.global_step, "total_steps": state.max_steps, "loss": logs.get("loss"),
            "grad_norm": logs.get("grad_norm"), "learning_rate": logs.get("learning_rate"),
            "epoch": logs.get("epoch"), "samples_per_second": s["samples"] / dt, "tokens_per_second": s["tokens"] / dt,
            "eta_seconds": eta, "tiles_per_batch": s["tiles"] / micro,
            "padding_ratio": 1 - s["tokens"] / max(s["padded_tokens"], 1),
            # real tokens / token slots fed to the model: 1 - padding_ratio, padded or packed alike
            "packing_efficiency": s["tokens"] / max(s["padded_tokens"], 1),
            "dataloader_wait_fraction": min(1.0, s["data_wait_seconds"] / max(s["ranks"], 1) / dt),
            "text_only_batches": int(s["text_only_batches"]), "dropped_samples": sum(self.dropped.values()),
            "dropped": self.dropped, "time": time.time(),
        }
        if self.peak_flops:
            done = self.flops_per_token * s["tokens"] + self.flops_per_tile * s["tiles"]
            row["mfu"] = done / dt / (self.peak_flops * max(s["ranks"], 1))
        if torch.cuda.is_available():
            row["gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        mem = f" | mem {row['gpu_memory_gib']:.1f} GiB" if "gpu_memory_gib" in row else ""
        mfu = f" | MFU {row['mfu']:.1%}" if "mfu" in row else ""
        print(f"step {state.global_step}/{state.max_steps} | loss {logs['loss']:.4f} | "
              f"lr {logs.get('learning_rate') or 0:.3e} | grad_norm {logs.get('grad_norm') or 0:.3f} | "
              f"{dt / steps:.2f} s/it | {row['tokens_per_second']:.0f} tok/s | "
              f"tiles/batch {row['tiles_per_batch']:.1f} | pad {row['padding_ratio']:.0%}{mfu} | "
              f"data wait {row['dataloader_wait_fraction']:.0%}{mem} | ETA {eta:.0f}s",
              flush=True)
        self.last_t, self.last_step = now, state.global_step


class StopCallback(TrainerCallback):
    """Cooperative cancel: on SIGTERM, finish the step, save a checkpoint, stop."""

    def __init__(self, requested, device: torch.device) -> None:
        self.requested = requested  # () -> bool
        self.device = device
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if stop_everywhere(self.requested(), self.device):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True


class SealCallback(TrainerCallback):
    """Seal each checkpoint once every rank has finished writing it (:mod:`backend.core.checkpoints`).

    ``on_save`` runs on every rank after its part of the save; the barrier waits for the
    slowest, then rank 0 writes the marker. A run killed before that leaves an unsealed folder
    that resume and Slurm's requeue skip. A SIGTERM (cancel) during the save only sets the stop
    flag: the save completes, is sealed, and the trainer stops after its next step."""

    def __init__(self, keep: int) -> None:
        self.keep = keep  # save_total_limit: rotation runs here, after the seal (checkpoints.rotate)

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            seal(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)
            rotate(Path(args.output_dir), self.keep)


def optimizer_name(optimizer) -> str:
    """The optimizer that updates the weights, inside DeepSpeed's and accelerate's wrappers:
    e.g. ``torch.optim.AdamW (fused)`` or ``deepspeed.ops.adam.FusedAdam``."""
    seen = 0
    while hasattr(optimizer, "optimizer") and seen < 5:  # ZeRO optimizer -> basic optimizer
        optimizer, seen = optimizer.optimizer, seen + 1
    cls = type(optimizer)
    module = "torch.optim" if cls.__module__.startswith("torch.optim") else cls.__module__
    fused = any(g.get("fused") for g in getattr(optimizer, "param_groups", []))
    return f"{module}.{cls.__name__}" + (" (fused)" if fused else "")


class OptimizerLog(TrainerCallback):
    """One log line at the start: which optimizer really runs (DeepSpeed builds it from its config)."""

    def __init__(self, log) -> None:
        self.log = log

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001, ANN003
        if optimizer is not None:
            self.log(f"optimizer: {optimizer_name(optimizer)}")


def quiet_trainer(trainer) -> None:
    """One line per step: the HF Trainer's PrinterCallback (added with disable_tqdm) would print
    each step's raw ``{'loss': ...}`` dict again under the formatted line of MetricsCallback."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def quiet_deepspeed_replicas() -> None:
    """DeepSpeed says that it loaded its shared-memory op with ``print`` (not its logger) on every
    rank; rank 0's line is enough. The other ranks load it without that line."""
    import contextlib
    import importlib
    import io

    if int(os.environ.get("RANK", "0")) == 0:
        return
    # the module itself: deepspeed.comm's attribute "torch" is torch
    backend = importlib.import_module("deepspeed.comm.torch")

    build = backend.build_shm_op

    def quiet_build():  # noqa: ANN202
        with contextlib.redirect_stdout(io.StringIO()):
            return build()

    backend.build_shm_op = quiet_build


def compile_notice(zero_stage: int, offload: str, use_gpu: bool, optimizer: str = "adamw_torch") -> str | None:
    """What the log should say before a long silent wait: the first DeepSpeed run on a machine
    JIT-compiles C++ ops (DeepSpeed's optimizer when ``adamw_deepspeed`` asks for it; on CPUs the
    shared-memory collectives), minutes on a CPU; later runs load them from the torch extensions
    cache. None when they are prebuilt or already compiled, or when nothing needs them (the
    default torch AdamW on a GPU compiles nothing)."""
    if not zero_stage:
        return None
    import deepspeed.git_version_info as installed
    import torch.utils.cpp_extension as cpp
    from deepspeed.accelerator import get_accelerator

    names = []
    if optimizer == "adamw_deepspeed":
        names.append("CPUAdamBuilder" if offload != "none" else "FusedAdamBuilder")
    if not use_gpu:
        names.append("ShareMemCommBuilder")
    missing, cache = [], None
    for name in names:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or installed.installed_ops.get(builder.name):
            continue
        cache = Path(cpp._get_build_directory(builder.name, False))
        if not any(cache.glob("*.so")):
            missing.append(builder.name)
    if not missing:
        return None
    return (f"first DeepSpeed run on this machine: compiling its {', '.join(missing)} op(s); this takes a few "
            f"minutes once (cached under {cache.parent}), training starts when they are built")
