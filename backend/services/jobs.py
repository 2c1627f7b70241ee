"""Jobs: submit (validated, resolved, estimated), move through legal states, cancel, resume,
retry, recover lost ones, and store their log lines and metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.core import checkpoints, presets
from backend.core.clock import now  # noqa: F401 - the one clock, as jobs.now for callers
from backend.core.mixture import MixtureDataset, MixtureSpec
from backend.core.model_card import Tiling
from backend.core.model_folder import ModelFolderError
from backend.core.spec import Hyperparameters
from backend.db.models import Job, JobLog, JobMetric, JobStatus, User
from backend.services import memory, runs, scheduling
from backend.services import meta as meta_svc
from backend.services.errors import Abandoned, Conflict, InvalidInput, NotFound
from backend.services.models import card_of, get_model
from backend.services.users import visible_to
from backend.settings import get_settings

log = logging.getLogger(__name__)
S = JobStatus
LEGAL = runs.LEGAL
JOB = runs.JOB
Send = Callable[[int], str | None]
PRIORITY_RANGE = (-100, 100)
# the job kind's rows, stored by the one run record (backend.services.runs)
step_rows, take_data_rows, _finite = runs.step_rows, runs.take_data_rows, runs.finite


def _resolve(session: Session, user: User | None, data: MixtureSpec, model_id: int, preset: str,
             overrides: dict[str, Any], priority: int) -> tuple[Hyperparameters, list[dict[str, Any]], Any, Any]:
    problems: list[dict[str, Any]] = []
    hyper = model = mixture = None
    try:
        model = get_model(session, model_id, user)
    except NotFound as e:
        problems.append({"field": "model_id", "message": e.message})
    tiling = model_tiling(model)  # what the preset leaves to the model: its card's tiling
    try:
        hyper = presets.resolve(preset, overrides, tiling)
    except KeyError as e:
        problems.append({"field": "preset", "message": str(e.args[0])})
    except ValidationError:
        problems += presets.problems(preset, overrides, tiling)  # field and combination problems together
    try:  # registered datasets must be ready (not validating, failed or cancelled)
        mixture = meta_svc.resolve_mixture(session, user, data, get_settings().data_roots)
    except InvalidInput as e:
        problems += e.details
    if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        problems.append({"field": "priority", "message": f"must be within {PRIORITY_RANGE}"})
    elif priority > 0 and user is not None and not user.is_admin:
        problems.append({"field": "priority", "message": "only admins can raise a job's priority above 0"})
    return hyper, problems, model, mixture  # type: ignore[return-value]


def model_tiling(model: Any) -> Tiling | None:
    """A registered model's own tiling, from its card; None when its folder cannot be read now
    (the run then takes it from the card when it starts)."""
    if model is None:
        return None
    try:
        return card_of(model).tiling
    except (ModelFolderError, OSError):
        return None


def mixture_of(dataset_id: int | None, mixture: MixtureSpec | dict | None) -> MixtureSpec:
    """The request's data as a mixture: ``dataset_id`` alone is the one-dataset mixture."""
    if (dataset_id is None) == (mixture is None):
        raise InvalidInput("invalid job", [{"field": "dataset_id", "message": "give dataset_id or mixture (not "
                                            "both): what the job trains on"}])
    if mixture is None:
        return MixtureSpec(datasets=[MixtureDataset(dataset_id=dataset_id)])
    return mixture if isinstance(mixture, MixtureSpec) else MixtureSpec.model_validate(mixture)


