"""vlstudio's training program: one InternVL fine-tune, read top to bottom.

Run by the worker (the exact command is also in the run folder's ``command.txt``)::

    torchrun --nproc_per_node N --master_port P -m worker.training.train --spec RUN/spec.json

It reads only the resolved spec; it writes ``metrics.jsonl`` (one JSON object per logging
step), checkpoints under ``RUN/checkpoints``, TensorBoard events under ``RUN/tensorboard``
when asked, and the final Hugging Face model under ``RUN/final`` (LoRA runs: the adapter
under ``RUN/final/adapter`` as well). It never touches the database, Celery or the web stack.
Exit codes: 0 done (``RUN/final`` written) or stopped on SIGTERM after saving a checkpoint (the
log's last line says so; 0 so that torchrun's agent ends cleanly instead of reporting a failed
child with a traceback), 2 the spec does not fit the model or data.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

# SIGTERM is this program's cancel from its first moment: its imports take seconds on a busy
# node, and a rank signalled before its handler is set dies with -15 (torchrun: "failed").
STOP_REQUESTED = False
#: stopped on request before training began (while the data index was built or waited for)
STOPPED_EARLY = False
#: between the data and the first step (model load, rendezvous, DeepSpeed init): SIGTERM raises
#: :class:`StopNow` at once instead of waiting for a step's end (nothing to save yet)
RAISE_ON_SIGTERM = False
#: the run folder and the phase, for the last line of a run stopped before training
RUN_DIR: Path | None = None
PHASE = "starting"


class StopNow(BaseException):
    """SIGTERM before the first step: leave at once (a BaseException: no ``except Exception`` of
    transformers or DeepSpeed swallows it)."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    # Cooperative cancel: finish the step, save a checkpoint, exit. The worker escalates to
    # SIGKILL of the process group only after a grace period. Before training there is no step
    # to finish: from the model load to the first step the handler raises instead.
    global STOP_REQUESTED
    STOP_REQUESTED = True
    if RAISE_ON_SIGTERM:
        raise StopNow()


def raise_on_sigterm(on: bool) -> None:
    """Switch SIGTERM between raising :class:`StopNow` (startup phases) and the step-end flag;
    one that came before the switch to raising is acted on now."""
    global RAISE_ON_SIGTERM
    RAISE_ON_SIGTERM = on
    if on:
        _watch_startup_sigterm()
    if on and STOP_REQUESTED:
        raise StopNow()


_WATCHING = False
_WAKEUP_SOCKETS: list = []
#: seconds the main thread has to act on a startup SIGTERM before the watchdog ends the rank
STARTUP_STOP_GRACE = 2.0


def _watch_startup_sigterm() -> None:
    """A Python signal handler runs only when the main thread is back in Python; a rank blocked
    in C++ (the rendezvous waiting for a rank that already stopped) never gets there. The C-level
    handler writes each signal to a wakeup fd (``signal.set_wakeup_fd``); this thread reads it
    and, if a SIGTERM came in a startup phase and the main thread has not ended the rank within
    ``STARTUP_STOP_GRACE`` seconds, ends it the same way (last line, outcome, ``os._exit(0)``).
    Started after the data (the index build forks only from a single-threaded process)."""
    global _WATCHING
    if _WATCHING or __name__ != "__main__":
        return
    import socket
    import threading

    r, w = socket.socketpair()
    w.setblocking(False)
    signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    _WATCHING = True
    _WAKEUP_SOCKETS.extend((r, w))  # kept open for the process's life

    def watch() -> None:
        while True:
            got = r.recv(64)
            if int(signal.SIGTERM) in got and RAISE_ON_SIGTERM:
                time.sleep(STARTUP_STOP_GRACE)
                if RAISE_ON_SIGTERM and RUN_DIR is not None and not STOPPED_EARLY:
                    stopped_before_training(RUN_DIR, f"cancelled during {PHASE}")
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(0)

    threading.Thread(target=watch, name="startup-sigterm", daemon=True).start()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)

import torch
from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, set_seed

from backend.core import run_outcome
from backend.core.checkpoints import latest_complete
from backend.core.data_index import IndexCancelled, default_cache_dir
from backend.core.meta import MetaError
from backend.core.model_card import ModelCard, read_card
from backend.core.model_folder import ModelFolderError
from backend.core.run_phase import PHASE_PREFIX
from backend.core.spec import WORKER_RUN_ENV, Hyperparameters, TrainingSpec, max_tiles_per_pack
from backend.core.template_match import template_problems
from backend.core.templates import TOKENIZER_TEMPLATE, to_jinja
from worker.training import lora, modeling, packing, resume, speed
from worker.training import loss as loss_fn
from worker.training.attention import ONE_ROW
from worker.training.callbacks import (
    BatchStats,
    MetricsCallback,
    OptimizerLog,
    SealCallback,
    StopCallback,
    compile_notice,
    quiet_deepspeed_replicas,
    quiet_trainer,
)
from worker.training.data import Collator, SupervisedDataset
from worker.training.sampler import SeededSampler


