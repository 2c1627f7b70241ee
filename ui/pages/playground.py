"""Playground page: multi-turn chat with a base model or a fine-tune, with an image, streamed
token by token (``POST /api/models/{id}/chat``), with a Stop button.

The conversation of a browser session is kept here, in the API's own message format
(``{role, content}`` strings): the Chatbot component only displays it. Its history (content
parts, error markers) is never sent back, so what the API receives is what the user typed and
what the model answered. A message sent while a reply streams waits in the session's queue and
is sent when the reply ends; Stop hands the queued ones back to the message box: nothing typed
is dropped."""

from __future__ import annotations

import base64
import hashlib
import io
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import gradio as gr

from ui.client import ApiError
from ui.pages.evaluate import error_html, model_choices
from ui.session import Sessions
from ui.widgets import notice, section

MAX_SESSIONS = 500  # conversations kept (the least recently used browser sessions are forgotten)
MAX_NEW_TOKENS = 256
SHOW_EVERY_S = 0.25  # at most four chat updates a second while a reply streams


@dataclass
class Conversation:
    turns: list[dict] = field(default_factory=list)  # what the API is sent: answered turns only
    shown: list[dict] = field(default_factory=list)  # what the Chatbot shows (with failed turns)
    image_key: str | None = None
    pending: deque = field(default_factory=deque)
    streaming: bool = False
    epoch: int = 0  # bumped by "New conversation": a reply still finishing must not restore the old one
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Conversations:
    def __init__(self) -> None:
        self._by_session: OrderedDict[str, Conversation] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, request: gr.Request) -> Conversation:
        key = getattr(request, "session_hash", None) or "default"
        with self._lock:
            conv = self._by_session.pop(key, None) or Conversation()
            self._by_session[key] = conv
            while len(self._by_session) > MAX_SESSIONS:
                self._by_session.popitem(last=False)
            return conv


def parse_choice(choice: str) -> tuple[int, int | None]:
    """``model:ID`` -> (ID, None); ``job:JOB:MODEL`` -> (MODEL, JOB)."""
    kind, *ids = choice.split(":")
    return (int(ids[0]), None) if kind == "model" else (int(ids[1]), int(ids[0]))


def image_b64(img) -> str | None:  # noqa: ANN001
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pump(api, model_id: int, messages: list[dict], b64: str | None, job_id: int | None,  # noqa: ANN001, PLR0913
          max_new_tokens: int, out: queue.Queue, stop: threading.Event) -> None:
    """Read the reply on a thread, so the page can show the wait and honour Stop meanwhile."""
    try:
        for piece in api.chat_stream(model_id, messages, b64, job_id, max_new_tokens):
            if stop.is_set():
                break
            out.put(("token", piece))
        out.put(("done", None))
    except ApiError as e:
        out.put(("error", e))


def _status(conv: Conversation, waited: float | None) -> str:
    """The line under the chat while a reply is on its way: the wait for the first token (the
    first message to a model loads it), and the messages queued behind the reply."""
    queued = len(conv.pending)
    more = f"<div>Queued ({queued} waiting): sent when this reply ends; Stop gives them back.</div>" if queued else ""
    if waited is not None:
        return notice("info", f"Waiting for the model: {waited:.0f} s",
                      "<div>The first message to a model loads it.</div>" + more)
    return notice("info", f"Queued ({queued} waiting)", more) if queued else ""


def answer(api, conv: Conversation, model_id: int, job_id: int | None,  # noqa: ANN001, PLR0913
           message: str, b64: str | None, max_new_tokens: int = MAX_NEW_TOKENS) -> Iterator:
    """Stream the reply to ``message`` into ``conv``, yielding (chat messages, status HTML). The
    API is sent ``conv.turns`` (plain strings, answered turns only) plus the new message."""
    epoch = conv.epoch
    asked = [*conv.turns, {"role": "user", "content": message}]
    conv.shown += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    pieces: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(api, model_id, asked, b64, job_id, max_new_tokens, pieces, conv.stop),
                     daemon=True).start()
    t0, reply, last_shown = time.monotonic(), "", 0.0
    while True:
        try:
            kind, value = pieces.get(timeout=0.5)
        except queue.Empty:
            if conv.stop.is_set():
                kind, value = "done", None
            elif not reply:
                yield list(conv.shown), _status(conv, time.monotonic() - t0)
                continue
            else:  # a pause in the stream: show what came since the last update
                if conv.shown[-1]["content"] != reply:
                    conv.shown[-1] = {"role": "assistant", "content": reply}
                    yield list(conv.shown), _status(conv, None)
                continue
        if kind == "token":
            reply += value
            if time.monotonic() - last_shown >= SHOW_EVERY_S:  # the browser redraws the chat per update
                conv.shown[-1] = {"role": "assistant", "content": reply}
                last_shown = time.monotonic()
                yield list(conv.shown), _status(conv, None)
            continue
        if kind == "error":
            if epoch != conv.epoch:
                return
            conv.shown[-1] = {"role": "assistant", "content": f"⚠ not answered: {value}"}
            yield list(conv.shown), error_html("The model did not answer", value)
            return
        break
    stopped = conv.stop.is_set()
    if epoch != conv.epoch:
        return  # "New conversation" was pressed meanwhile
    if reply.strip():  # a reply stopped before its first token is not a turn of the conversation
        conv.turns = [*asked, {"role": "assistant", "content": reply.strip()}]
    conv.shown[-1] = {"role": "assistant", "content": reply + (" … (stopped)" if stopped else "")}
    waiting = len(conv.pending)
    done = "Stopped after" if stopped else "Answered in"
    yield list(conv.shown), notice("ok", f"{done} {time.monotonic() - t0:.1f} s"
                                         + (f"; {waiting} queued message(s) next" if waiting else ""))


