"""Train page: model, dataset and preset, then the switches. Every value shown comes from
``GET /api/presets`` (the defaults of ``Hyperparameters`` and the preset's values); this file
only decides the layout. The job is sent as preset + the switches the user changed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import gradio as gr

from ui.client import ApiError
from ui.pages import meta_builder
from ui.pages.jobs import JobsPage
from ui.session import Sessions
from ui.widgets import JOB_URL_JS, cards, esc, notice, number, section

#: layout only: (group, [(field, widget)]). Fields the API's schema lacks are hidden.
GROUPS: list[tuple[str, list[tuple[str, str]]]] = [
    ("What to train", [("freeze_backbone", "check"), ("freeze_mlp", "check"), ("freeze_llm", "check"),
                       ("use_llm_lora", "int"), ("use_backbone_lora", "int"), ("lora_alpha", "int"),
                       ("merge_lora", "check"), ("grad_checkpoint", "check")]),
    ("Optimisation", [("learning_rate", "float"), ("num_train_epochs", "float"), ("max_steps", "int"),
                      ("warmup_ratio", "float"), ("weight_decay", "float"), ("lr_scheduler_type", "choice")]),
    ("Batch and length", [("per_device_batch_size", "int"), ("global_batch_size", "int"),
                          ("max_seq_length", "int"), ("max_dynamic_patch", "int")]),
    ("Hardware", [("gpus", "int"), ("nproc_per_node", "int"), ("zero_stage", "choice")]),
    ("Speed", [("packing", "check"), ("liger_kernels", "check"), ("fused_cross_entropy", "check"),
               ("torch_compile", "check")]),
]
FIELDS = [f for _, group in GROUPS for f in group]
#: friendlier names than the field names (help text comes from the schema's descriptions)
LABELS = {"freeze_backbone": "Freeze vision tower", "freeze_mlp": "Freeze MLP projector", "freeze_llm": "Freeze LLM",
          "use_llm_lora": "LLM LoRA rank", "use_backbone_lora": "Vision LoRA rank", "lora_alpha": "LoRA alpha",
          "merge_lora": "Merge LoRA into the model", "grad_checkpoint": "Gradient checkpointing",
          "num_train_epochs": "Epochs", "lr_scheduler_type": "LR schedule",
          "per_device_batch_size": "Batch size per device", "max_seq_length": "Max sequence length",
          "max_dynamic_patch": "Max tiles per image", "gpus": "GPUs", "nproc_per_node": "Processes per node",
          "zero_stage": "ZeRO stage", "packing": "Pack samples (no padding)", "liger_kernels": "Liger kernels (GPU)",
          "fused_cross_entropy": "Fused cross-entropy (GPU)", "torch_compile": "torch.compile the LLM"}


@dataclass
class TrainPage:
    refresh: object  # (request) -> updates of the model / dataset / preset pickers
    pickers: list


def _label(field: str) -> str:
    return LABELS.get(field) or field.replace("_", " ").capitalize()


def _widget(field: str, kind: str) -> gr.components.Component:
    eid = f"vl-hp-{field}"
    if kind == "check":
        return gr.Checkbox(label=_label(field), elem_id=eid, visible=False)
    if kind == "choice":
        return gr.Dropdown(label=_label(field), elem_id=eid, visible=False, choices=[])
    return gr.Number(label=_label(field), elem_id=eid, visible=False, precision=0 if kind == "int" else None)


def _choices_of(schema: dict, field: str) -> list:
    prop = (schema.get("properties") or {}).get(field) or {}
    for option in [prop, *prop.get("anyOf", []), *prop.get("allOf", [])]:
        if "enum" in option:
            return option["enum"]
        if "$ref" in option:
            ref = option["$ref"].rsplit("/", 1)[-1]
            return (schema.get("$defs") or {}).get(ref, {}).get("enum", [])
    return []


def resolved(presets: dict, preset: str) -> dict:
    return {**presets["defaults"], **presets["presets"].get(preset, {})}


DATA_CHOICES = ["One dataset", "Mixture (meta file builder on the Datasets page)"]


def mixture_request(frame, meta_path: str | None, meta_base: str | None) -> dict:  # noqa: ANN001
    """The job's ``mixture`` from the meta builder's table and an optional meta file on the server."""
    out: dict = {"datasets": meta_builder.request_from(frame) if frame is not None else []}
    if (meta_path or "").strip():
        out["meta_path"] = meta_path.strip()
        if (meta_base or "").strip():
            out["meta_base"] = meta_base.strip()
    return out


def _data_picker(mixture_grid) -> tuple:  # noqa: ANN001
    """Where the job's data comes from: the dataset picker, or the meta builder (plus a meta file)."""
    with gr.Row():
        source = gr.Radio(DATA_CHOICES, value=DATA_CHOICES[0], label="Train on", elem_id="vl-data-source",
                          visible=mixture_grid is not None)
        meta_path = gr.Textbox(label="Meta file on shared storage (optional)", elem_id="vl-meta-path",
                               placeholder="/shared/internvl_chat/shell/data/internvl_1_2_finetune.json",
                               visible=False)
        meta_base = gr.Textbox(label="Its relative paths resolve from (empty: its folder)", elem_id="vl-meta-base",
                               visible=False)
    shown = [meta_path, meta_base]
    source.change(lambda v: [gr.update(visible=v == DATA_CHOICES[1])] * 2, source, shown)
    return source, meta_path, meta_base