def log(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(msg, flush=True)


def phase(what: str) -> None:
    """What the run is doing until its first step (the API shows the last one with its elapsed
    time: backend/services/job_compare.py ``phases``); the step lines take over from there."""
    global PHASE
    PHASE = what
    log(f"{PHASE_PREFIX}{what}")


def fail(problems: list[str]) -> None:
    log("cannot train:\n" + "\n".join(f"  - {p}" for p in problems))
    raise SystemExit(2)


# ----------------------------------------------------------------------------------------- setup
def deepspeed_config(h: Hyperparameters, bf16: bool) -> dict:
    """The recipe's zero_stage{1,2,3}_config.json, with the Trainer filling the "auto"s; the
    optimizer is torch's fused AdamW unless ``optimizer`` asks for DeepSpeed's (compiled)."""
    zero: dict = {"stage": h.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if h.zero_stage in (1, 2):
        bucket = 1e9 if h.zero_stage == 1 else 1e8
        zero.update(allgather_bucket_size=bucket, reduce_bucket_size=bucket, allgather_partitions=True,
                    reduce_scatter=True)
    if h.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_prefetch_bucket_size="auto",
                    stage3_param_persistence_threshold="auto", reduce_bucket_size="auto",
                    sub_group_size=1e9, stage3_max_live_parameters=1e9, stage3_max_reuse_distance=1e9)
    if h.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if h.offload == "optimizer+parameters":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    params: dict = {"lr": "auto", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": "auto"}
    if h.optimizer == "adamw_torch":
        # torch.optim.AdamW(fused=True) over DeepSpeed's parameter groups (every parameter decays, as
        # in the recipe's config): no op for DeepSpeed to JIT-compile on a fresh node
        params.update(torch_adam=True, fused=True)
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": params},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def run_template(spec: TrainingSpec, card: ModelCard, tokenizer):
    """The run's template, from the model's card (``tokenizer``: its tokenizer's own chat template,
    the same object validation and generation render with); a template that does not fit the model
    is refused before anything trains."""
    problems = template_problems(spec.template, card, tokenizer.get_vocab().get)
    if problems:
        fail(problems)
    return card.conversation_template(spec.template)


def data_settings(h: Hyperparameters, card: ModelCard) -> dict:
    """What the data pipeline cuts and renders with: the run's tiling and length, on the model's own
    tiles (448 px for every released InternVL, other sizes for tiny test models)."""
    image_size, tokens_per_tile = card.geometry(h.force_image_size)
    return dict(max_seq_length=h.max_seq_length, **h.tiling.to_dict(), image_size=image_size,
                tokens_per_tile=tokens_per_tile, seed=h.seed)


def read_model_card(spec: TrainingSpec) -> tuple[TrainingSpec, ModelCard]:
    """The model's card, and the spec with the tiling it leaves empty taken from it."""
    try:
        card = read_card(spec.model_path)
    except ModelFolderError as e:
        fail([str(e)])
    if not spec.hyper.tiling_resolved:
        try:
            spec = spec.model_copy(update={"hyper": spec.hyper.with_tiling(card.tiling)})
        except ValueError as e:  # pydantic's ValidationError: the model's tiling does not fit the other settings
            fail([f"with the model's own tiling ({card.tiling.describe()}): {e}"])
    return spec, card


def core_model(model):
    """InternVLModel inside whatever wraps it (DeepSpeed engine or DDP, then peft)."""
    m = getattr(model, "module", model)
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m.model


class InternVLTrainer(Trainer):
    """Merges image features into the text embeddings with ``image_flags`` (the reference's
    approach), so a dummy tile keeps the vision tower in every rank's graph, and owns the loss
    normalisation (:mod:`worker.training.loss`): one step's loss, gradients and eval loss do not
    depend on how the global batch is split over processes and accumulation steps."""

    #: compute_loss returns its exact share of the step loss: the Trainer must not rescale it
    loss_is_scaled_for_ga = True

    def __init__(self, *args, sampler: SeededSampler, stats: BatchStats, one_row: bool = False,
                 fused_ce: bool = False, loss_reduction: str = "token", eval_collator=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sampler = sampler
        self.stats = stats
        self.one_row = one_row  # flash-attention 2 / varlen: packed batches run as one row with cu_seqlens
        self.fused_ce = fused_ce  # Liger fused linear cross-entropy from the hidden states
        self.loss_reduction = loss_reduction
        self.eval_collator = eval_collator or self.data_collator  # evaluation batches are never packed
        self.micro_batches = 1

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Without DeepSpeed: the checkpoint's weights through the key mapping they were written
        with, every tensor or an error (:mod:`worker.training.resume`); the Trainer's own reads
        ``save_pretrained``'s original layout without it and only warns about what it missed."""
        resume.load_weights(self.model if model is None else model, Path(resume_from_checkpoint))

    def _get_train_sampler(self, train_dataset=None):
        return self.sampler

    def get_resumed_dataloader(self, dataloader, num_batches):
        """Resuming mid-epoch: the sampler orders that epoch as the uninterrupted run did. With
        several processes accelerate wraps it (skip, shard, batch) past where the Trainer's
        ``set_epoch`` reaches, and it would deal the epoch-0 order again; the checkpoint's
        ``state.epoch`` (e.g. 1.5) is strictly inside the epoch here, so its floor is the epoch."""
        self.sampler.set_epoch(math.floor(self.state.epoch))
        return super().get_resumed_dataloader(dataloader, num_batches)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step and the step's weight sum over all ranks
        (passed on to :meth:`compute_loss` as ``num_items_in_batch``)."""
        t0 = time.perf_counter()
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        # The time the training loop waits for its next batches: the dataloader wait fraction.
        self.stats.add_data_wait(time.perf_counter() - t0)
        self.micro_batches = max(len(batches), 1)
        if self.loss_reduction == "micro_batch_mean":
            return batches, None
        return batches, loss_fn.step_denominator([b["labels"] for b in batches], self.loss_reduction, device,
                                                 [b.get("sample_index") for b in batches])

    def token_losses(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, object]:
        """Forward one batch: per-target losses ``[B, T-1]`` (fp32; with the fused kernel, their sum),
        the labels, the packed sample index (None unpacked) and the model outputs."""
        flags = inputs.pop("image_flags")
        pixel_values = inputs.pop("pixel_values")
        pack = packing.pop_pack_inputs(inputs)  # None for a padded batch
        input_ids, labels = inputs["input_ids"], inputs["labels"]
        if model.training:  # evaluation batches are not training throughput
            self.stats.add(input_ids, inputs["attention_mask"], flags, samples=pack.samples if pack else None)
        core = core_model(model)
        embeds = core.get_input_embeddings()(input_ids)
        feats = core.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        real = feats[flags == 1].reshape(-1, feats.shape[-1]).to(embeds.dtype)
        mask = input_ids == core.config.image_token_id
        if int(mask.sum()) != real.shape[0]:
            raise ValueError(f"{int(mask.sum())} image tokens but {real.shape[0]} image features")
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), real)
        # Zero-weighted dummy features keep the vision parameters in the graph on a text-only rank.
        embeds = embeds + 0.0 * feats[flags == 0].sum().to(embeds.dtype)
        kwargs = packing.forward_inputs(pack, embeds, labels, inputs["attention_mask"], self.one_row)
        # No labels to the model: its own loss would be a per-call mean; the reduction is ours.
        labels = kwargs.pop("labels")
        index = pack.sample_index.reshape(labels.shape) if pack is not None else None
        if self.fused_ce:
            hidden = core(**kwargs).last_hidden_state
            losses = speed.fused_token_losses(hidden, lm_head(model), labels)  # the logits path's, without logits
            return losses, labels, index, {"loss": losses.sum()}
        outputs = model(**kwargs)
        return loss_fn.token_losses(outputs.logits, labels), labels, index, outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        losses, labels, index, outputs = self.token_losses(model, inputs)
        weights = loss_fn.token_weights(labels, self.loss_reduction, index).to(losses.device)
        loss = loss_fn.micro_batch_loss(losses, weights, reduction=self.loss_reduction,
                                        denominator=num_items_in_batch, micro_batches=self.micro_batches,
                                        world_size=self.args.world_size)
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """Eval loss: the training's weighting normalised over the whole eval set (``micro_batch_mean``:
        the token mean), each sample once. Ranks take every W-th sample and run the same number of
        forwards (ZeRO-3 gathers parameters collectively); a rank short of samples runs one with no
        trained token. The Trainer's own loop would pad with repeated samples and average per batch."""
        from transformers.trainer_utils import EvalLoopOutput

        # the dataset of this evaluation (one of several when eval_dataset is a dict of them)
        ds = getattr(dataloader, "dataset", None)
        ds = self.eval_dataset if ds is None else ds
        world, bs = self.args.world_size, self.args.per_device_eval_batch_size
        mine = list(range(self.args.process_index, len(ds), world))
        batches = math.ceil(math.ceil(len(ds) / world) / bs)
        reduction = "token" if self.loss_reduction == "micro_batch_mean" else self.loss_reduction
        model = self.model_wrapped
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for b in range(batches):
                idx = mine[b * bs:(b + 1) * bs]
                batch = self.eval_collator([ds[i] for i in idx or [0]])
                if not idx:
                    batch["labels"].fill_(loss_fn.IGNORE_INDEX)
                with self.compute_loss_context_manager():
                    losses, labels, index, _ = self.token_losses(model, self._prepare_inputs(batch))
                weights = loss_fn.token_weights(labels, reduction, index).to(losses.device)
                sums += torch.stack([(losses * weights).sum(), weights.sum()]).to(sums)
        loss_fn.all_reduce_sum(sums)
        metrics = {f"{metric_key_prefix}_loss": (sums[0] / sums[1].clamp(min=1e-12)).item()}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(ds))


def lm_head(model):
    m = getattr(model, "module", model)
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m.lm_head


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="write here instead of the spec's output_dir (or a fresh rerun-N folder in it)")
    parser.add_argument("--in-place", action="store_true",
                        help="write into the spec's output_dir even if an earlier run's outputs are there")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    # -- the spec, the model's card and the machine
    spec, card = read_model_card(TrainingSpec.read(args.spec))
    h = spec.hyper
    out = output_folder(spec, args.output_dir, args.in_place or os.environ.get(WORKER_RUN_ENV) == "1")
    global RUN_DIR
    RUN_DIR = out
    if STOP_REQUESTED:  # signalled while it started (imports, spec)
        return stopped_before_training(out, "cancelled while starting")
    if out != Path(spec.output_dir) and args.output_dir is None:
        log(f"writing to {out}: {spec.output_dir} already holds the outputs of a run (pass --in-place to write "
            "there, --output-dir DIR to choose)")
    if not hasattr(Trainer, "loss_is_scaled_for_ga"):  # older: the Trainer rescales our exact loss by accumulation
        import transformers

        fail([f"transformers {transformers.__version__} is too old for this trainer (it needs 5.19 or later, "
              "whose Trainer takes the loss as given): pip install 'transformers>=5.19,<6'"])
    use_gpu = h.gpus > 0 and torch.cuda.is_available()
    if h.gpus > 0 and not use_gpu:
        fail(["the job asks for GPUs but CUDA is not available on this node"])
    bf16 = use_gpu and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_gpu else torch.device("cpu")

    # -- tokenizer, template, data
    phase("preparing data (reading, checking and tokenizing the annotations)")
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    template = run_template(spec, card, tokenizer)
    data_args = data_settings(h, card)
    image_size, tokens_per_tile = data_args["image_size"], data_args["tokens_per_tile"]
    index_args = dict(cache_dir=index_cache_dir(), progress=index_progress, cancel=lambda: STOP_REQUESTED)
    try:
        dataset = SupervisedDataset(Path(spec.meta_path), tokenizer, template, **data_args, **index_args)
    except MetaError as e:
        fail([f"meta file {spec.meta_path}: {p}" for p in e.problems])
    except IndexCancelled as e:
        return stopped_before_training(out, str(e))
    report_index(out, dataset, "train")
    for name, row in dataset.per_dataset().items():
        log(f"dataset {name}: {row['samples']} samples ({row['kept']} kept, {row['tokens']:,} tokens)")
    log(f"tiling: {image_size} px tiles, {tokens_per_tile} image tokens per tile, dynamic={h.dynamic_image_size} "
        f"min_dynamic_patch={h.min_dynamic_patch} max_dynamic_patch={h.max_dynamic_patch} "
        f"use_thumbnail={h.use_thumbnail}; template {template.name}")
    tiles, images = int(dataset.tile_counts.sum()), int(dataset.image_counts.sum())
    log(f"image tokens: {tiles * tokens_per_tile + 2 * images:,} in {images:,} images ({tiles:,} tiles) of "
        f"{int(dataset.modality_lengths.sum()):,} tokens in all")
    dropped = dict(dataset.dropped)
    log(f"samples: {len(dataset)} kept, {sum(dropped.values())} dropped "
        f"({', '.join(f'{k} {v}' for k, v in dropped.items())})")
    for example in dataset.drop_examples:
        log(f"  dropped: {example}")
    if len(dataset) == 0:
        first = f"; the first: {dataset.drop_examples[0]}" if dataset.drop_examples else ""
        fail([f"no trainable sample left: {sum(dropped.values())} dropped "
              f"({', '.join(f'{k} {v}' for k, v in dropped.items() if v)}){first}"])
    problems = speed.runtime_problems(h, use_gpu)
    if problems:
        fail(problems)
    train_data = pack_dataset(dataset, h, tokens_per_tile) if h.packing else dataset
    eval_dataset = None
    if h.eval_steps and spec.eval_meta_path:  # issue 8: eval loss on the held-out validation split(s)
        try:
            held_out = SupervisedDataset(Path(spec.eval_meta_path), tokenizer, template, **data_args, **index_args)
        except IndexCancelled as e:
            return stopped_before_training(out, str(e))
        report_index(out, held_out, "eval")
        eval_dataset = held_out_sets(held_out)
        parts = ", ".join(f"{k} {len(v)}" for k, v in eval_dataset.items() if k != "overall")
        log(f"validation: {len(eval_dataset['overall'])} samples" + (f" ({parts})" if parts else "")
            + f", eval loss every {h.eval_steps} steps")

    # -- model: load, freeze, LoRA
    phase("loading the model")
    raise_on_sigterm(True)  # until the first step begins (TrainingBegins): nothing to save before it
    # fp32 master weights at every ZeRO stage: DeepSpeed's bf16 mode keeps them in its optimizer;
    # without DeepSpeed (zero_stage 0) the weights stay fp32 and the Trainer's autocast computes in bf16.
    model = modeling.load_model(spec.model_path, h, dtype if h.zero_stage else torch.float32, use_gpu)
    modeling.apply_freezing(model, h)
    kernels = apply_speed_options(model, h)
    flops = speed.model_flops(model)  # after the tile resize, before LoRA (adapters are negligible)
    if h.uses_lora:
        set_seed(h.seed)  # the adapter's random initial weights: the same run starts from the same ones
        model = lora.add_lora(model, h)
    trainable, total = modeling.trainable_report(model)
    log(f"parameters: {sum(trainable.values()):,} trainable of {sum(total.values()):,}; by module: "
        + ", ".join(f"{k} {trainable.get(k, 0):,}/{v:,}" for k, v in total.items()))

    # -- what every saved folder carries: the template and a matching chat template and stop token
    describe_format(model, spec, card, tokenizer, template)

    # -- trainer
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tensorboard"))
    ga = h.gradient_accumulation_steps
    targs = TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=h.per_device_batch_size,
        gradient_accumulation_steps=ga, learning_rate=h.learning_rate, weight_decay=h.weight_decay,
        warmup_steps=h.warmup_ratio, lr_scheduler_type=h.lr_scheduler_type, num_train_epochs=h.num_train_epochs,
        max_steps=h.max_steps, max_grad_norm=h.max_grad_norm, logging_steps=h.logging_steps,
        save_strategy="steps" if h.save_steps else "no", save_steps=h.save_steps or 500,
        save_total_limit=None, seed=h.seed, data_seed=h.seed, bf16=bf16, use_cpu=not use_gpu,
        optim="adamw_torch_fused",  # zero_stage 0 (no DeepSpeed): the Trainer's own, torch's fused AdamW
        deepspeed=deepspeed_config(h, bf16) if h.zero_stage else None,
        remove_unused_columns=False,  # gradient checkpointing: per part, in apply_speed_options
        report_to=["tensorboard"] if h.report_to == "tensorboard" else [],
        disable_tqdm=True, dataloader_num_workers=data_workers(h, use_gpu), save_only_model=False,
        log_level_replica="error",  # the Trainer sets each rank's transformers verbosity: rank 0 warns, once
        ddp_backend=None if use_gpu else "gloo",
        eval_strategy="steps" if eval_dataset is not None else "no", eval_steps=h.eval_steps or None,
        per_device_eval_batch_size=h.per_device_batch_size, prediction_loss_only=True,
    )
    world = targs.world_size  # the rendezvous: every rank has chosen ``out`` before anything is written to it
    if targs.process_index == 0:
        run_outcome.clear(out)  # an earlier attempt's word in this folder (a requeue continues in place)
        write_data_report(out / "metrics.jsonl", dataset)
    # Packs are not length-grouped: they are all about max_seq_length long.
    grouped = h.group_by_length and not h.packing
    lengths = train_data.pack_lengths if h.packing else dataset.modality_lengths
    sampler = SeededSampler(lengths, seed=h.seed, megabatch_size=h.per_device_batch_size * world * ga if grouped else 0,
                            chunks=world * ga)
    stats = BatchStats()
    stop = StopCallback(lambda: STOP_REQUESTED, device)
    collator = Collator(tokenizer.pad_token_id, image_size)
    peak = speed.measured_peak_flops(device, dtype)
    attention = modeling.attention_kernel(h, use_gpu)
    trainer = InternVLTrainer(
        model=model, args=targs, train_dataset=train_data,
        eval_dataset=eval_dataset["overall"] if eval_dataset and len(eval_dataset) == 1 else eval_dataset,
        data_collator=packing.PackCollator(tokenizer.pad_token_id, collator) if h.packing else collator,
        processing_class=tokenizer, sampler=sampler, stats=stats, one_row=attention in ONE_ROW,
        fused_ce=h.fused_cross_entropy, loss_reduction=h.loss_reduction, eval_collator=collator,
        callbacks=[MetricsCallback(out / "metrics.jsonl", stats, device, dropped, flops, peak), stop,
                   SealCallback(h.save_total_limit), OptimizerLog(log), TrainingBegins()])
    quiet_trainer(trainer)
    if h.zero_stage:
        quiet_deepspeed_replicas()
    notice = compile_notice(h.zero_stage, h.offload, use_gpu, h.optimizer)
    if notice:
        log(notice)
    unit = "packs" if h.packing else "samples"
    log(f"training: {len(train_data)} {unit}, world size {world}, per device {h.per_device_batch_size} {unit}, "
        f"accumulation {ga}, global batch {h.per_device_batch_size * world * ga} {unit}, "
        f"{-(-len(train_data) // (h.per_device_batch_size * world * ga))} steps per epoch, "
        f"{'bf16' if bf16 else 'fp32'}, ZeRO-{h.zero_stage}, loss_reduction {h.loss_reduction}, attention {attention}, {kernels}, "
        f"{targs.dataloader_num_workers} data workers per rank")
    note = speed.packing_note(h, attention, use_gpu)
    if note:
        log(note)
    log(f"MFU: model FLOPs ({flops[0]:.3g} per token, {flops[1]:.3g} per tile: 6 x parameters x tokens, the "
        f"ViT's tokens being its patches) per second over a measured matmul peak of {peak / 1e12:.3g} TFLOP/s "
        "per device")
    start = spec.resume_from_checkpoint
    if start == "latest":  # the newest sealed one: HF's own pick would take a half-written folder
        start = str(latest_complete(out / "checkpoints") or "") or None
        if not start:
            log("no complete checkpoint to resume from: training from step 0")
    if start:
        if problems := resume.problems(trainer.model, Path(start)):
            fail([f"cannot resume from {start}: {p}" for p in problems])
        log(f"resuming from {start} (every tensor of the checkpoint fits the model)")
    phase("compiling kernels (DeepSpeed's ops, once per machine), then the first step" if notice
          else "starting training: the first step")
    trainer.train(resume_from_checkpoint=start)

    if stop.stopped:
        log(f"stopped on request; checkpoint saved at step {trainer.state.global_step}")
        if trainer.is_world_process_zero():
            run_outcome.write(out, run_outcome.STOPPED, trainer.state.global_step)
        return 0

    # -- save: a Hugging Face folder that from_pretrained + generate use directly
    final = out / "final"
    save_final(trainer, spec, tokenizer, template, final, dtype)
    if trainer.is_world_process_zero():  # the last act: final/ is whole (rank 0 wrote last, after the barrier)
        run_outcome.write(out, run_outcome.DONE, trainer.state.global_step)
    return 0