def _placement_problems(session: Session, hyper: Hyperparameters, estimate: dict | None) -> list[dict[str, Any]]:
    if hyper.nnodes > 1 and get_settings().backend == "local":
        # Never silently one node: the effective batch would be nnodes times smaller than shown.
        return [{"field": "nnodes", "message": f"nnodes={hyper.nnodes}: the local backend runs a job on one "
                 "node; multi-node training needs the Slurm backend (VLSTUDIO_BACKEND=slurm)"}]
    if not hyper.gpus and (cpus := scheduling.cpu_capacity(session)) and hyper.nproc_per_node > cpus:
        return [{"field": "nproc_per_node", "message": f"a CPU job with {hyper.nproc_per_node} processes per node, "
                 f"but the largest worker node has {cpus} CPUs"}]
    most, mem_mib = scheduling.cluster_capacity(session)
    if most is not None and hyper.gpus > most:
        where = f"the largest node has {most} GPU(s)" if most else "no worker node has a GPU"
        return [{"field": "gpus", "message": f"the job asks for {hyper.gpus} GPU(s) but {where}"}]
    if estimate and mem_mib and hyper.gpus and estimate["exact_gib"] * 1024 > mem_mib:
        return [{"field": "memory", "estimate": estimate, "suggestions": memory.suggestions(hyper),
                 "message": f"the weights, gradients and optimizer states alone take {estimate['exact_gib']} GiB "
                            f"per GPU, more than the {mem_mib / 1024:.0f} GiB of the nodes' GPUs"}]
    if estimate and mem_mib and hyper.gpus and estimate["per_device_gib"] * 1024 > mem_mib:
        # activations are an estimate, not a measurement: say so, do not refuse
        estimate["warning"] = (f"estimated {estimate['per_device_gib']} GiB per GPU may not fit the "
                               f"{mem_mib / 1024:.0f} GiB of the nodes' GPUs (the activation part is approximate)")
    return []


def create_job(session: Session, *, dataset_id: int | None = None, model_id: int, preset: str,
               overrides: dict[str, Any], send: Send, owner: User | None = None, priority: int = 0,
               requeue_on_failure: bool = False, mixture: MixtureSpec | dict | None = None,
               idempotency_key: str | None = None, still_wanted: Callable[[], str | None] | None = None) -> Job:
    """Validate the request (every problem at once), record a queued job with its resolved
    mixture, then wake a worker.

    ``idempotency_key``: a retried submission with the same key (and owner) gets the job the
    first one created, never a second. ``still_wanted``: asked just before the commit; a
    reason (the client went away, the request is past its deadline) records nothing."""
    data = mixture_of(dataset_id, mixture)
    if idempotency_key and (earlier := _by_key(session, owner, idempotency_key)) is not None:
        return _replay(earlier, data.model_dump(mode="json"), model_id, preset)
    hyper, problems, model, resolved = _resolve(session, owner, data, model_id, preset, overrides, priority)
    if mixture is None:  # the request named one dataset_id: report its problems under that name
        problems = [{**p, "field": "dataset_id"} if str(p.get("field", "")).startswith("mixture") else p
                    for p in problems]
    estimate = None
    if hyper is not None and model is not None:
        arch = memory.arch_for(model.info or {}, model.path)
        estimate = memory.estimate(arch, hyper) if arch is not None and hyper.gpus else None
        problems += _placement_problems(session, hyper, estimate)
    if problems or hyper is None:
        raise InvalidInput("invalid job", problems)
    first = next((r["dataset_id"] for r in resolved["datasets"] if r["dataset_id"] is not None), None)
    job = Job(dataset_id=first, model_id=model_id, preset=preset, hyper=hyper.model_dump(mode="json"),
              status=S.queued, owner_id=owner.id if owner else None, gpus=hyper.gpus, priority=priority,
              requeue_on_failure=requeue_on_failure, memory_estimate=estimate, idempotency_key=idempotency_key,
              mixture={**resolved, "request": data.model_dump(mode="json")})
    if still_wanted is not None and (gone := still_wanted()):
        session.rollback()
        raise Abandoned(f"job not recorded: {gone}")
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # the same key, committed by a concurrent retry of this request
        session.rollback()
        if idempotency_key and (earlier := _by_key(session, owner, idempotency_key)) is not None:
            return _replay(earlier, data.model_dump(mode="json"), model_id, preset)
        raise
    _wake(session, job, send)
    return job


def _by_key(session: Session, owner: User | None, key: str) -> Job | None:
    q = select(Job).where(Job.idempotency_key == key)
    q = q.where(Job.owner_id == owner.id) if owner is not None else q.where(Job.owner_id.is_(None))
    return session.scalar(q)


def _replay(earlier: Job, request: dict, model_id: int, preset: str) -> Job:
    if ((earlier.mixture or {}).get("request"), earlier.model_id, earlier.preset) != (request, model_id, preset):
        raise Conflict(f"Idempotency-Key already used for job {earlier.id}, with another dataset, model or preset")
    earlier.replayed = True  # type: ignore[attr-defined]  # the route answers 200, not 201
    return earlier


def _wake(session: Session, job: Job, send: Send) -> None:
    try:
        job.celery_task_id = send(job.id)
        session.commit()
    except Exception as e:  # noqa: BLE001
        # The jobs table is the queue; workers also poll it, so a broker outage only delays the start.
        session.rollback()
        log.warning("job %s queued, but the broker could not be reached to wake a worker: %s", job.id, e)


