"""The meta file builder on the Datasets page (``POST /api/meta``): choose registered datasets,
set ``repeat_time``, ``data_augment`` and ``max_dynamic_patch`` (empty: the job's) per dataset, optionally merge an uploaded mixture (a meta
JSON in the seed's format), see the effective sample counts, download the JSON."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from ui.client import ApiError
from ui.session import Sessions
from ui.widgets import esc, notice, number, table

COLUMNS = ["use", "id", "name", "repeat_time", "data_augment", "max_dynamic_patch"]


def rows_for(datasets: list[dict]) -> pd.DataFrame:
    """One editable row per dataset that is ready to train on (``max_dynamic_patch`` empty: the
    job's tile budget)."""
    ready = [d for d in datasets if d.get("status", "ready") == "ready"]
    return pd.DataFrame([[False, d["id"], d["name"], 1.0, False, None] for d in ready], columns=COLUMNS)


def _tiles(value: object) -> int | None:
    """A cell of the ``max_dynamic_patch`` column: empty (or 0) is the job's budget."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) or number == 0 else int(number)


def request_from(frame: pd.DataFrame) -> list[dict]:
    chosen = frame[frame["use"].astype(bool)] if not frame.empty else frame
    out = []
    for _, r in chosen.iterrows():
        d = {"dataset_id": int(r["id"]), "name": str(r["name"]), "repeat_time": float(r["repeat_time"]),
             "data_augment": bool(r["data_augment"])}
        tiles = _tiles(r.get("max_dynamic_patch"))
        if tiles is not None:
            d["max_dynamic_patch"] = tiles
        out.append(d)
    return out


def summary_html(summary: dict) -> str:
    rows = [[esc(r["name"]), number(r["length"]), number(r["repeat_time"]), f"<b>{number(r['effective'])}</b>"]
            for r in summary.get("datasets", [])]
    rows.append(["<b>total</b>", number(summary.get("length")), "", f"<b>{number(summary.get('effective'))}</b>"])
    return table(["Dataset", "Samples", "repeat_time", "Samples per epoch"], rows)


def build(sessions: Sessions) -> tuple[gr.Dataframe, object]:
    """The builder inside an accordion; returns the table and its (request) -> rows loader."""
    with gr.Accordion("Meta file builder: mix datasets for training", open=False, elem_id="vl-meta"):
        gr.HTML("<div class='vl-muted' style='font-size:13px'>Tick the datasets to mix, set how often each is "
                "repeated per epoch (<code>repeat_time</code>, below 1 samples a part), whether its images "
                "are augmented and its own tile budget (<code>max_dynamic_patch</code>, empty: the job's). Optionally merge a mixture you already have. To train on the ticked datasets, "
                "choose <b>Mixture</b> on the Train page.</div>")
        grid = gr.Dataframe(headers=COLUMNS, datatype=["bool", "number", "str", "number", "bool", "number"],
                            interactive=True, elem_id="vl-meta-grid", column_count=(6, "fixed"))
        with gr.Row():
            mixture = gr.File(label="Merge with a mixture (meta .json, optional)", file_types=[".json"],
                              elem_id="vl-meta-mixture", height=90)
            conflict = gr.Dropdown(label="Same name in both", choices=["error", "rename", "replace"], value="error",
                                   elem_id="vl-meta-conflict")
        go = gr.Button("Build meta file", variant="primary", elem_id="vl-meta-btn")
        out = gr.HTML(elem_id="vl-meta-out")
        code = gr.Code(language="json", label="meta.json", visible=False, elem_id="vl-meta-json")
        download = gr.File(label="Download", visible=False, elem_id="vl-meta-file")

    def load(request: gr.Request) -> pd.DataFrame:
        try:
            return rows_for(sessions.api(request).datasets())
        except ApiError:
            return gr.skip()

    def on_build(frame: pd.DataFrame, mix: str | None, on_conflict: str, request: gr.Request) -> list:
        chosen = request_from(frame)
        mixture_json = None
        if mix:
            try:
                mixture_json = json.loads(Path(mix).read_text())
            except (OSError, ValueError) as e:
                return [notice("error", "The mixture is not a JSON file", f"<div>{esc(e)}</div>"), gr.skip(),
                        gr.skip()]
        if not chosen and mixture_json is None:
            return [notice("info", "Tick at least one dataset"), gr.Code(visible=False), gr.File(visible=False)]
        try:
            res = sessions.api(request).build_meta(chosen, mixture_json, on_conflict)
        except ApiError as e:
            items = "".join(f"<li>{esc(x.get('message', x) if isinstance(x, dict) else x)}</li>" for x in e.errors[:20])
            return [notice("error", "The meta file was not built", f"<div>{esc(e)}</div><ul>{items}</ul>"),
                    gr.Code(visible=False), gr.File(visible=False)]
        text = json.dumps(res["meta"], indent=2, ensure_ascii=False) + "\n"
        path = Path(tempfile.mkdtemp(prefix="vlstudio-meta-")) / "meta.json"
        path.write_text(text)
        return [summary_html(res.get("summary") or {}), gr.Code(value=text, visible=True),
                gr.File(value=str(path), visible=True)]

    go.click(on_build, [grid, mixture, conflict], [out, code, download])
    return grid, load