class TrainingBegins(TrainerCallback):
    """From the first step on, SIGTERM sets the step-end flag again (finish the step, save, stop)."""

    def on_train_begin(self, args, state, control, **kwargs):
        raise_on_sigterm(False)


def stopped_during_startup(error: BaseException) -> int:
    """The run was stopped (SIGTERM) between its data and its first step: :class:`StopNow`, or
    the error another rank's exit caused in a collective this rank was in (its own SIGTERM comes
    within a moment: the worker signals every rank at once). Anything else is re-raised."""
    global RAISE_ON_SIGTERM
    startup = RAISE_ON_SIGTERM
    RAISE_ON_SIGTERM = False  # from here on a SIGTERM only sets the flag
    if not isinstance(error, StopNow):
        if not isinstance(error, Exception):  # SystemExit (a refusal), KeyboardInterrupt
            raise error
        deadline = time.monotonic() + 2.0
        while startup and not STOP_REQUESTED and time.monotonic() < deadline:
            time.sleep(0.05)
        if not (startup and STOP_REQUESTED) or RUN_DIR is None:
            raise error
    return stopped_before_training(RUN_DIR, f"cancelled during {PHASE}")


def index_cache_dir() -> Path:
    """Where the compact data indexes are cached: the worker's ``DATA/index-cache`` for its jobs
    (``VLSTUDIO_INDEX_CACHE``), else the user's cache folder."""
    return default_cache_dir()


