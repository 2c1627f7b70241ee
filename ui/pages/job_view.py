"""Pure rendering of a job for the Jobs page: header, progress with ETA, metric cards, plot
frames and the jobs table. Inputs are the API's JSON; outputs are HTML strings or DataFrames."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from ui.pages.mixture_view import data_label, mixture_html
from ui.widgets import ACTIVE, ago, badge, cards, duration, esc, number, parse_time, progress_bar, table

#: weight of the exponential moving average drawn over the raw loss (TensorBoard's default look)
SMOOTHING = 0.6
#: plots draw at most this many points (evenly thinned); the cards always show the last values
MAX_POINTS = 1500
#: series a run may not record (no GPU, a run from before the speed telemetry): hidden when empty
OPTIONAL_SERIES = ("gpu_memory_gib", "mfu", "packing_efficiency", "dataloader_wait_fraction")


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average, as TensorBoard draws it."""
    out, avg = [], 0.0
    for k, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** k))
    return out


def _thin(rows: list[dict]) -> list[dict]:
    if len(rows) <= MAX_POINTS:
        return rows
    stride = len(rows) / MAX_POINTS
    return [rows[int(k * stride)] for k in range(MAX_POINTS)] + [rows[-1]]


def _value(m: dict, key: str) -> float | None:
    v = m.get("loss") if key == "loss" else (m.get("values") or {}).get(key)
    return float(v) if isinstance(v, int | float) else None


def series_frame(metrics: list[dict], key: str, label: str) -> pd.DataFrame:
    rows = [{"step": m["step"], key: v, "series": label} for m in _thin(metrics)
            if (v := _value(m, key)) is not None]
    # Explicit dtypes: an object column (an empty frame, a concat with one) makes Vega draw the
    # values as categories.
    return pd.DataFrame(rows, columns=["step", key, "series"]).astype({"step": int, key: float})


def loss_frame(metrics: list[dict]) -> pd.DataFrame:
    """Training loss raw and smoothed, plus the validation loss where the run computed it."""
    raw = series_frame(metrics, "loss", "loss")
    if raw.empty:
        return raw
    smoothed = raw.assign(loss=smooth(raw["loss"].tolist()), series="smoothed")
    evals = series_frame(metrics, "eval_loss", "validation").rename(columns={"eval_loss": "loss"})
    frames = [f for f in (raw, smoothed, evals) if not f.empty]
    return pd.concat(frames, ignore_index=True).astype({"step": int, "loss": float})


def eta_seconds(job: dict, last_metric: dict | None = None) -> float | None:  # noqa: ARG001
    """Seconds left to the API's ``eta_at`` (the trainer's own ETA of its last step, as the
    instant the run should finish), so the list, the job view and every other tab on the job
    show the same ETA at the same moment, and it counts down between steps; none before the
    first step (start-up is not training time)."""
    if job["status"] not in ACTIVE:
        return None
    if (at := parse_time(job.get("eta_at"))) is not None:
        return max(0.0, (at - datetime.now(UTC)).total_seconds())
    eta = job.get("eta_seconds")
    return float(eta) if isinstance(eta, int | float) else None


def starting_for(job: dict) -> float | None:
    """Seconds a started job has gone without logging a step (loading, compiling...)."""
    if job["status"] not in ("starting", "running") or job.get("step"):
        return None
    t = parse_time(job.get("started_at")) or parse_time(job.get("created_at"))
    return (datetime.now(UTC) - t).total_seconds() if t else None


def fraction(job: dict) -> float | None:
    if job["status"] == "succeeded":
        return 1.0
    total = job.get("total_steps")
    return (job.get("step") or 0) / total if total else None


