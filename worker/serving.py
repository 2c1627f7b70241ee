"""The worker's model server: playground chats generated on the worker, not in the API.

It claims queued ``chat_requests`` rows (compare-and-set: two workers never answer the same
chat), keeps the last models it used loaded, generates the chats that arrived together for the
same model in one batch (left-padded, with a streamer that splits the batch's new tokens per
chat), and stores each chat's new text every ``FLUSH_SECONDS`` as ``chat_tokens`` rows with a
live notification (the path a job's log takes), so the API streams them. On a GPU node it holds
one GPU lease (``gpu_leases.holder = serve:<worker>``) while models are loaded and gives it back
after ``VLSTUDIO_SERVE_IDLE_SECONDS`` without chats.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from backend import live
from backend.core.chat_prompt import context_length
from backend.db.models import ChatRequest
from backend.db.models import JobStatus as S
from backend.db.session import session_scope
from backend.services import chat as chat_svc
from backend.services import scheduling
from backend.services.playground import decode_image
from backend.settings import get_settings
from worker.evaluation.readable import ReadableText

if TYPE_CHECKING:
    from worker.scheduler import Scheduler

log = logging.getLogger(__name__)
MAX_BATCH = 8
MAX_LOADED = 2
FLUSH_SECONDS = 0.1
POLL_SECONDS = 0.2


class BatchStreamer:
    """Receives the batch's new token ids step by step (``transformers`` streamer protocol) and
    turns them into text pieces per chat; ``done`` also drives the stopping criterion."""

    def __init__(self, gen: Any, limits: list[int], flush: Any) -> None:
        self.gen, self.limits, self.flush = gen, limits, flush
        self.ids: list[list[int]] = [[] for _ in limits]
        self.readers = [ReadableText(gen.tokenizer) for _ in limits]
        self.sent = ["" for _ in limits]
        self.pending: list[list[str]] = [[] for _ in limits]
        self.done = [False for _ in limits]
        self.prompt_seen = False
        self.last_flush = time.monotonic()

    def _send(self, i: int, final: bool = False) -> None:
        # bytes that may still become a character wait; stray ones are sent as <0xNN> (worker.evaluation.readable)
        text = self.readers[i].text(final)
        if len(text) > len(self.sent[i]):
            self.pending[i].append(text[len(self.sent[i]):])
            self.sent[i] = text

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        step = value.reshape(len(self.limits), -1)[:, -1].tolist()
        for i, token in enumerate(step):
            if self.done[i]:
                continue
            if token in self.gen.stop_ids:
                self.done[i] = True
                continue
            self.ids[i].append(token)
            self.readers[i].add([token])
            self._send(i)
            if len(self.ids[i]) >= self.limits[i]:
                self.done[i] = True
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush(self)
            self.last_flush = time.monotonic()

    def end(self) -> None:
        # What was held back for a character still incomplete is sent now (as <0xNN> bytes).
        for i in range(len(self.ids)):
            self._send(i, final=True)
        self.flush(self)

    def take(self) -> list[list[str]]:
        out, self.pending = self.pending, [[] for _ in self.limits]
        return out


def _stopping(streamer: BatchStreamer) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class AllDone(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001, ANN003, ANN204
            return torch.tensor(streamer.done, device=input_ids.device)

    return StoppingCriteriaList([AllDone()])


class ModelServer:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.name = scheduler.name
        self.holder = f"serve:{scheduler.name}"
        self.settings = get_settings()
        self.models: OrderedDict[tuple, Any] = OrderedDict()
        self.device: str | None = None
        self.last_used = time.monotonic()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="vlstudio-model-server", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)

    # --------------------------------------------------------------------------------- devices
    def _lease(self) -> str | None:
        """The device to serve on: a leased GPU on a GPU node (None while none is free), else cpu."""
        if self.device is not None:
            return self.device
        total = 0 if self.scheduler.cluster else self.scheduler.gpu_total
        if not total:
            self.device = "cpu"
            return self.device
        with session_scope() as s:
            got = scheduling.lease_for_holder(s, self.scheduler.node, self.holder, total)
        if got is None:
            return None
        self.device = f"cuda:{got[0]}"
        return self.device

    def _unload_if_idle(self) -> None:
        if self.device is None or time.monotonic() - self.last_used < self.settings.serve_idle_seconds:
            return
        self.models.clear()
        from worker.evaluation.generation import release_device_memory

        release_device_memory(self.device)  # before the lease goes: the next job gets the memory
        if self.device != "cpu":
            with session_scope() as s:
                scheduling.release_holder(s, self.holder)
            self.scheduler.wake()  # the GPU is free for jobs again
        self.device = None

    def _model(self, chat: ChatRequest) -> Any:
        from pathlib import Path

        from worker.evaluation.generation import Generator, release_device_memory
        from worker.evaluation.run import trained_tiling

        path = Path(chat.model_path)
        if chat.builtin and not (path / "config.json").exists():
            from worker.demo_model import ensure_demo_model

            path = ensure_demo_model(self.settings.data_path / "models")
        key = (str(path), chat.template, json.dumps(chat.tiling, sort_keys=True))
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key]
        gen = Generator(path, template=chat.template, device=self.device)
        gen.tiling = trained_tiling(gen.card, chat.tiling, None)
        self.models[key] = gen
        while len(self.models) > MAX_LOADED:
            self.models.popitem(last=False)
            release_device_memory(self.device)
        return gen

    # ------------------------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                served = self.serve_once()
            except Exception:  # a database outage or a broken model must not end the server
                log.exception("model server: serving failed; retrying")
                served = False
            if not served:
                self._unload_if_idle()
                self.stopping.wait(POLL_SECONDS)

    def serve_once(self) -> bool:
        with session_scope() as s:
            if not chat_svc.count_queued(s) or self._lease() is None:
                return False
            chats = chat_svc.claim(s, self.name, MAX_BATCH)
        groups: dict[tuple, list[ChatRequest]] = {}
        for c in chats:
            key = (c.model_path, c.template, json.dumps(c.tiling, sort_keys=True), c.temperature)
            groups.setdefault(key, []).append(c)
        for group in groups.values():
            self._answer(group)
        self.last_used = time.monotonic()
        return bool(chats)

    def _answer(self, chats: list[ChatRequest]) -> None:
        try:
            gen = self._model(chats[0])
        except Exception as e:  # noqa: BLE001 - every chat of the group is told why
            for c in chats:
                self._finish(c.id, S.failed, error=f"cannot load the model {chats[0].model_path}: {e}")
            return
        ready, prompts = [], []
        for c in chats:
            try:
                prompt = gen.prompt(c.conversation, [decode_image(c.image)] if c.image else [])
            except Exception as e:  # noqa: BLE001 - this chat alone cannot be answered
                self._finish(c.id, S.failed, error=f"cannot build the prompt: {e}")
                continue
            context = context_length(gen.card.config)
            if context is not None and len(prompt.input_ids) + c.max_new_tokens > context:
                # the API refuses such a chat (422); one queued otherwise is not generated either
                self._finish(c.id, S.failed, error=f"the prompt is {len(prompt.input_ids):,} tokens and "
                             f"max_new_tokens {c.max_new_tokens:,}: over the model's context of {context:,} tokens")
                continue
            prompts.append(prompt)
            ready.append(c)
        if ready:
            self._generate(gen, ready, prompts)

    def _generate(self, gen: Any, chats: list[ChatRequest], prompts: list[Any]) -> None:
        import torch

        from worker.evaluation.generation import collate_left

        seqs = [0] * len(chats)

        def flush(st: BatchStreamer) -> None:
            pieces = {c.id: (seqs[i] + 1, p) for i, (c, p) in enumerate(zip(chats, st.take(), strict=True)) if p}
            with session_scope() as s:
                chat_svc.append(s, pieces)
                gone = chat_svc.stopped(s, [c.id for c in chats])
            for i, c in enumerate(chats):
                if c.id in pieces:
                    seqs[i] += len(pieces[c.id][1])
                    live.publish(c.id, "chat")
                if c.id in gone:
                    st.done[i] = True  # cancelled by its client: no more tokens for it

        limits = [c.max_new_tokens for c in chats]
        streamer = BatchStreamer(gen, limits, flush)
        batch = {k: v.to(gen.device) for k, v in collate_left(prompts, gen.pad_id).items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(gen.model.dtype)
        try:
            with gen.lock, torch.inference_mode():
                gen.model.generate(**batch, **gen._kwargs(max(limits), chats[0].temperature), streamer=streamer,
                                   stopping_criteria=_stopping(streamer))
        except Exception as e:  # noqa: BLE001 - reported to every chat of the batch
            for c in chats:
                self._finish(c.id, S.failed, error=f"generation failed: {e}")
            return
        for i, c in enumerate(chats):
            self._finish(c.id, S.succeeded, reply=gen.decode(streamer.ids[i]), batch_size=len(chats))

    def _finish(self, chat_id: int, status: S, **fields: Any) -> None:
        with session_scope() as s:
            chat_svc.finish(s, chat_id, status, **fields)
        live.publish(chat_id, "chat")


_server: ModelServer | None = None


def start_server(scheduler: Scheduler) -> ModelServer | None:
    """The worker process' model server (``VLSTUDIO_SERVE_MODELS``, on by default)."""
    global _server
    if _server is None and get_settings().serve_models:
        _server = ModelServer(scheduler)
        _server.start()
    return _server
