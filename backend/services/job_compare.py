"""Read-side views over several jobs: the trainer's ETA for the jobs list, and the run
comparison (curves overlaid, the hyperparameters that differ, evaluation scores side by side)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core import deadline
from backend.core.run_phase import PHASE_PREFIX, phase_of
from backend.core.suite import suite_table
from backend.db.models import Evaluation, Job, JobLog, JobMetric, JobStatus
from backend.services.errors import InvalidInput
from backend.services.jobs import get_job
from backend.services.users import visible_to

ACTIVE = (JobStatus.starting, JobStatus.running, JobStatus.stopping)
#: the metric values a comparison overlays (the curves of the job view)
CURVES = ("loss", "eval_loss", "learning_rate", "tokens_per_second", "samples_per_second", "grad_norm")
MAX_JOBS = 8


def finish_times(session: Session, jobs: Sequence[Job]) -> dict[int, datetime]:
    """job id -> when the run should finish: the trainer's own ETA of its last step row, counted
    from when that row was written. The one ETA every viewer shows (the list, the job view, two
    tabs on one job): an instant changes only with a new step, so it needs no clock of the
    reader's; a job whose trainer has not logged a step yet has none (start-up is not training
    time)."""
    ids = [j.id for j in jobs if j.status in ACTIVE]
    if not ids:
        return {}
    last = (select(JobMetric.job_id, func.max(JobMetric.seq).label("seq"))
            .where(JobMetric.job_id.in_(ids), JobMetric.loss.is_not(None)).group_by(JobMetric.job_id).subquery())
    rows = session.execute(select(JobMetric.job_id, JobMetric.values, JobMetric.created_at)
                           .join(last, (JobMetric.job_id == last.c.job_id) & (JobMetric.seq == last.c.seq)))
    out = {}
    for job_id, values, created in rows:
        eta = (values or {}).get("eta_seconds")
        if isinstance(eta, int | float):
            out[job_id] = (created if created.tzinfo else created.replace(tzinfo=UTC)) + timedelta(seconds=float(eta))
    return out


def etas(session: Session, jobs: Sequence[Job]) -> dict[int, float]:
    """job id -> seconds left now, from :func:`finish_times`."""
    now = datetime.now(UTC)
    return {job_id: max(0.0, (at - now).total_seconds()) for job_id, at in finish_times(session, jobs).items()}


def phases(session: Session, jobs: Sequence[Job]) -> dict[int, tuple[str, datetime]]:
    """job id -> (what the run is doing, since when): the last ``phase:`` line of its log
    (backend/core/run_phase.py), for the active jobs that have logged no step yet."""
    ids = [j.id for j in jobs if j.status in ACTIVE and not j.step]
    if not ids:
        return {}
    like = JobLog.line.startswith(PHASE_PREFIX)
    last = (select(JobLog.job_id, func.max(JobLog.seq).label("seq"))
            .where(JobLog.job_id.in_(ids), like).group_by(JobLog.job_id).subquery())
    rows = session.execute(select(JobLog.job_id, JobLog.line, JobLog.created_at)
                           .join(last, (JobLog.job_id == last.c.job_id) & (JobLog.seq == last.c.seq)))
    return {job_id: (phase_of(line) or "", created if created.tzinfo else created.replace(tzinfo=UTC))
            for job_id, line, created in rows}


def _series(session: Session, job_id: int) -> list[dict[str, Any]]:
    rows = session.execute(select(JobMetric.step, JobMetric.loss, JobMetric.values)
                           .where(JobMetric.job_id == job_id).order_by(JobMetric.seq))
    out = []
    for step, loss, values in rows:
        point: dict[str, Any] = {"step": step}
        for key in CURVES:
            v = loss if key == "loss" and loss is not None else (values or {}).get(key)
            if isinstance(v, int | float):
                point[key] = v
        if len(point) > 1:
            out.append(point)
    return out


#: what each part of a mixture trains with, compared part by part
PART_KEYS = ("repeat_time", "data_augment", "max_dynamic_patch")


def _parts(job: Job) -> dict[str, dict[str, Any]]:
    """The job's data, part by part (name -> its row): the resolved mixture stored with the job;
    a job from before mixtures, its one dataset."""
    rows = (job.mixture or {}).get("datasets") or (
        [{"name": f"dataset {job.dataset_id}", "dataset_id": job.dataset_id}] if job.dataset_id else [])
    return {r.get("name") or f"dataset {r.get('dataset_id')}": r for r in rows}


def describe_data(job: Job) -> str:
    """``colors x2 (augment) + shapes-demo x0.5 (max_dynamic_patch 2)``: the mixture in one line."""
    out = []
    for name, r in _parts(job).items():
        extra = [x for x in ("augment" if r.get("data_augment") else None,
                             f"max_dynamic_patch {r['max_dynamic_patch']}" if r.get("max_dynamic_patch") else None) if x]
        repeat = r.get("repeat_time", 1)
        out.append(f"{name} x{repeat:g}" + (f" ({', '.join(extra)})" if extra else ""))
    return " + ".join(out) or "none"


def _data_rows(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """The data in the diff: the mixture of each job in one line when it differs, then each part
    the jobs share with a setting (repeat_time, augment, tiling) that differs between them."""
    lines = [describe_data(j) for j in jobs]
    if len(set(lines)) == 1:
        return []
    rows = [{"field": "data", "values": lines}]
    parts = [_parts(j) for j in jobs]
    for name in dict.fromkeys(n for p in parts for n in p):
        if not all(name in p for p in parts):
            continue  # in some jobs only: the data row says so
        for key in PART_KEYS:
            values = [p[name].get(key) for p in parts]
            if any(v != values[0] for v in values[1:]):
                rows.append({"field": f"data.{name}.{key}", "values": values})
    return rows


def _differing(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    keys = sorted({k for j in jobs for k in (j.hyper or {})})
    rows = [{"field": "preset", "values": [j.preset for j in jobs]}] if len({j.preset for j in jobs}) > 1 else []
    values = [j.model_id for j in jobs]
    if len(set(values)) > 1:
        rows.append({"field": "model_id", "values": values})
    rows += _data_rows(jobs)  # not dataset_id: a mixture's first dataset is not what it trained on
    for k in keys:
        values = [(j.hyper or {}).get(k) for j in jobs]
        if any(v != values[0] for v in values[1:]):
            rows.append({"field": k, "values": values})
    return rows


def _scores(session: Session, user: Any, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Succeeded evaluations that scored at least one of the jobs: per evaluation, the metrics of
    each model it ran (base models included, as the reference), keyed by label."""
    out = []
    for ev in session.scalars(select(Evaluation).where(Evaluation.status == JobStatus.succeeded)
                              .order_by(Evaluation.id)):
        if not visible_to(user, ev.owner_id):
            continue
        refs = ev.models or []
        if not any(r.get("job_id") in ids for r in refs):
            continue
        models = [{"label": r.get("label"), "job_id": r.get("job_id"), "model_id": r.get("model_id"),
                   "n": s.get("n"), "metrics": s.get("metrics") or {}}
                  for r, s in zip(refs, ev.summary or [], strict=False)]
        parts = [d["name"] for d in (ev.mixture or {}).get("datasets") or []]  # a mixture evaluation's
        benchmarks = [b["name"] for b in (ev.benchmarks or {}).get("benchmarks") or []]
        if benchmarks:  # a suite: each benchmark's figures (its overall metrics are empty)
            rows = suite_table(ev.summary or [])["rows"]
            for col, m in enumerate(models):
                m["metrics"] = {f"{r['benchmark']} · {r['figure']}": r["values"][col] for r in rows
                                if r["values"][col] is not None}
        out.append({"evaluation_id": ev.id, "dataset_id": ev.dataset_id, "split": ev.split, "models": models,
                    "mixture": parts or None, "benchmarks": benchmarks or None})
    return out


def compare(session: Session, user: Any, ids: Sequence[int]) -> dict[str, Any]:
    """Curves, differing hyperparameters and evaluation scores of jobs ``ids`` (2 to 8)."""
    ids = list(dict.fromkeys(ids))
    if not 2 <= len(ids) <= MAX_JOBS:
        raise InvalidInput(f"compare 2 to {MAX_JOBS} jobs ({len(ids)} given)",
                           [{"field": "ids", "message": f"give 2 to {MAX_JOBS} distinct job ids"}])
    jobs = [get_job(session, i, user) for i in ids]
    series = {}
    for j in jobs:
        deadline.check()
        series[str(j.id)] = _series(session, j.id)
    return {
        "jobs": [{"id": j.id, "status": j.status.value, "preset": j.preset, "model_id": j.model_id,
                  "dataset_id": j.dataset_id, "step": j.step, "total_steps": j.total_steps} for j in jobs],
        "series": series,
        "differing": _differing(jobs),
        "evaluations": _scores(session, user, ids),
    }
