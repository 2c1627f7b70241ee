"""Evaluate and Playground pages (issue 8): compare base and fine-tuned models on a
held-out split side by side, and chat with any of them with an image. Everything goes
through the REST API (``ui/client.py``)."""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import gradio as gr

from ui.client import ApiError
from ui.session import Sessions
from ui.widgets import esc, notice, section, table

METRICS = ["exact_match", "vqa_accuracy", "anls", "relaxed_accuracy", "multiple_choice"]


def model_choices(api) -> list[tuple[str, str]]:  # noqa: ANN001
    """(label, value) for registered models and what succeeded jobs saved; the value is
    ``model:ID`` or ``job:ID:MODEL_ID``."""
    out = [(f"{m['name']} (base)", f"model:{m['id']}") for m in api.models()]
    out += [(f"job {j['id']} fine-tune", f"job:{j['id']}:{j['model_id']}") for j in api.jobs()
            if j["status"] == "succeeded"]
    return out


def to_ref(value: str) -> dict:
    kind, *ids = value.split(":")
    return {"model_id": int(ids[0])} if kind == "model" else {"job_id": int(ids[0])}


def summary_table(ev: dict) -> str:
    rows = []
    for m in ev.get("summary") or []:
        rows.append([f"<b>{esc(m['label'])}</b>", str(m["n"])] + [f"{v:.3f}" for v in m["metrics"].values()])
    names = list((ev.get("summary") or [{}])[0].get("metrics", {}))
    status = f"evaluation {ev['id']}: {ev['status']} ({ev.get('done', 0)}/{ev.get('total') or '?'} outputs)"
    return f"<p>{esc(status)}</p>" + table(["Model", "Samples", *names], rows, "No results yet.")


def samples_table(res: dict) -> str:
    rows = [[esc(i["id"]), esc(i["question"]), esc(" | ".join(i["answers"]))]
            + [esc(p if p is not None else "–") for p in i["predictions"]] for i in res["items"][:200]]
    head = f"<p>{res['differing']} of {res['samples']} samples differ between the models.</p>"
    return head + table(["Sample", "Question", "Answer", *res["models"]], rows, "No samples.")


def build_evaluate(sessions: Sessions):  # noqa: ANN201
    gr.HTML(section("Evaluate", "Run base and fine-tuned models on a dataset's held-out split and compare "
                                "them sample by sample."))
    with gr.Row():
        dataset = gr.Dropdown(label="Dataset", choices=[], elem_id="vl-eval-dataset")
        split = gr.Radio(["validation", "train"], value="validation", label="Split")
    models = gr.CheckboxGroup(label="Models", choices=[], elem_id="vl-eval-models")
    metrics = gr.CheckboxGroup(METRICS, value=["exact_match", "vqa_accuracy"], label="Metrics")
    with gr.Row():
        run = gr.Button("Run evaluation", variant="primary", elem_id="vl-eval-run")
        refresh = gr.Button("Refresh", elem_id="vl-eval-refresh")
    message = gr.HTML()
    picked = gr.Dropdown(label="Evaluation", choices=[], elem_id="vl-eval-pick")
    only_diff = gr.Checkbox(label="Only samples where the models differ", value=True)
    summary = gr.HTML(elem_id="vl-eval-summary")
    samples = gr.HTML(elem_id="vl-eval-samples")
    download = gr.File(label="Download (JSON lines)", interactive=False)

    def load(request: gr.Request):  # noqa: ANN202
        api = sessions.api(request)
        try:
            ds = [(f"{d['name']} #{d['id']} ({d.get('num_val_samples', 0)} held out)", d["id"]) for d in api.datasets()]
            evs = [(f"#{e['id']} {e['status']} · " + ", ".join(m["label"] for m in e["models"]), e["id"])
                   for e in api.evaluations()]
            return gr.update(choices=ds), gr.update(choices=model_choices(api)), gr.update(choices=evs), ""
        except ApiError as e:
            return gr.update(), gr.update(), gr.update(), notice("error", "Cannot load", esc(e))

    def start(ds_id, split_name, chosen, metric_names, request: gr.Request):  # noqa: ANN001, ANN202
        try:
            ev = sessions.api(request).create_evaluation(int(ds_id), [to_ref(v) for v in chosen or []], split_name,
                                                         metric_names)
            return notice("ok", f"Evaluation {ev['id']} queued")
        except (ApiError, TypeError, ValueError) as e:
            return notice("error", "Cannot start the evaluation", esc(e.pretty() if isinstance(e, ApiError) else e))

    def show(ev_id, only, request: gr.Request):  # noqa: ANN001, ANN202
        if ev_id is None:
            return "", "", None
        api = sessions.api(request)
        try:
            ev = api.evaluation(int(ev_id))
            res = api.evaluation_results(int(ev_id), only_differences=bool(only))
            path = Path(tempfile.mkdtemp()) / f"evaluation-{ev_id}.jsonl"
            path.write_text(api.evaluation_download(int(ev_id)))
            return summary_table(ev), samples_table(res), str(path)
        except ApiError as e:
            return notice("error", "Cannot load the evaluation", esc(e)), "", None

    run.click(start, [dataset, split, models, metrics], message).then(load, None, [dataset, models, picked, message])
    refresh.click(load, None, [dataset, models, picked, message]).then(show, [picked, only_diff],
                                                                       [summary, samples, download])
    picked.change(show, [picked, only_diff], [summary, samples, download])
    only_diff.change(show, [picked, only_diff], [summary, samples, download])
    return refresh, load, [dataset, models, picked, message]


def build_playground(sessions: Sessions):  # noqa: ANN201
    gr.HTML(section("Playground", "Chat with a base model or a fine-tune, with an image, using the training "
                                  "template and tiling. Replies stream token by token."))
    with gr.Row():
        model = gr.Dropdown(label="Model", choices=[], elem_id="vl-chat-model")
        image = gr.Image(label="Image", type="pil", elem_id="vl-chat-image")
    chat = gr.Chatbot(label="Conversation", elem_id="vl-chat")
    text = gr.Textbox(label="Message", placeholder="What colour is the shape?", elem_id="vl-chat-text")
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="vl-chat-send")
        clear = gr.Button("New conversation")

    def load(request: gr.Request):  # noqa: ANN202
        try:
            return gr.update(choices=model_choices(sessions.api(request)))
        except ApiError:
            return gr.update()

    def respond(choice, img, history, message, request: gr.Request):  # noqa: ANN001, ANN202
        history = list(history or [])
        if not choice or not message:
            yield history, message
            return
        kind, *ids = choice.split(":")
        model_id, job_id = (int(ids[0]), None) if kind == "model" else (int(ids[1]), int(ids[0]))
        b64 = None
        if img is not None:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            b64 = base64.b64encode(buf.getvalue()).decode()
        messages = [{"role": m["role"], "content": m["content"]} for m in history] + [
            {"role": "user", "content": message}]
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        try:
            for piece in sessions.api(request).chat_stream(model_id, messages, b64, job_id):
                history[-1]["content"] += piece
                yield history, ""
        except ApiError as e:
            history[-1]["content"] = f"(error: {e})"
            yield history, message

    send.click(respond, [model, image, chat, text], [chat, text])
    text.submit(respond, [model, image, chat, text], [chat, text])
    clear.click(lambda: [], None, chat)
    return load, model