def index_progress(msg: str) -> None:
    """Index progress: the building process says it whatever its rank (one builds), as the run's
    phase (``phase: indexing NAME: N/M lines, R lines/s, eta S s``: the Jobs page shows the last one
    with its elapsed time); only rank 0 says that it waits."""
    if msg.startswith("indexing"):
        print(f"{PHASE_PREFIX}{msg}", flush=True)
    elif int(os.environ.get("RANK", "0")) == 0:
        print(msg, flush=True)


def report_index(out: Path, dataset: SupervisedDataset, part: str) -> None:
    """Each dataset's index in the log (its key, reused or built) and in ``RUN/data_index.json``
    (the key and what it is made of), so a job says which cached index it trained on."""
    import json

    for r in dataset.index_report:
        how = (f"reused from the cache (waited {r['waited_seconds']:.1f} s for its build)" if r["reused"]
               and r["waited_seconds"] else "reused from the cache" if r["reused"]
               else f"built in {r['build_seconds']:.1f} s ({r['build_cpu_seconds']:.1f} CPU-s, {r['workers'] or 1} "
               f"process{'es' if (r['workers'] or 1) > 1 else ''})")
        log(f"index {r['dataset']}: key {r['key'] or '(not cached)'}, {r['rows']:,} lines, {how}")
    if int(os.environ.get("RANK", "0")) == 0:
        path = out / "data_index.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        known = json.loads(path.read_text()) if path.exists() else {}
        known[part] = {"cache": str(index_cache_dir()), "datasets": dataset.index_report}
        path.write_text(json.dumps(known, indent=1, ensure_ascii=False))