def progress_html(job: dict, last_metric: dict | None) -> str:
    total, step, status = job.get("total_steps"), job.get("step") or 0, job["status"]
    frac = fraction(job)
    parts = [f"step {step:,} / {total:,}" if total else f"step {step:,}"]
    if frac is not None:
        parts.append(f"{frac:.0%}")
    if status in ACTIVE:
        eta = eta_seconds(job, last_metric)
        parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA –")
    elif job.get("started_at") and job.get("finished_at"):
        took = (parse_time(job["finished_at"]) - parse_time(job["started_at"])).total_seconds()
        parts.append(f"took {duration(took)}")
    if status == "queued":
        created = parse_time(job.get("created_at"))
        waited = f" for {duration((datetime.now(UTC) - created).total_seconds())}" if created else ""
        parts = [f"queued{waited}: waiting for a worker" + (" with a free GPU" if job.get("gpus") else "")]
    elif job.get("phase") and (since := parse_time(job.get("phase_since"))) is not None and not job.get("step"):
        # the run's own word (its log's last 'phase:' line), with how long it has been at it
        took = max(0.0, (datetime.now(UTC) - since).total_seconds())
        parts = [f"{job['phase']} · for {duration(took)}"]
    elif (waited := starting_for(job)) is not None:
        parts = [f"starting for {duration(waited)}: preparing the run (loading the model, building the data; "
                 "on a first run DeepSpeed compiles its ops) - the log says what it is doing"]
    return progress_bar(frac, " · ".join(parts), status)


def owner_of(job: dict, users: dict[int, str] | None = None) -> str | None:
    """The owner's name when the caller may list users (admins), else ``user #id``."""
    if job.get("owner_id") is None:
        return None
    return (users or {}).get(job["owner_id"]) or f"user #{job['owner_id']}"


def resume_offered(job: dict) -> bool:
    """Resume continues from the newest complete checkpoint: offered for a failed or cancelled job
    that has one (the API refuses the others with 409)."""
    return job["status"] in ("failed", "cancelled") and bool(job.get("last_checkpoint"))


def header_html(job: dict, model: str, dataset: str, users: dict[int, str] | None = None) -> str:
    owner = owner_of(job, users)
    meta = [f"model <b>{esc(model)}</b>", f"dataset <b>{esc(dataset)}</b>", f"preset <b>{esc(job['preset'])}</b>",
            f"created {esc(ago(job.get('created_at')))}"]
    if owner:
        meta.append(f"owner <b>{esc(owner)}</b>")
    if job.get("worker"):
        meta.append(f"worker <span class='vl-mono'>{esc(job['worker'])}</span>")
    failure = ""
    if job.get("failure_reason") and job["status"] in ("failed", "cancelled"):
        first = job["failure_reason"].strip().splitlines()[0] if job["failure_reason"].strip() else ""
        # a cancel is what someone asked for (their own, or an admin's): said, not alarmed in red
        kind = "error" if job["status"] == "failed" else "info"
        failure = f"<div class='vl-notice vl-notice-{kind}' style='margin-top:8px'><div>{esc(first)}</div></div>"
    warned = job["status"] == "succeeded" and job.get("warnings")
    if warned:  # e.g. samples dropped for missing images
        failure = ("<div class='vl-notice vl-notice-warn' style='margin-top:8px'>"
                   + "".join(f"<div>{esc(w)}</div>" for w in job["warnings"]) + "</div>")
    state = badge("succeeded", "Succeeded with warnings") if warned else badge(job["status"])
    return (f"<div class='vl-jobhead'><h2>Job #{job['id']}</h2>{state}</div>"
            f"<div class='vl-jobmeta'>{' · '.join(meta)}</div>{failure}")


def metric_cards(metrics: list[dict]) -> str:
    if not metrics:
        return cards([("Loss", "–", "no step logged yet"), ("Learning rate", "–", ""), ("Grad norm", "–", ""),
                      ("Tokens / s", "–", "")])
    last = metrics[-1]
    losses = [v for m in metrics if (v := _value(m, "loss")) is not None]
    sm = smooth(losses)[-1] if losses else None
    gpu = _value(last, "gpu_memory_gib")
    items = [("Loss", number(_value(last, "loss")), f"smoothed {number(sm)}" if sm is not None else ""),
             ("Learning rate", number(_value(last, "learning_rate"), 3), f"step {last['step']:,}"),
             ("Grad norm", number(_value(last, "grad_norm"), 3), ""),
             ("Tokens / s", number(round(_value(last, "tokens_per_second") or 0)), "")]
    if gpu is not None:
        items.append(("GPU memory", f"{gpu:.1f} GiB", "peak allocated"))
    return cards(items + speed_cards(last))