def get_job(session: Session, job_id: int, user: User | None = None) -> Job:
    job = session.get(Job, job_id)
    if job is None or not visible_to(user, job.owner_id):
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(session: Session, user: User | None = None, status: JobStatus | None = None,
              limit: int = 200) -> list[Job]:
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if user is not None and not user.is_admin:
        q = q.where(Job.owner_id == user.id)
    if status is not None:
        q = q.where(Job.status == status)
    return list(session.scalars(q))


def transition(session: Session, job_id: int, new: JobStatus, **fields: Any) -> bool:
    """Move a job to ``new`` if legal (compare-and-set, :func:`backend.services.runs.transition`)."""
    return runs.transition(session, JOB, job_id, new, **fields)


def claim_job(session: Session, job_id: int, worker: str) -> bool:
    """Atomically take one queued job. False if another worker (or a redelivered message)
    already took it, or if it was cancelled meanwhile."""
    return runs.claim(session, JOB, job_id, worker)


def request_cancel(session: Session, job_id: int, user: User | None = None) -> Job:
    job = get_job(session, job_id, user)
    runs.request_cancel(session, JOB, job)
    return job


def latest_checkpoint(run_dir: str | None) -> Path | None:
    """The newest complete (sealed, :mod:`backend.core.checkpoints`) checkpoint under RUN/checkpoints."""
    return checkpoints.latest_complete(Path(run_dir) / "checkpoints") if run_dir else None


def _follow_up(session: Session, parent: Job, resume_from: Path | None, send: Send) -> Job:
    mixture = {k: v for k, v in parent.mixture.items() if k != "trained"} if parent.mixture else None
    if mixture:  # the child reports what it trained on itself
        mixture["datasets"] = [{k: v for k, v in r.items() if k != "trained"} for r in mixture["datasets"]]
    job = Job(dataset_id=parent.dataset_id, model_id=parent.model_id, preset=parent.preset, hyper=parent.hyper,
              mixture=mixture, status=S.queued, owner_id=parent.owner_id, gpus=parent.gpus, priority=parent.priority,
              requeue_on_failure=parent.requeue_on_failure, memory_estimate=parent.memory_estimate,
              parent_job_id=parent.id, resume_from_checkpoint=str(resume_from) if resume_from else None)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # ux_jobs_one_resume: a concurrent resume of the same job won
        session.rollback()
        raise Conflict(_already_resumed(session, parent.id)) from None
    _wake(session, job, send)
    return job


def _resumed_as(session: Session, job_id: int) -> Job | None:
    return session.scalar(select(Job).where(Job.parent_job_id == job_id, Job.resume_from_checkpoint.is_not(None)))


def _already_resumed(session: Session, job_id: int) -> str:
    child = _resumed_as(session, job_id)
    where = f" as job {child.id}" if child is not None else ""
    return (f"job {job_id} was already resumed{where}: a checkpoint is continued once "
            "(resume that job instead, or retry from scratch)")


def resume_job(session: Session, job_id: int, send: Send, user: User | None = None) -> Job:
    """A new job that continues a cancelled or failed one from its last checkpoint."""
    parent = get_job(session, job_id, user)
    if parent.status not in (S.cancelled, S.failed):
        raise Conflict(f"job {job_id} is {parent.status.value}; only cancelled or failed jobs can be resumed")
    if _resumed_as(session, job_id) is not None:
        raise Conflict(_already_resumed(session, job_id))
    ckpt = latest_checkpoint(parent.run_dir)
    if ckpt is None:
        raise Conflict(f"job {job_id} left no checkpoint to resume from; retry it from scratch instead")
    return _follow_up(session, parent, ckpt, send)


MAX_REQUEUES = 3  # in a row: a job that fails the same way each time is not requeued forever


def _requeue_depth(session: Session, job: Job) -> int:
    depth, parent_id = 0, job.parent_job_id
    while parent_id is not None and depth <= MAX_REQUEUES:
        parent = session.get(Job, parent_id)
        if parent is None or not parent.requeue_on_failure or parent.status != S.failed:
            break
        depth, parent_id = depth + 1, parent.parent_job_id
    return depth


