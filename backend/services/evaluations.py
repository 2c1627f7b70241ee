"""Evaluations: compare models (base, fine-tuned, checkpoints of a job) on a dataset split, or
on the held-out parts of a mixture (a training job's, or registered datasets named in the
request), per dataset and overall.

An evaluation is a run of its own kind (:data:`backend.services.runs.EVALUATION`) with the one
lifecycle of :mod:`backend.services.runs`: the same status machine, table queue and GPU leases
(claimed by a worker's scheduler like a training job), live logs and heartbeat. Per-sample
outputs are stored in ``evaluation_samples`` as the worker streams them; the summary (per
model, per metric) when it ends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.core import checkpoints
from backend.core.clock import now
from backend.core.eval_metrics import METRICS
from backend.core.model_card import read_card
from backend.core.model_folder import ModelFolderError
from backend.db.models import (
    Dataset,
    Evaluation,
    EvaluationLog,
    EvaluationSample,
    Job,
    JobStatus,
    Model,
    User,
)
from backend.services import runs, suites
from backend.services.datasets import get_dataset
from backend.services.errors import Conflict, InvalidInput, NotFound
from backend.services.models import get_model
from backend.services.users import visible_to

log = logging.getLogger(__name__)
EVAL_TASK = "vlstudio.evaluate"
EVALUATION = runs.EVALUATION
SPLITS = ("validation", "train")
S = JobStatus
CHECKPOINT_NAME = re.compile(r"^(final|checkpoint-\d+)$")
DEFAULT_PARAMS: dict[str, Any] = {"max_new_tokens": 32, "batch_size": 8, "max_dynamic_patch": None, "limit": None}


# ---------------------------------------------------------------------------------- models
def resolve_model_ref(session: Session, ref: dict[str, Any], user: User | None) -> dict[str, Any]:
    """``{"model_id": N}`` (a registered model) or ``{"job_id": N, "checkpoint": "final" |
    "checkpoint-STEP"}`` (what a training job saved) -> a reference with a label."""
    if "model_id" in ref and ref.get("job_id") is None:
        m = get_model(session, int(ref["model_id"]), user)
        return {"label": m.name, "model_id": m.id, "job_id": None, "checkpoint": None}
    if ref.get("job_id") is None:
        raise InvalidInput("a model reference needs model_id or job_id", [ref])
    job = session.get(Job, int(ref["job_id"]))
    if job is None or not visible_to(user, job.owner_id):
        raise NotFound(f"job {ref['job_id']} not found")
    ckpt = ref.get("checkpoint") or "final"
    if not CHECKPOINT_NAME.match(ckpt):
        raise InvalidInput(f"checkpoint {ckpt!r}: expected 'final' or 'checkpoint-STEP'")
    if ckpt == "final" and job.status != S.succeeded:
        raise InvalidInput(f"job {job.id} is {job.status.value}; only a succeeded job has a final model")
    if ckpt != "final" and not job.run_dir:
        raise InvalidInput(f"job {job.id} has not started; it has no checkpoints")
    if ckpt != "final" and not checkpoints.is_complete(Path(job.run_dir) / "checkpoints" / ckpt):
        raise InvalidInput(f"job {job.id} has no complete {ckpt} (never saved, rotated away, or cut mid-save)")
    label = f"job {job.id}" + ("" if ckpt == "final" else f" {ckpt}")
    return {"label": label, "model_id": job.model_id, "job_id": job.id, "checkpoint": ckpt}


def model_location(session: Session, ref: dict[str, Any]) -> tuple[Path, str, bool]:
    """(folder, template, builtin) of a resolved reference."""
    if ref.get("job_id") is None:
        m = session.get(Model, ref["model_id"])
        if m is None:
            raise NotFound(f"model {ref['model_id']} not found")
        return Path(m.path), m.template, m.builtin
    job = session.get(Job, ref["job_id"])
    if job is None or not job.run_dir:
        raise NotFound(f"job {ref['job_id']} has no run folder")
    base = session.get(Model, job.model_id)
    run = Path(job.run_dir)
    folder = run / "final" if ref["checkpoint"] == "final" else run / "checkpoints" / ref["checkpoint"]
    # the run's template: as the job named it, else its base model's; the trained folder's own card
    # (the run stamps it) when the base model is gone
    template = (job.hyper or {}).get("template") or (base.template if base else None)
    if template is None:
        try:
            template = read_card(folder).template
        except ModelFolderError as e:
            raise NotFound(f"job {job.id}: cannot read the trained model's card ({e})") from None
    if template is None:
        raise NotFound(f"job {job.id}: the trained model names no conversation template")
    return folder, template, False


def training_tiling(session: Session, ref: dict[str, Any]) -> dict[str, Any] | None:
    """The tiling a job trained with, so its model is evaluated as it was trained (None for a
    registered model: its own config decides)."""
    if ref.get("job_id") is None:
        return None
    job = session.get(Job, ref["job_id"])
    h = (job.hyper if job else None) or {}
    keys = ("max_dynamic_patch", "min_dynamic_patch", "use_thumbnail", "dynamic_image_size")
    return {k: h[k] for k in keys if k in h} or None


# -------------------------------------------------------------------------------- mixtures
def _data_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"


def job_mixture_datasets(session: Session, user: User | None, job_id: int) -> list[dict[str, Any]]:
    """The datasets a training job trained on, as a mixture evaluation's request; a meta-file
    entry (no registered dataset, so no held-out part) is refused, naming it."""
    job = session.get(Job, job_id)
    if job is None or not visible_to(user, job.owner_id):
        raise InvalidInput("invalid mixture", [{"field": "mixture.job_id", "message": f"job {job_id} not found"}])
    rows = (job.mixture or {}).get("datasets") or ([{"dataset_id": job.dataset_id}] if job.dataset_id else [])
    meta_rows = [r["name"] for r in rows if r.get("dataset_id") is None]
    if meta_rows:
        raise InvalidInput("invalid mixture", [{"field": "mixture.job_id", "message": (
            f"job {job_id}'s dataset(s) {meta_rows} come from a meta file and have no held-out part; evaluate "
            "an explicit mixture of its registered datasets instead (mixture.datasets)")}])
    return [{"dataset_id": r["dataset_id"], "name": r.get("name"), "max_dynamic_patch": r.get("max_dynamic_patch")}
            for r in rows]


def resolve_eval_mixture(session: Session, user: User | None, request: dict[str, Any]) -> dict[str, Any]:
    """``{"job_id": N}`` or ``{"datasets": [{dataset_id, name?, max_dynamic_patch?}]}`` -> the
    held-out part of every dataset (absolute paths, line counts, tile budget). InvalidInput
    lists every problem with its field, naming each dataset without a held-out part."""
    if (request.get("job_id") is None) == (not request.get("datasets")):
        raise InvalidInput("invalid mixture", [{"field": "mixture", "message": "give job_id (the mixture a training "
                                                "job trained on) or datasets (not both)"}])
    from_job = request.get("job_id") is not None
    wanted = job_mixture_datasets(session, user, int(request["job_id"])) if from_job else request["datasets"]
    problems: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for k, d in enumerate(wanted):
        field = "mixture.job_id" if from_job else f"mixture.datasets.{k}"
        try:
            ds = get_dataset(session, int(d["dataset_id"]), user, ready=True)
        except (NotFound, Conflict) as e:
            problems.append({"field": field, "message": e.message})
            continue
        name = d.get("name") or _data_key(ds.name)
        if not ds.val_annotation:
            problems.append({"field": field, "message": f"dataset {name!r} (#{ds.id}) has no held-out part: register "
                             "it with a validation fraction or a validation JSONL"})
        elif any(p["name"] == name for p in parts):
            problems.append({"field": field, "message": f"dataset name {name!r} is used twice (give a distinct name)"})
        else:
            parts.append({"name": name, "dataset_id": ds.id, "root": ds.root, "annotation": ds.val_annotation,
                          "lines": ds.num_val_samples, "max_dynamic_patch": d.get("max_dynamic_patch")})
    if problems:
        raise InvalidInput("invalid mixture", problems)
    return {"request": request, "datasets": parts, "lines": sum(p["lines"] or 0 for p in parts)}


# ----------------------------------------------------------------------------- create/read
def split_annotation(ds: Dataset, split: str) -> str:
    if split == "train":
        return ds.annotation
    if split == "validation":
        if not ds.val_annotation:
            raise InvalidInput(f"dataset {ds.id} has no validation split; register it with a held-out fraction "
                               "or a validation JSONL, or evaluate split 'train'")
        return ds.val_annotation
    raise InvalidInput(f"unknown split {split!r}; known: {', '.join(SPLITS)}")


def create_evaluation(session: Session, user: User | None, *, dataset_id: int | None, split: str,
                      models: Sequence[dict[str, Any]], metrics: Sequence[str] | None,
                      params: dict[str, Any], send: Callable[[int], str],
                      mixture: dict[str, Any] | None = None, benchmarks: Sequence[str] | None = None,
                      benchmark_store: Path | None = None) -> Evaluation:
    """Validate the request (every problem at once), record a queued evaluation, queue it.
    ``mixture`` instead of ``dataset_id``: its held-out parts (:func:`resolve_eval_mixture`);
    ``benchmarks``: a suite of registered benchmarks in ``benchmark_store`` (:mod:`.suites`)."""
    problems: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    resolved = suite = None
    if sum(x is not None for x in (dataset_id, mixture, benchmarks)) != 1:
        problems.append({"field": "dataset_id", "message": "give one of dataset_id (one split), mixture or "
                         "benchmarks (a benchmark suite)"})
    elif benchmarks is not None:
        problems += suites.request_problems(split, metrics, params)
        try:
            suite = suites.resolve_benchmarks(benchmark_store, benchmarks)
        except InvalidInput as e:
            problems += e.details
    elif mixture is not None:
        if split != "validation":
            problems.append({"field": "split", "message": "a mixture is evaluated on its held-out parts: split "
                             "'validation'"})
        try:
            resolved = resolve_eval_mixture(session, user, mixture)
        except InvalidInput as e:
            problems += e.details
    else:
        try:
            split_annotation(get_dataset(session, dataset_id, user, ready=True), split)
        except (NotFound, Conflict, InvalidInput) as e:
            problems.append({"field": "split" if isinstance(e, InvalidInput) else "dataset_id", "message": e.message})
    if not models:
        problems.append({"field": "models", "message": "at least one model to evaluate"})
    for i, ref in enumerate(models):
        try:
            refs.append(resolve_model_ref(session, dict(ref), user))
        except (NotFound, InvalidInput) as e:
            problems.append({"field": f"models.{i}", "message": e.message})
    unknown = [m for m in (metrics or []) if m not in METRICS]
    if unknown:
        problems.append({"field": "metrics", "message": f"unknown metric(s) {unknown}; known: {list(METRICS)}"})
    bad = sorted(set(params) - set(DEFAULT_PARAMS))
    if bad:
        problems.append({"field": "params", "message": f"unknown parameter(s) {bad}; known: {list(DEFAULT_PARAMS)}"})
    for key in ("max_new_tokens", "batch_size", "max_dynamic_patch", "limit"):
        v = params.get(key)
        if v is not None and (not isinstance(v, int) or v < 1):
            problems.append({"field": f"params.{key}", "message": "must be a positive integer"})
    if problems:
        raise InvalidInput("invalid evaluation", problems)
    ev = Evaluation(owner_id=user.id if user else None, dataset_id=dataset_id, split=split, models=refs,
                    mixture=resolved, benchmarks=suite,
                    metrics=list(metrics or []), params={**DEFAULT_PARAMS, **params}, status=S.queued)
    session.add(ev)
    session.commit()
    try:
        ev.celery_task_id = send(ev.id)
        session.commit()
    except Exception as e:  # noqa: BLE001
        # The evaluations table is the queue; workers also poll it, so a broker outage only delays the start.
        session.rollback()
        log.warning("evaluation %s queued, but the broker could not be reached to wake a worker: %s", ev.id, e)
    return ev


def get_evaluation(session: Session, evaluation_id: int, user: User | None = None) -> Evaluation:
    ev = session.get(Evaluation, evaluation_id)
    if ev is None or not visible_to(user, ev.owner_id):
        raise NotFound(f"evaluation {evaluation_id} not found")
    return ev


def list_evaluations(session: Session, user: User | None = None, limit: int = 200) -> list[Evaluation]:
    q = select(Evaluation).order_by(Evaluation.id.desc()).limit(limit)
    if user is not None and not user.is_admin:
        q = q.where((Evaluation.owner_id == user.id) | (Evaluation.owner_id.is_(None)))
    return list(session.scalars(q))


# ------------------------------------------------------------------------------- lifecycle
def transition(session: Session, evaluation_id: int, new: JobStatus, **fields: Any) -> bool:
    """Compare-and-set, as for jobs (:func:`backend.services.runs.transition`)."""
    return runs.transition(session, EVALUATION, evaluation_id, new, **fields)


def request_cancel(session: Session, evaluation_id: int, user: User | None = None) -> Evaluation:
    ev = get_evaluation(session, evaluation_id, user)
    runs.request_cancel(session, EVALUATION, ev)
    return ev


def heartbeat(session: Session, evaluation_id: int, **fields: Any) -> None:
    session.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(heartbeat_at=now(), **fields))
    session.commit()


def recover_lost_evaluations(session: Session, timeout_s: float) -> list[int]:
    """End evaluations whose worker stopped sending heartbeats, after storing what it left
    unread in the run folder (:func:`backend.services.runs.recover_lost`). One on a cluster
    (Slurm) runs on without its worker: a worker of the cluster backend adopts it instead."""
    return runs.recover_lost(session, EVALUATION, timeout_s)


def record_crash(session: Session, evaluation_id: int, error: BaseException, trace: str) -> bool:
    """The worker's supervisor of the evaluation raised: fail it saying so, as a job."""
    return runs.record_crash(session, EVALUATION, evaluation_id, error, trace)


