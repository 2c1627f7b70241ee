"""The Gradio studio. A client of the REST API over HTTP only (see ``ui/client.py``)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ui.client import ApiError, StudioClient

CSS = """
.vl-header {display:flex; align-items:baseline; gap:12px}
.vl-header h1 {margin:0}
#vl-log textarea {font-family: ui-monospace, Menlo, monospace; font-size: 12px}
"""


def _choices(rows: list[dict], label) -> list[tuple[str, int]]:  # noqa: ANN001
    return [(label(r), r["id"]) for r in rows]


def build_ui(api_url: str) -> gr.Blocks:
    client = StudioClient(api_url)

    def dataset_table() -> pd.DataFrame:
        rows = client.datasets()
        return pd.DataFrame([{"id": r["id"], "name": r["name"], "samples": r["num_samples"],
                              "images": r["num_images"], "created": r["created_at"][:19]} for r in rows],
                            columns=["id", "name", "samples", "images", "created"])

    def report_md(ds: dict) -> str:
        rep = ds.get("report", {})
        counts = rep.get("counts") or {}
        extra = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "no warnings"
        return (f"**Registered dataset #{ds['id']} `{ds['name']}`**: {ds['num_samples']} samples, "
                f"{ds['num_images']} images. Validation: {extra}.")

    def on_upload(file, name):  # noqa: ANN001, ANN202
        if file is None:
            return gr.update(), "Choose a zip with images and one `.jsonl` annotation first."
        try:
            ds = client.upload_dataset(Path(file), name or None)
        except ApiError as e:
            return dataset_table(), "**The dataset was not registered.**\n\n```\n" + e.pretty() + "\n```"
        return dataset_table(), report_md(ds)

    def on_demo():  # noqa: ANN202
        try:
            ds = client.register_demo_dataset()
        except ApiError as e:
            return dataset_table(), "```\n" + e.pretty() + "\n```"
        return dataset_table(), report_md(ds)

    def train_choices():  # noqa: ANN202
        ds = _choices(client.datasets(), lambda r: f"#{r['id']} {r['name']} ({r['num_samples']} samples)")
        ms = _choices(client.models(), lambda r: f"{r['name']} ({r['template']})")
        return (gr.update(choices=ds, value=ds[0][1] if ds else None),
                gr.update(choices=ms, value=ms[0][1] if ms else None))

    presets: dict = {}

    def on_preset(name):  # noqa: ANN001, ANN202
        if not presets:  # fetched lazily: in the embedded mode the API starts after the UI is built
            presets.update(client.presets())
        vals = {**presets["defaults"], **presets["presets"].get(name, {})}
        return (vals["max_steps"], vals["learning_rate"], vals["per_device_batch_size"], vals["nproc_per_node"],
                vals["zero_stage"], vals["max_dynamic_patch"])

    def on_start(ds_id, model_id, preset, steps, lr, bs, nproc, zero, mdp):  # noqa: ANN001, ANN202
        if ds_id is None or model_id is None:
            return "Pick a dataset and a model first.", gr.update()
        try:
            job = client.create_job(int(ds_id), int(model_id), preset, {
                "max_steps": int(steps), "learning_rate": float(lr), "per_device_batch_size": int(bs),
                "nproc_per_node": int(nproc), "zero_stage": int(zero), "max_dynamic_patch": int(mdp)})
        except ApiError as e:
            return "**The job was not created.**\n\n```\n" + e.pretty() + "\n```", gr.update()
        return (f"Job **#{job['id']}** queued. Follow it on the *Jobs* tab.",
                gr.update(choices=job_choices(), value=job["id"]))

    def job_choices() -> list[tuple[str, int]]:
        return _choices(client.jobs(), lambda r: f"#{r['id']} {r['status']} ({r['preset']})")

    def job_view(job_id):  # noqa: ANN001, ANN202
        if job_id is None:
            return "No job selected.", "", None, 0
        job = client.job(int(job_id))
        logs = client.logs(int(job_id), limit=5000)
        metrics = client.metrics(int(job_id))
        total = job["total_steps"] or 0
        pct = 100.0 * job["step"] / total if total else 0.0
        status = (f"### Job #{job['id']}: {job['status']}\nstep {job['step']} / {total or '?'}"
                  + (f"\n\n**Failure:** {job['failure_reason'].splitlines()[0]}" if job.get("failure_reason") else ""))
        df = pd.DataFrame([{"step": m["step"], "loss": m["loss"]} for m in metrics if m["loss"] is not None],
                          columns=["step", "loss"])
        return status, "\n".join(r["line"] for r in logs[-2000:]), df, pct

    with gr.Blocks(title="vlstudio") as demo:
        gr.HTML("<div class='vl-header'><h1>vlstudio</h1><span>fine-tune InternVL vision-language models</span></div>")
        with gr.Tab("Datasets"):
            gr.Markdown("Upload a **zip** with your images and one **`.jsonl`** annotation file in the InternVL "
                        "format, or register the built-in coloured-shapes demo dataset.")
            with gr.Row():
                up = gr.File(label="Dataset zip", file_types=[".zip"], elem_id="vl-upload")
                with gr.Column():
                    ds_name = gr.Textbox(label="Name (optional)")
                    up_btn = gr.Button("Upload and validate", variant="primary", elem_id="vl-upload-btn")
                    demo_btn = gr.Button("Use the demo dataset", elem_id="vl-demo-btn")
            ds_msg = gr.Markdown(elem_id="vl-ds-msg")
            ds_table = gr.Dataframe(label="Registered datasets", interactive=False)
        with gr.Tab("Train") as train_tab:
            with gr.Row():
                ds_dd = gr.Dropdown(label="Dataset", elem_id="vl-ds-dd")
                model_dd = gr.Dropdown(label="Model", elem_id="vl-model-dd")
                preset_dd = gr.Dropdown(label="Preset", elem_id="vl-preset-dd")
            with gr.Row():
                steps = gr.Number(label="Max steps (-1: epochs)", precision=0)
                lr = gr.Number(label="Learning rate")
                bs = gr.Number(label="Batch size per process", precision=0)
                nproc = gr.Number(label="Processes", precision=0)
                zero = gr.Dropdown(label="ZeRO stage", choices=[0, 1, 2, 3])
                mdp = gr.Number(label="max_dynamic_patch", precision=0)
            start = gr.Button("Start training", variant="primary", elem_id="vl-start")
            start_msg = gr.Markdown(elem_id="vl-start-msg")
        with gr.Tab("Jobs") as jobs_tab:
            job_dd = gr.Dropdown(label="Job", elem_id="vl-job-dd")
            with gr.Row():
                with gr.Column(scale=1):
                    job_status = gr.Markdown(elem_id="vl-job-status")
                    progress = gr.Slider(label="Progress %", minimum=0, maximum=100, interactive=False)
                    cancel = gr.Button("Cancel job", variant="stop")
                with gr.Column(scale=2):
                    loss_plot = gr.LinePlot(x="step", y="loss", title="Training loss", height=260,
                                            elem_id="vl-loss")
            log_box = gr.Textbox(label="Log", lines=18, max_lines=18, autoscroll=True, elem_id="vl-log")
            timer = gr.Timer(1.0)

        def init():  # noqa: ANN202
            on_preset("demo")
            names = list(presets["presets"])
            return (dataset_table(), gr.update(choices=names, value="demo"), *on_preset("demo"))

        demo.load(init, outputs=[ds_table, preset_dd, steps, lr, bs, nproc, zero, mdp])
        up_btn.click(on_upload, [up, ds_name], [ds_table, ds_msg])
        demo_btn.click(on_demo, None, [ds_table, ds_msg])
        train_tab.select(train_choices, None, [ds_dd, model_dd])
        preset_dd.change(on_preset, preset_dd, [steps, lr, bs, nproc, zero, mdp])
        start.click(on_start, [ds_dd, model_dd, preset_dd, steps, lr, bs, nproc, zero, mdp], [start_msg, job_dd])
        jobs_tab.select(lambda: gr.update(choices=job_choices()), None, job_dd)
        job_dd.change(job_view, job_dd, [job_status, log_box, loss_plot, progress])
        timer.tick(job_view, job_dd, [job_status, log_box, loss_plot, progress])
        cancel.click(lambda j: client.cancel(int(j)) and None if j is not None else None, job_dd, None)
    return demo