def requeue(session: Session, job: Job, send: Send) -> Job | None:
    """After a failure its owner asked to survive: a new job resuming from the last checkpoint
    (none if it was resumed already, or after MAX_REQUEUES failed requeues in a row)."""
    if _resumed_as(session, job.id) is not None:
        return None
    if _requeue_depth(session, job) >= MAX_REQUEUES:
        append_logs(session, job.id, next_seq(session, JobLog, job.id),
                    [f"not requeued: it failed {MAX_REQUEUES + 1} times in a row"], stream="system")
        return None
    child = _follow_up(session, job, latest_checkpoint(job.run_dir), send)
    append_logs(session, job.id, next_seq(session, JobLog, job.id),
                [f"requeued as job {child.id} (resuming from {child.resume_from_checkpoint or 'scratch'})"],
                stream="system")
    return child


def record_progress(session: Session, job_id: int, **fields: Any) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(**fields))
    session.commit()


def retry_job(session: Session, job_id: int, send: Send, user: User | None = None) -> Job:
    """A new job with the same resolved spec, from scratch."""
    parent = get_job(session, job_id, user)
    if not parent.status.finished:
        raise Conflict(f"job {job_id} is {parent.status.value}; wait for it to finish or cancel it")
    return _follow_up(session, parent, None, send)


def record_crash(session: Session, job_id: int, error: BaseException, trace: str) -> bool:
    """The worker's supervisor of ``job_id`` raised: fail it saying so (:func:`runs.record_crash`)."""
    return runs.record_crash(session, JOB, job_id, error, trace)


def requeue_if_asked(send: Send) -> runs.OnFailed:
    """After a failure the job's owner asked to survive (worker lost or shut down): requeue it."""
    def on_failed(session: Session, job: Job) -> None:
        if job.requeue_on_failure:
            requeue(session, job, send)
    return on_failed


def recover_lost_jobs(session: Session, timeout_s: float, send: Send) -> list[int]:
    """Fail jobs whose worker stopped sending heartbeats (killed, node rebooted) and requeue
    those whose owner asked for it, to resume from their last checkpoint."""
    return runs.recover_lost(session, JOB, timeout_s, requeue_if_asked(send))


def recover_run_output(session: Session, job: Job) -> int:
    """Store what a dead worker left unread in the run folder (:func:`runs.recover_output`)."""
    return runs.recover_output(session, JOB, job)


def next_seq(session: Session, model: type[JobLog] | type[JobMetric], job_id: int) -> int:
    return (session.scalar(select(func.max(model.seq)).where(model.job_id == job_id)) or 0) + 1


def append_logs(session: Session, job_id: int, first_seq: int, lines: Sequence[str], stream: str = "stdout") -> int:
    """Store lines with consecutive sequence numbers; returns the next free number."""
    return runs.append_logs(session, JOB, job_id, first_seq, lines, stream)


def append_metrics(session: Session, job_id: int, first_seq: int, rows: Sequence[dict[str, Any]]) -> int:
    """Store metrics rows (see :func:`take_data_rows` for the trainer's data report);
    returns the next free number."""
    n = runs.add_metrics(session, job_id, first_seq, rows)
    session.commit()
    return first_seq + n


def logs_after(session: Session, job_id: int, after: int = 0, limit: int = 1000) -> list[JobLog]:
    return runs.logs_after(session, JOB, job_id, after, limit)


def last_lines(session: Session, job_id: int, n: int = 20) -> list[str]:
    rows = session.scalars(select(JobLog.line).where(JobLog.job_id == job_id).order_by(JobLog.seq.desc()).limit(n))
    return list(reversed(list(rows)))


def warnings_of(session: Session, jobs: Sequence[Job]) -> dict[int, list[str]]:
    """Why a succeeded job is "succeeded with warnings": samples the trainer dropped (images
    missing or unreadable, too long, invalid), from its last metrics row's counts."""
    out: dict[int, list[str]] = {}
    for job in jobs:
        if job.status != S.succeeded:
            continue
        values = session.scalar(select(JobMetric.values).where(JobMetric.job_id == job.id)
                                .order_by(JobMetric.seq.desc()).limit(1))
        dropped = {k: int(v) for k, v in ((values or {}).get("dropped") or {}).items() if v}
        if dropped:
            out[job.id] = [f"{sum(dropped.values())} sample(s) dropped during training: "
                           + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))]
    return out


def metrics_after(session: Session, job_id: int, after: int = 0, limit: int = 10000) -> list[JobMetric]:
    return list(session.scalars(select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.seq > after)
                                .order_by(JobMetric.seq).limit(limit)))