def build(sessions: Sessions, jobs: JobsPage, tabs: gr.Tabs, mixture_grid=None) -> TrainPage:  # noqa: ANN001
    gr.HTML(section("New fine-tune", "Pick a model, a dataset and a preset (the seed's recipes); change any "
                                     "switch. Defaults come from the server."))
    with gr.Row():
        model = gr.Dropdown(label="Model", elem_id="vl-model-dd")
        dataset = gr.Dropdown(label="Dataset", elem_id="vl-ds-dd")
        preset = gr.Dropdown(label="Preset", elem_id="vl-preset-dd")
    source, meta_path, meta_base = _data_picker(mixture_grid)
    widgets: dict[str, gr.components.Component] = {}
    with gr.Row(equal_height=False):
        for title, group in GROUPS:
            with gr.Column(min_width=220, variant="panel"):
                gr.HTML(f"<div class='vl-h3'>{esc(title)}</div>")
                for field, kind in group:
                    widgets[field] = _widget(field, kind)
    estimate = gr.HTML(elem_id="vl-estimate")
    start = gr.Button("Start training", variant="primary", size="lg", elem_id="vl-start")
    msg = gr.HTML(elem_id="vl-start-msg")
    presets_state = gr.State({})

    def fill(p: dict, name: str) -> list:
        vals = resolved(p, name)
        return [gr.update(value=vals.get(f), visible=f in vals, info=_info(p, f),
                          **({"choices": _choices_of(p["schema"], f)} if k == "choice" else {}))
                for f, k in FIELDS]

    def refresh(request: gr.Request) -> list:
        api = sessions.api(request)
        try:
            p, models, datasets = api.presets(), api.models(), api.datasets()
        except ApiError as e:
            return [{}, gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * len(FIELDS),
                    notice("error", "Cannot reach the API", esc(e))]
        ms = [(f"{m['name']} · {m.get('template', '')}", m["id"]) for m in models]
        ds = [(f"#{d['id']} {d['name']} ({d['num_samples']} samples)", d["id"]) for d in datasets]
        names = list(p["presets"])
        first = names[0] if names else None
        return [p, gr.update(choices=ms, value=ms[0][1] if ms else None),
                gr.update(choices=ds, value=ds[0][1] if ds else None),
                gr.update(choices=names, value=first), *fill(p, first), ""]

    def on_preset(p: dict, name: str) -> list:
        return fill(p, name) if p and name else [gr.skip()] * len(FIELDS)

    def on_start(data: dict, request: gr.Request) -> dict:
        p, model_id, ds_id, name = data[presets_state], data[model], data[dataset], data[preset]
        values = [data[widgets[f]] for f, _ in FIELDS]
        mixture = None
        if data[source] == DATA_CHOICES[1] and mixture_grid is not None:
            mixture = mixture_request(data[mixture_grid], data[meta_path], data[meta_base])
            if not mixture["datasets"] and "meta_path" not in mixture:
                return {msg: notice("info", "The mixture is empty", "<div>Tick datasets in the meta file builder "
                                    "(Datasets page) or give a meta file.</div>")}
            ds_id = None
        if model_id is None or (mixture is None and ds_id is None):
            return {msg: notice("info", "Pick a model and a dataset first",
                                "<div>No dataset yet? Use the demo dataset on the Datasets page.</div>")}
        overrides = _overrides(p, name, values)
        api = sessions.api(request)
        try:
            job = api.create_job(int(ds_id) if ds_id is not None else None, int(model_id), name, overrides, mixture)
        except ApiError as e:
            return {msg: notice("error", "The job was not created", _problems(e))}
        return {msg: notice("ok", f"Job #{job['id']} queued", "<div>Opening it on the Jobs page.</div>"),
                tabs: gr.Tabs(selected="jobs"), **jobs.open_job(request, job["id"])}

    def on_estimate(data: dict, request: gr.Request) -> str:
        p, name = data[presets_state], data[preset]
        if not p or name is None or data[model] is None:
            return ""
        overrides = _overrides(p, name, [data[widgets[f]] for f, _ in FIELDS])
        base = resolved(p, name)
        changes = ", ".join(f"<b>{esc(_label(f))}</b> {esc(base.get(f))} → {esc(v)}" for f, v in overrides.items())
        summary = (f"<div class='vl-changes'>Preset <b>{esc(name)}</b>" + (f" with {len(overrides)} change(s): "
                   f"{changes}" if overrides else ", unchanged") + "</div>")
        api = sessions.api(request)
        try:
            resolved_ = api.resolve(name, overrides, int(data[model]))  # the model's own tiling under the preset
            ds = api.dataset(int(data[dataset])) if data[dataset] else None
            est = api.estimate(int(data[dataset] or 0), int(data[model]), name, overrides)
        except ApiError as e:
            return summary + notice("warn", "These settings are not valid yet", _problems(e))
        return summary + derived_html(resolved_, ds) + estimate_html(est)

    inputs = {presets_state, model, dataset, preset, *widgets.values()}
    gr.on([model.change, dataset.change, preset.change, *[w.change for w in widgets.values()]], on_estimate, inputs, estimate,
          trigger_mode="always_last", show_progress="hidden")
    pickers = [presets_state, model, dataset, preset, *widgets.values(), msg]
    preset.input(on_preset, [presets_state, preset], list(widgets.values()))
    start_inputs = {presets_state, model, dataset, preset, source, meta_path, meta_base, *widgets.values()}
    if mixture_grid is not None:
        start_inputs.add(mixture_grid)
    start.click(on_start, start_inputs, [msg, tabs, *jobs.outputs]).then(None, jobs.job_ref, None, js=JOB_URL_JS)
    return TrainPage(refresh, pickers)