def stopped_before_training(out: Path, why: str) -> int:
    """SIGTERM before the first step (while the index was built or waited for): nothing to save."""
    global STOPPED_EARLY
    log(f"stopped on request before training ({why}); no checkpoint")
    if int(os.environ.get("RANK", "0")) == 0:
        run_outcome.write(out, run_outcome.STOPPED, 0)
    STOPPED_EARLY = True
    return 0


def pack_dataset(dataset: SupervisedDataset, h: Hyperparameters, tokens_per_tile: int) -> packing.PackedDataset:
    budget = max_tiles_per_pack(h, tokens_per_tile)
    plan = packing.plan_packs(dataset.modality_lengths, dataset.tile_counts,
                              max_seq_length=h.max_seq_length, max_tiles=budget, seed=h.seed)
    log(f"packing: {plan.samples} samples into {len(plan)} packs of <= {h.max_seq_length} tokens and <= {budget} "
        f"tiles, efficiency {plan.efficiency:.1%} (real tokens / packs x max_seq_length)"
        + (f"; {plan.over_tile_budget} samples exceed the tile budget alone (a pack each)"
           if plan.over_tile_budget else ""))
    return packing.PackedDataset(dataset, plan)


def apply_speed_options(model, h: Hyperparameters) -> str:
    """Checkpointing per part, Liger kernels, torch.compile; a line for the log."""
    vision, llm = speed.apply_checkpointing(model, h)
    parts = [f"grad checkpointing vision {'on' if vision else 'off'} / LLM {'on' if llm else 'off'}"]
    if h.liger_kernels:
        parts.append(speed.apply_liger(model))
    if h.fused_cross_entropy:
        parts.append("Liger fused linear cross-entropy")
    if h.torch_compile:
        speed.apply_compile(model)
        parts.append("torch.compile on the LLM")
    return ", ".join(parts)


