"""Models page: the registered base checkpoints with family, size, template and parameter
count (from the API's ``info``; unknown values show as a dash, never a guess), and the import of
a checkpoint folder with its progress as the worker converts it, its result or error, and cancel."""

from __future__ import annotations

import time

import gradio as gr

from ui.client import ApiError
from ui.session import Sessions
from ui.widgets import badge, duration, esc, notice, number, progress_bar, section, table

#: how often the page asks the API about a running import
IMPORT_POLL_SECONDS = 0.5


def _params(info: dict) -> str:
    for key in ("num_parameters", "parameters", "param_count"):
        if isinstance(info.get(key), int | float):
            n = float(info[key])
            return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else number(int(n))
    return "–"


def _size(info: dict) -> str:
    if info.get("size"):
        return str(info["size"])
    if info.get("text_layers") and info.get("vision_layers"):
        return (f"ViT {info['vision_layers']}×{info.get('vision_hidden_size', '?')} · "
                f"LLM {info['text_layers']}×{info.get('text_hidden_size', '?')}")
    return "–"


def models_table(models: list[dict]) -> str:
    rows = []
    for m in models:
        info = m.get("info") or {}
        kind = badge("info", "built-in") if m.get("builtin") else badge("valid", "imported")
        rows.append([f"<b>{esc(m['name'])}</b><div class='vl-muted' style='font-size:12px'>"
                     f"{esc(info.get('description', ''))}</div>", kind, esc(m.get("family")),
                     esc(_size(info)), f"<span class='vl-mono'>{esc(m.get('template'))}</span>",
                     _params(info), esc(info.get("max_dynamic_patch", "–"))])
    return table(["Model", "Source", "LLM family", "Size", "Template", "Parameters", "Max tiles"], rows,
                 "No models registered.")


def summary_html(s: dict) -> str:
    """``POST /api/models/inspect``'s facts (what ``vlstudio models info`` prints)."""
    p, t = s["parameters"], s["tiling"]
    rows = [["Format", esc(s["format"])],
            ["Family", f"{esc(s['family'] or 'unknown')} ({esc(s['architecture'])}, runs as {esc(s['runs_as'])})"],
            ["Template", f"<span class='vl-mono'>{esc(s['template'] or 'unknown')}</span>"],
            ["Parameters", f"{number(p['total'])}: vision {number(p['vision'])} · projector "
                           f"{number(p['projector'])} · language model {number(p['language_model'])}"],
            ["Tiling", f"{t['image_size']} px tiles, {t['tokens_per_tile']} tokens per tile, "
                       f"{t['min_dynamic_patch']}–{t['max_dynamic_patch']} tiles, thumbnail "
                       f"{'on' if t['use_thumbnail'] else 'off'}"]]
    return table(["", s["path"]], rows, "")


def import_progress_html(imp: dict, elapsed: float) -> str:
    """A running import: its status, the share of the weights written and the worker's message."""
    waiting = {"queued": "waiting for a worker", "cancelling": "cancelling"}.get(imp["status"], "converting")
    pct = f"{100 * (imp.get('progress') or 0):.0f}%"
    caption = f"{esc(waiting)} · {pct} of the weights written · {duration(elapsed)}"
    if imp.get("message"):
        caption += f" · <span class='vl-mono'>{esc(imp['message'])}</span>"
    return (f"<div id='vl-import-progress' data-status='{esc(imp['status'])}'><div class='vl-notice-title'>Importing "
            f"{esc(imp.get('name') or imp.get('src'))}</div>{progress_bar(imp.get('progress') or 0, caption)}</div>")


def import_result_html(imp: dict, model: dict | None) -> str:
    """A finished import: the model registered, the error, or the cancel."""
    if imp["status"] == "done" and model is not None:
        return notice("ok", f"Imported {model['name']}", f"{esc(model['family'])} · template {esc(model['template'])}")
    if imp["status"] == "cancelled":
        return notice("info", "Import cancelled", esc(imp.get("message") or "nothing was kept"))
    return notice("error", "The model was not imported", esc(imp.get("error") or imp.get("message") or imp["status"]))


def build(sessions: Sessions):  # noqa: ANN201
    gr.HTML(section("Models", "Base checkpoints you can fine-tune."))
    listing = gr.HTML(elem_id="vl-models-list")
    gr.HTML("<div class='vl-h3'>Import a checkpoint</div><div class='vl-muted' style='font-size:13px'>A folder "
            "on the server, under the data roots the administrator allows (<code>VLSTUDIO_DATA_ROOTS</code>): an "
            "original InternVL checkpoint such as Mini-InternVL-Chat-2B-V1-5 is converted to the native format, a "
            "transformers-native one is checked. Code shipped in the folder is never executed. From a shell: "
            "<code>vlstudio models import PATH</code>.</div>")
    with gr.Row():
        path = gr.Textbox(label="Checkpoint folder", placeholder="/shared/models/Mini-InternVL-Chat-2B-V1-5",
                          elem_id="vl-import-path", scale=3)
        name = gr.Textbox(label="Name (optional)", elem_id="vl-import-name", scale=1)
        look = gr.Button("Inspect", elem_id="vl-inspect-btn", scale=1)
        go = gr.Button("Import", variant="primary", elem_id="vl-import-btn", scale=1)
        stop = gr.Button("Cancel import", variant="stop", elem_id="vl-import-cancel", scale=1, visible=False)
    result = gr.HTML(elem_id="vl-import-msg")
    running = gr.State(None)  # the id of the import this page follows

    def do_inspect(p: str, request: gr.Request) -> str:
        try:
            return summary_html(sessions.api(request).inspect_model((p or "").strip()))
        except ApiError as e:
            return notice("error", "Cannot read this folder", esc(e))

    def refresh(request: gr.Request) -> str:
        try:
            return models_table(sessions.api(request).models())
        except ApiError as e:
            return notice("error", "Cannot load the models", esc(e))

    def do_import(p: str, n: str, request: gr.Request):  # noqa: ANN202
        """Start the import, then follow it until it ends: progress, then the result or the error."""
        hidden = gr.update(visible=False)
        if not (p or "").strip():
            yield (notice("error", "No folder given", "Enter the checkpoint folder's path on the server."),
                   gr.update(), None, hidden)
            return
        api = sessions.api(request)
        try:
            imp = api.start_import(p.strip(), (n or "").strip() or None)
        except ApiError as e:
            yield notice("error", "The model was not imported", esc(e)), gr.update(), None, hidden
            return
        t0 = time.monotonic()
        while imp["status"] not in ("done", "failed", "cancelled"):
            yield import_progress_html(imp, time.monotonic() - t0), gr.update(), imp["id"], gr.update(visible=True)
            time.sleep(IMPORT_POLL_SECONDS)
            try:
                imp = api.model_import(imp["id"])
            except ApiError as e:
                yield notice("error", "Lost track of the import", esc(e)), gr.update(), None, hidden
                return
        try:
            model = next((m for m in api.models() if m["id"] == imp.get("model_id")), None)
        except ApiError:
            model = None
        yield import_result_html(imp, model), refresh(request), None, hidden

    def do_cancel(import_id: int | None, request: gr.Request) -> None:
        if import_id is not None:
            try:
                sessions.api(request).cancel_import(import_id)
            except ApiError:  # it ended meanwhile: the import's own result says how
                return

    look.click(do_inspect, [path], [result])
    go.click(do_import, [path, name], [result, listing, running, stop], show_progress="hidden")
    stop.click(do_cancel, [running], [])
    return listing, refresh
