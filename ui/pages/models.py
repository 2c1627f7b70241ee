"""Models page: the registered base checkpoints with family, size, template and parameter
count (from the API's ``info``; unknown values show as a dash, never a guess)."""

from __future__ import annotations

import gradio as gr

from ui.client import ApiError
from ui.session import Sessions
from ui.widgets import badge, esc, notice, number, section, table


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
    result = gr.HTML(elem_id="vl-import-msg")

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
        if not (p or "").strip():
            return notice("error", "No folder given", "Enter the checkpoint folder's path on the server."), gr.update()
        try:
            m = sessions.api(request).import_model(p.strip(), (n or "").strip() or None)
        except ApiError as e:
            return notice("error", "The model was not imported", esc(e)), gr.update()
        return (notice("ok", f"Imported {m['name']}", f"{esc(m['family'])} · template {esc(m['template'])}"),
                refresh(request))

    look.click(do_inspect, [path], [result])
    go.click(do_import, [path, name], [result, listing])
    return listing, refresh