def data_workers(h: Hyperparameters, use_gpu: bool) -> int:
    """The setting, or on a GPU node one worker per core of this rank's share but one, up to 8
    (bench/train_speed.py measures what a core decodes and tiles); 0 on the CPU, where the
    workers would only take cores from the training itself."""
    if h.dataloader_num_workers is not None:
        return h.dataloader_num_workers
    if not use_gpu:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1) - 1))


def output_folder(spec: TrainingSpec, override: Path | None, in_place: bool) -> Path:
    """Where this run writes. The worker's launch writes into the job's run folder. Rerunning
    ``command.txt`` by hand there finds the earlier run's outputs and writes to a fresh
    ``RUN/rerun-N`` (the job's metrics, checkpoints and ``final/`` stay as they were), unless
    ``--in-place`` or ``--output-dir`` says otherwise; a resume from a checkpoint of the folder
    itself (``latest``, Slurm's requeue) continues in place.
    Every rank decides before the rendezvous and nothing is written before it, so all agree."""
    out = Path(spec.output_dir)
    if override is not None:
        return override
    earlier = any((out / name).exists() for name in ("metrics.jsonl", "final", "checkpoints"))
    resume = spec.resume_from_checkpoint
    continues = resume == "latest" or (resume is not None and Path(resume).absolute().is_relative_to(out.absolute()))
    if in_place or continues or not earlier:
        return out
    k = 1
    while (out / f"rerun-{k}").exists():
        k += 1
    return out / f"rerun-{k}"