def next_log_seq(session: Session, evaluation_id: int) -> int:
    return runs.next_seq(session, EVALUATION, evaluation_id)


def append_logs(session: Session, evaluation_id: int, first_seq: int, lines: Sequence[str],
                stream: str = "stdout") -> int:
    return runs.append_logs(session, EVALUATION, evaluation_id, first_seq, lines, stream)


def logs_after(session: Session, evaluation_id: int, after: int = 0, limit: int = 1000) -> list[EvaluationLog]:
    return runs.logs_after(session, EVALUATION, evaluation_id, after, limit)


# --------------------------------------------------------------------------------- results
def samples(session: Session, evaluation_id: int) -> list[EvaluationSample]:
    return list(session.scalars(select(EvaluationSample).where(EvaluationSample.evaluation_id == evaluation_id)
                                .order_by(EvaluationSample.sample_index, EvaluationSample.model_index)))


def side_by_side(ev: Evaluation, rows: Sequence[EvaluationSample]) -> list[dict[str, Any]]:
    """One entry per sample with every model's prediction and scores; ``differ`` is true
    when the models' predictions are not all the same (after trimming and case folding)."""
    by_index: dict[int, dict[str, Any]] = {}
    n_models = len(ev.models)
    for r in rows:
        e = by_index.setdefault(r.sample_index, {
            "index": r.sample_index, "id": r.sample_id, "dataset": r.dataset, "question": r.question,
            "answers": r.answers,
            "predictions": [None] * n_models, "scores": [None] * n_models})
        if 0 <= r.model_index < n_models:
            e["predictions"][r.model_index] = r.prediction
            e["scores"][r.model_index] = r.scores
    out = []
    for e in sorted(by_index.values(), key=lambda x: x["index"]):
        norm = {(p or "").strip().lower() for p in e["predictions"]}
        e["differ"] = len(norm) > 1
        out.append(e)
    return out


def results(session: Session, evaluation_id: int, user: User | None = None, only_differences: bool = False,
            offset: int = 0, limit: int = 500) -> dict[str, Any]:
    ev = get_evaluation(session, evaluation_id, user)
    entries = side_by_side(ev, samples(session, evaluation_id))
    differing = [e for e in entries if e["differ"]]
    shown = differing if only_differences else entries
    return {"evaluation_id": ev.id, "status": ev.status.value, "models": [m["label"] for m in ev.models],
            "summary": ev.summary, "samples": len(entries), "differing": len(differing),
            "items": shown[offset:offset + limit]}