def _overrides(p: dict, name: str, values: list) -> dict:
    """The switches whose value differs from the preset's (what the job is sent as)."""
    base = resolved(p, name)
    return {f: _typed(v, k) for (f, k), v in zip(FIELDS, values, strict=True)
            if f in base and _typed(v, k) != base.get(f)}


def derived_html(res: dict, ds: dict | None) -> str:
    """``POST /api/presets/resolve``'s derived values, plus what they mean for this dataset:
    optimizer steps and tokens per step (marked ≈: from the dataset's mean sample length)."""
    d, h = res.get("derived") or {}, res.get("hyperparameters") or {}
    batch = d.get("effective_global_batch_size")
    items = [("Processes", number(d.get("world_size")), f"precision {d.get('precision', '–')}"),
             ("Gradient accumulation", number(d.get("gradient_accumulation_steps")), "micro-batches per step"),
             ("Global batch", number(batch), "samples per optimizer step")]
    if h.get("max_steps", -1) > 0:
        items.append(("Optimizer steps", number(h["max_steps"]), "max_steps"))
    elif ds and batch:
        steps = math.ceil(ds["num_samples"] / batch) * float(h.get("num_train_epochs", 1))
        items.append(("Optimizer steps", f"≈ {number(math.ceil(steps))}", f"{number(h.get('num_train_epochs'))} "
                      f"epoch(s) of {number(ds['num_samples'])} samples"))
    tokens = ((ds or {}).get("report") or {}).get("stats", {}).get("tokens") or {}
    if tokens and batch:
        per_sample = (tokens.get("mean_text") or 0) + (tokens.get("mean_image") or 0)
        items.append(("Tokens per step", f"≈ {number(round(per_sample * batch))}", "from the mean sample length"))
    return cards(items)


def estimate_html(est: dict) -> str:
    """``POST /api/jobs/estimate``: memory per device, where it goes, and what would lower it."""
    e = est.get("estimate")
    if not e:
        return notice("info", "No memory estimate for this model", f"<div>{esc(est.get('reason', ''))}</div>")
    parts = e.get("parts_gib") or {}
    total = sum(parts.values()) or 1
    colours = ["#6366f1", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#9ca3af"]
    bar = "".join(f"<div title='{esc(k)} {v:.2f} GiB' style='width:{100 * v / total:.1f}%;background:{c}'></div>"
                  for (k, v), c in zip(parts.items(), colours, strict=False))
    legend = " ".join(f"<span><i style='background:{c}'></i>{esc(k)} {v:.2f} GiB</span>"
                      for (k, v), c in zip(parts.items(), colours, strict=False))
    a = e.get("assumptions") or {}
    tips = "".join(f"<li>{esc(t)}</li>" for t in (est.get("suggestions") or [])[:4])
    return (f"<div class='vl-estimate'><div class='vl-h3'>Memory estimate: <b>{e['per_device_gib']} GiB</b> per GPU "
            f"on {e.get('devices', 1)} device(s)</div><div class='vl-stack'>{bar}</div>"
            f"<div class='vl-stack-legend'>{legend}</div><div class='vl-muted' style='font-size:12px'>"
            f"{number(a.get('trainable_params'))} of {number(a.get('total_params'))} parameters train · "
            f"{number(a.get('sequence_tokens'))} tokens per sample · ZeRO-{esc(a.get('zero_stage'))}</div>"
            + (f"<details><summary>How to lower it</summary><ul>{tips}</ul></details>" if tips else "") + "</div>")


def _info(p: dict, field: str) -> str | None:
    return ((p.get("schema") or {}).get("properties") or {}).get(field, {}).get("description")


def _typed(value, kind: str):  # noqa: ANN001, ANN202
    if value is None or value == "":
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return value


def _problems(e: ApiError) -> str:
    items = "".join(f"<li><b>{esc(x.get('field', ''))}</b> {esc(x.get('message', ''))}</li>" if isinstance(x, dict)
                    else f"<li>{esc(x)}</li>" for x in e.errors[:20])
    return f"<div>{esc(e)}</div>" + (f"<ul>{items}</ul>" if items else "")