def held_out_sets(ds: SupervisedDataset) -> dict:
    """Eval loss on the whole held-out set and, for a mixture, on each dataset's part."""
    sets: dict = {"overall": ds}
    if len(ds.lengths) > 1:
        sets.update({name: ds.subset(name) for name in ds.lengths})
    return sets


def write_data_report(path: Path, dataset: SupervisedDataset) -> None:
    """What each dataset of the mixture contributes (the worker stores it with the job)."""
    import json
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"kind": "data", "step": 0, "datasets": dataset.per_dataset(), "time": time.time()}) + "\n")


def stamp_tiling(config, h: Hyperparameters) -> None:
    """The tiling it was trained with, not the base model's, in the saved config: an export, a
    re-import or an evaluation of the result then cuts images as training did."""
    config.max_dynamic_patch, config.min_dynamic_patch = h.max_dynamic_patch, h.min_dynamic_patch
    config.use_thumbnail, config.dynamic_image_size = h.use_thumbnail, h.dynamic_image_size
    if h.force_image_size:
        config.force_image_size = h.force_image_size


def describe_format(model, spec: TrainingSpec, card: ModelCard, tokenizer, template) -> None:
    """Template name in the config, a chat template on the tokenizer, generation stopping at the
    template's separator: checkpoints and the final model then chat the way they were trained
    (their cards say the template and tiling of the run)."""
    base = model.get_base_model() if spec.hyper.uses_lora else model
    base.config.template = spec.template
    stamp_tiling(base.config, spec.hyper)
    if tokenizer.chat_template is None:  # the template rendered, as Jinja (the card's own for 'tokenizer')
        tokenizer.chat_template = (card.tokenizer.chat_template if spec.template == TOKENIZER_TEMPLATE
                                   else to_jinja(template))
    sep_id = tokenizer.get_vocab().get(template.sep.strip())
    if sep_id is not None:
        base.generation_config.eos_token_id = sep_id


