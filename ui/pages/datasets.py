"""Datasets page: upload (drag and drop a zip, or images + one JSONL), the validation report
(problems with line numbers, statistics, histograms), the registered datasets, and the sample
preview."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ui.bundle import BundleError, bundle
from ui.client import ApiError, StudioClient
from ui.pages import meta_builder, preview_view
from ui.pages import report_view as rv
from ui.session import Sessions
from ui.widgets import notice, section


@dataclass
class DatasetsPage:
    list_html: gr.HTML
    selected: gr.State
    refresh: object  # (selected, request) -> list HTML
    pickers: list  # the model picker and the meta builder's table
    fill: object  # (request) -> their choices


def _settled(api: StudioClient, ds: dict, progress: gr.Progress) -> dict:
    """A large annotation is validated in the background (202, ``status: validating``): follow
    its progress until it is ready, failed or cancelled."""
    while ds.get("status") == "validating":
        done = float(ds.get("progress") or 0.0)
        progress(0.2 + 0.8 * done, desc=f"Validating “{ds['name']}”: {done:.0%}")
        time.sleep(0.5)
        ds = api.dataset(ds["id"])
    return ds


def build(sessions: Sessions) -> DatasetsPage:
    gr.HTML(section("Datasets", "Images with one JSONL annotation in the InternVL format. Every upload is "
                                "validated line by line before it is registered."))
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            files = gr.File(label="Drop a .zip, or images together with one .jsonl", file_count="multiple",
                            file_types=[".zip", ".jsonl", "image"], elem_id="vl-upload", height=200)
        with gr.Column(scale=2, min_width=260):
            name = gr.Textbox(label="Name", placeholder="defaults to the file name", elem_id="vl-ds-name")
            check_model = gr.Dropdown(label="Also check token lengths with", choices=[("don't check tokens", 0)],
                                      value=0,
                                      elem_id="vl-ds-check-model",
                                      info="the model's template and tokenizer (optional, slower)")
            check_preset = gr.Dropdown(label="…as this preset trains it", choices=["demo"], value="demo",
                                       elem_id="vl-ds-check-preset",
                                       info="its tiles per image and max sequence length; the model's own "
                                            "where the preset sets none")
            upload = gr.Button("Upload and validate", variant="primary", elem_id="vl-upload-btn")
            demo = gr.Button("Use the demo dataset (coloured shapes)", elem_id="vl-demo-btn")
    with gr.Accordion("Validation split, sequence length, bad lines", open=True, elem_id="vl-ds-options"):
        with gr.Row(equal_height=False):
            val_fraction = gr.Slider(0, 0.5, value=0.0, step=0.05, label="Hold out for validation",
                                     info="the share of samples the Evaluate page and the eval loss use (seeded); or a "
                                          "validation .jsonl beside, its images in the same folder",
                                     elem_id="vl-ds-val-fraction")
            val_file = gr.File(label="…or a validation .jsonl", file_types=[".jsonl"],
                               elem_id="vl-ds-val-file", height=180)
            # no minimum: an empty box (not filled from the preset yet) is sent as 0, "not set", and a
            # bound here would fail the upload event before it starts; the API bounds the value
            max_len = gr.Number(value=None, precision=0, label="Max sequence length",
                                info="with a model above: samples longer than this are named (training "
                                     "truncates them, or drops those it cannot cut)", elem_id="vl-ds-max-len")
            drop_bad = gr.Checkbox(label="Drop the lines with errors", value=False, elem_id="vl-ds-drop",
                                   info="register the other lines instead of refusing the upload")
    result = gr.HTML(elem_id="vl-ds-result")
    gr.HTML("<div class='vl-h3'>Registered datasets</div>")
    list_html = gr.HTML(elem_id="vl-ds-list", js_on_load=(
        "element.addEventListener('click', (e) => { const r = e.target.closest('[data-ds]');"
        " if (r) trigger('select', {index: parseInt(r.dataset.ds), value: r.dataset.ds}); });"))
    selected = gr.State(None)
    with gr.Column(visible=False, elem_id="vl-ds-detail") as detail:
        title = gr.HTML(elem_id="vl-ds-title")
        summary = gr.HTML(elem_id="vl-ds-summary")
        hists = gr.HTML(elem_id="vl-ds-hists")
        issues = gr.HTML(elem_id="vl-ds-issues")
        stats = gr.HTML(elem_id="vl-ds-stats")
        preview_view.build_controls(sessions, selected)
    meta_grid, meta_load = meta_builder.build(sessions)

    detail_outputs = [selected, detail, title, summary, hists, issues, stats]

    def show(api: StudioClient, ds_id: int) -> list:
        ds = api.dataset(ds_id)
        report = ds.get("report") or {}
        issues_list = report.get("issues") or []
        title_html = (f"<div class='vl-jobhead'><h2>#{ds['id']} {rv.esc(ds['name'])}</h2></div>"
                      f"<div class='vl-jobmeta vl-mono'>{rv.esc(report.get('annotation', ''))}</div>")
        return [ds_id, gr.Column(visible=True), title_html, rv.summary_html(ds), rv.histograms_html(report),
                "<div class='vl-h3'>Problems found</div>" + rv.issues_table(issues_list),
                rv.stats_html(report)]

    def refresh(sel: int | None, request: gr.Request) -> str:
        try:
            return rv.datasets_table(sessions.api(request).datasets(), sel)
        except ApiError as e:
            return notice("error", "Cannot load the datasets", str(e))

    def on_upload(paths: list[str] | None, ds_name: str, model_id: int | None, preset: str | None,  # noqa: PLR0913
                  fraction: float, val_path: str | None, max_seq: float | None, drop: bool, request: gr.Request,
                  progress: gr.Progress = gr.Progress()) -> list:  # noqa: B008
        if not paths:
            return [notice("info", "Choose files first", "<div>Drop a zip, or images with one .jsonl file.</div>"),
                    *[gr.skip()] * len(detail_outputs)]
        api = sessions.api(request)
        progress(0.1, desc="Packing the upload")
        with tempfile.TemporaryDirectory(prefix="vlstudio-upload-") as tmp:
            try:
                zpath = bundle([Path(p) for p in paths], Path(tmp))
                progress(0.2, desc="Uploading and validating every line")
                opts = upload_options(model_id, fraction, val_path, max_seq, drop, preset=preset)
                ds = _settled(api, api.upload_dataset(zpath, ds_name or None, model_id or None, **opts), progress)
            except BundleError as e:
                return [notice("error", "Cannot upload these files", f"<div>{rv.esc(e)}</div>"),
                        *[gr.skip()] * len(detail_outputs)]
            except ApiError as e:
                return [rv.rejected_html(str(e), e.errors), None, gr.Column(visible=False),
                        *[gr.skip()] * (len(detail_outputs) - 2)]
        progress(1.0, desc="Done")
        if ds.get("status", "ready") != "ready":
            return [rv.unsettled_html(ds), *[gr.skip()] * len(detail_outputs)]
        return [rv.registered_html(ds) + rv.length_warning(ds), *show(api, ds["id"])]

    def on_demo(fraction: float, request: gr.Request, progress: gr.Progress = gr.Progress()) -> list:  # noqa: B008
        api = sessions.api(request)
        progress(0.2, desc="Generating and validating the demo dataset")
        try:
            ds = api.register_demo_dataset(float(fraction or 0))
        except ApiError as e:
            return [rv.rejected_html(str(e), e.errors), *[gr.skip()] * len(detail_outputs)]
        return [rv.registered_html(ds), *show(api, ds["id"])]

    def on_select(evt: gr.SelectData, request: gr.Request) -> list:
        try:
            return ["", *show(sessions.api(request), int(evt.index))]
        except ApiError as e:
            return [notice("error", "Cannot open the dataset", str(e)), *[gr.skip()] * len(detail_outputs)]

    upload.click(on_upload, [files, name, check_model, check_preset, val_fraction, val_file, max_len, drop_bad],
                 [result, *detail_outputs]).then(
        refresh, selected, list_html).then(meta_load, None, meta_grid)
    demo.click(on_demo, val_fraction, [result, *detail_outputs]).then(refresh, selected, list_html).then(
        meta_load, None, meta_grid)
    list_html.select(on_select, None, [result, *detail_outputs]).then(refresh, selected, list_html)
    def fill_models(request: gr.Request) -> dict:
        try:
            models = sessions.api(request).models()
        except ApiError:
            return gr.skip()
        return gr.Dropdown(choices=[("don't check tokens", 0)] + [(m["name"], m["id"]) for m in models])

    def preset_length(request: gr.Request, preset: str | None) -> dict:
        """The max_seq_length a run of ``preset`` trains with, from the API."""
        try:
            p = sessions.api(request).presets()
        except ApiError:
            return gr.skip()
        return gr.Number(value=(p.get("presets", {}).get(preset or "demo") or {}).get("max_seq_length")
                         or p.get("defaults", {}).get("max_seq_length"))

    def fill_presets(request: gr.Request) -> dict:
        try:
            names = list(sessions.api(request).presets().get("presets", {}))
        except ApiError:
            return gr.skip()
        return gr.Dropdown(choices=names)

    def fill(request: gr.Request) -> list:
        return [fill_models(request), meta_load(request), preset_length(request, "demo"), fill_presets(request)]

    def on_preset(preset: str | None, request: gr.Request) -> dict:
        return preset_length(request, preset)

    check_preset.input(on_preset, check_preset, max_len)
    return DatasetsPage(list_html, selected, refresh, [check_model, meta_grid, max_len, check_preset], fill)


def upload_options(model_id: int | None, fraction: float | None, val_path: str | None, max_seq: float | None,
                   drop: bool, preset: str | None = None) -> dict:
    """The upload's form fields. The length check is the training program's rule: samples over
    ``max_seq_length`` are truncated (a warning naming them) or, where no cut works, refused; the
    tiles per image are the ones a run of ``preset`` on the model uses."""
    opts: dict = {"drop_bad_lines": bool(drop)}
    if val_path:
        opts["validation"] = Path(val_path)
    elif fraction:
        opts["val_fraction"] = float(fraction)
    if model_id and max_seq:
        opts.update(max_seq_length=int(max_seq), truncation="truncate")
    if model_id and preset:
        opts["preset"] = preset
    return opts