def speed_cards(last: dict) -> list[tuple[str, str, str]]:
    """MFU, packing efficiency and data-loader wait of the last logged step, where recorded."""
    out = []
    if (mfu := _value(last, "mfu")) is not None:
        out.append(("MFU", f"{mfu:.1%}", "6·N·tokens/s over the measured peak"))
    if (eff := _value(last, "packing_efficiency")) is not None:
        out.append(("Packing efficiency", f"{eff:.0%}", "real tokens / token slots"))
    if (wait := _value(last, "dataloader_wait_fraction")) is not None:
        out.append(("Data wait", f"{wait:.0%}", "of the time waiting for batches"))
    return out


def spec_html(job: dict) -> str:
    hyper = job.get("hyper") or {}
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in sorted(hyper.items()))
    extra = ""
    if job.get("command"):
        extra += f"<div class='vl-h3'>Equivalent command line</div><div class='vl-cmd'>{esc(job['command'])}</div>"
    if job.get("run_dir"):
        extra += f"<div class='vl-h3'>Run folder</div><div class='vl-mono'>{esc(job['run_dir'])}</div>"
    return f"{mixture_html(job)}<dl class='vl-kv'>{rows}</dl>{extra}"


def jobs_table(jobs: list[dict], model_names: dict[int, str], dataset_names: dict[int, str],
               selected: int | None, users: dict[int, str] | None = None) -> str:
    rows, attrs = [], []
    for j in jobs:
        frac = fraction(j)
        eta = eta_seconds(j, None)
        warned = j["status"] == "succeeded" and j.get("warnings")
        state = badge(j["status"], "Succeeded with warnings" if warned else None)
        rows.append([f"<b>#{j['id']}</b>", state, esc(model_names.get(j["model_id"], j["model_id"])),
                     esc(data_label(j, dataset_names)), esc(j["preset"]),
                     progress_bar(frac, f"{j.get('step') or 0:,} / {j.get('total_steps') or '?'}", j["status"]),
                     esc(duration(eta)) if eta is not None else "<span class='vl-muted'>–</span>",
                     esc(owner_of(j, users) or "–"), esc(ago(j.get("created_at")))])
        sel = " class='vl-selected'" if j["id"] == selected else ""
        attrs.append(f"data-job='{j['id']}'{sel}")
    return table(["Job", "Status", "Model", "Dataset", "Preset", "Progress", "ETA", "Owner", "Created"], rows,
                 "No jobs yet. Start one on the Train page.", attrs, cls="vl-clickable")


def artifacts_html(job: dict, link) -> str:  # noqa: ANN001
    """The run folder's files grouped as the user thinks of them: the final model, each
    checkpoint, and the run's own files (spec, command, log, metrics), each downloadable."""
    files = job.get("run_files") or []
    if not files:
        return "<div class='vl-empty'>No files yet: the run folder is written when the job starts.</div>"
    groups: dict[str, list[str]] = {}
    for f in files:
        parts = f.split("/")
        head = next((p for p in parts[:-1] if p.startswith("checkpoint-")), parts[0] if len(parts) > 1 else "")
        groups.setdefault(head, []).append(f)

    def links(paths: list[str], limit: int = 12) -> str:
        base = f"/jobs/{job['id']}/files/"
        out = " ".join(f"<a class='vl-file' href='{esc(link(base + p))}' download>"
                       f"{esc(p.rsplit('/', 1)[-1])}</a>" for p in paths[:limit])
        return out + (f" <span class='vl-muted'>+{len(paths) - limit} more</span>" if len(paths) > limit else "")

    order = sorted(groups, key=lambda g: (g != "final", not g.startswith("checkpoint-"), g))
    rows = []
    for g in order:
        if g == "final":
            what = "<b>Final model</b> <span class='vl-muted'>(Hugging Face format)</span>"
        elif g.startswith("checkpoint-"):
            what = f"Checkpoint at step <b>{esc(g.split('-', 1)[1])}</b>" + (
                " " + badge("valid", "latest") if (job.get("last_checkpoint") or "").endswith(g) else "")
        else:
            what = "Run files" if g == "" else esc(g)
        rows.append([what, number(len(groups[g])), links(groups[g])])
    return table(["Artifact", "Files", "Download"], rows)