def build(sessions: Sessions):  # noqa: ANN201
    gr.HTML(section("Playground", "Chat with a base model or a fine-tune, with an image, using the training "
                                  "template and tiling. Replies stream token by token; follow-up questions "
                                  "keep the conversation."))
    convs = Conversations()
    with gr.Row():
        model = gr.Dropdown(label="Model", choices=[], elem_id="vl-chat-model")
        image = gr.Image(label="Image (goes with the conversation; a new image starts a new one)", type="pil",
                         elem_id="vl-chat-image")
    chat = gr.Chatbot(label="Conversation", elem_id="vl-chat")
    status = gr.HTML(elem_id="vl-chat-status")
    text = gr.Textbox(label="Message", placeholder="What colour is the shape?", elem_id="vl-chat-text")
    max_new = gr.Slider(16, 4096, value=MAX_NEW_TOKENS, step=16, label="Max new tokens", elem_id="vl-chat-max-new")
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="vl-chat-send")
        stop = gr.Button("Stop", elem_id="vl-chat-stop")
        clear = gr.Button("New conversation", elem_id="vl-chat-clear")

    def load(request: gr.Request):  # noqa: ANN202
        try:
            return gr.update(choices=model_choices(sessions.api(request)))
        except ApiError:
            return gr.update()

    def submit(choice, message, request: gr.Request):  # noqa: ANN001, ANN202
        """Queue the message (the box empties only once it is safely queued)."""
        if not choice:
            return gr.skip(), notice("error", "Choose a model first", "Pick a model above; your message is kept.")
        if not (message or "").strip():
            return gr.skip(), notice("info", "Type a message first")
        conv = convs.get(request)
        with conv.lock:
            conv.pending.append(message.strip())
            waiting = len(conv.pending)
            busy = conv.streaming
        if busy:
            return "", notice("info", f"Queued ({waiting} waiting)",
                              "It is sent when the current reply ends; Stop gives it back to the box.")
        return "", ""

    def drain(choice, img, max_new_tokens, request: gr.Request) -> Iterator:  # noqa: ANN001
        """Answer the queued messages one after the other (one drain per session at a time)."""
        conv = convs.get(request)
        with conv.lock:
            idle = not conv.streaming and conv.pending and choice
            if idle:
                conv.streaming = True
                conv.stop.clear()
        if not idle:  # another drain of this session answers the queue (or nothing to do)
            yield gr.skip(), gr.skip()
            return
        try:
            b64 = image_b64(img)
            key = hashlib.sha1(b64.encode()).hexdigest() if b64 else None
            if conv.turns and key != conv.image_key:
                conv.turns, conv.shown = [], []
                yield [], notice("info", "The image changed: a new conversation started")
            conv.image_key = key
            model_id, job_id = parse_choice(choice)
            while True:
                with conv.lock:
                    if not conv.pending or conv.stop.is_set():
                        # In the same lock as the check: a message queued after it finds no
                        # drain running and starts its own, so none is stranded.
                        conv.streaming = False
                        return
                    message = conv.pending.popleft()
                yield from answer(sessions.api(request), conv, model_id, job_id, message, b64,
                                  int(max_new_tokens or MAX_NEW_TOKENS))
        finally:
            with conv.lock:
                conv.streaming = False

    def on_stop(current: str, request: gr.Request):  # noqa: ANN202
        conv = convs.get(request)
        with conv.lock:
            queued = list(conv.pending)
            conv.pending.clear()
            conv.stop.set()
        back = "\n".join([*queued, current] if current else queued)
        return back, notice("info", "Stopped", "Queued messages are back in the box." if queued else "")

    def on_clear(request: gr.Request):  # noqa: ANN202
        conv = convs.get(request)
        with conv.lock:
            conv.stop.set()
            conv.pending.clear()
            conv.turns, conv.shown, conv.image_key = [], [], None
            conv.epoch += 1
        return [], ""

    for trigger in (send.click, text.submit):
        # the box empties at once (no queue): text typed right after Enter is not wiped by a late reply
        trigger(submit, [model, text], [text, status], queue=False).then(drain, [model, image, max_new], [chat, status])
    stop.click(on_stop, text, [text, status])
    clear.click(on_clear, None, [chat, status])
    return load, model