def save_final(trainer: Trainer, spec: TrainingSpec, tokenizer, template, final: Path, dtype: torch.dtype) -> None:
    h = spec.hyper
    model = trainer.model
    base = model.get_base_model() if h.uses_lora else model
    base.config.text_config.use_cache = True
    target = final / "adapter" if h.uses_lora else final
    trainer.save_model(str(target))
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    tokenizer.save_pretrained(target)
    if h.uses_lora:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # the merge runs on rank 0 alone, unpartitioned

        def prepare(path: str):
            m = modeling.load_model(path, h, dtype, use_gpu=False)  # merged in the training precision
            m.config.template = spec.template
            stamp_tiling(m.config, h)
            m.config.text_config.use_cache = True
            m.generation_config.eos_token_id = base.generation_config.eos_token_id
            return m

        if h.merge_lora:
            lora.merge_adapter(spec.model_path, target, final, prepare)
            tokenizer.save_pretrained(final)
            log(f"saved the adapter to {target} and the merged model to {final}")
            return
        log(f"saved the adapter to {target} (load it on the base model with peft, or set merge_lora)")
        return
    base.generation_config.save_pretrained(final)
    log(f"saved final model to {final}")


if __name__ == "__main__":
    try:
        code = main()
    except BaseException as e:  # noqa: BLE001 - re-raised unless the run was stopped before its first step
        code = stopped_during_startup(e)
    if STOPPED_EARLY:
        # Stopped before training: everything is written (the log line, outcome.json). The
        # interpreter's own shutdown with torch, transformers and DeepSpeed loaded takes seconds
        # on a busy node; a cancel must not wait for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
