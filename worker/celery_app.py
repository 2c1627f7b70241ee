"""The Celery worker application: ``celery -A worker.celery_app worker -Q gpu``.

The worker's scheduler, its model server (playground chats) and its import runner start with the worker (not
with the first message), so jobs and chats queued while the broker was down or before the
worker started are found in their tables."""

from __future__ import annotations

from celery.signals import worker_ready, worker_shutting_down

from backend.queue import make_celery

app = make_celery()
app.conf.imports = ("worker.tasks", "worker.eval_tasks")


@worker_ready.connect
def _start_scheduler(sender=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    from worker.model_imports import start_runner
    from worker.scheduler import get_scheduler
    from worker.serving import start_server

    scheduler = get_scheduler(getattr(sender, "hostname", None) or "worker")
    start_server(scheduler)
    start_runner(scheduler.name)


@worker_shutting_down.connect
def _drain(**_: object) -> None:
    from worker import serving
    from worker.scheduler import current

    if serving._server is not None:
        serving._server.stop()
    sched = current()
    if sched is not None:
        sched.shutdown()
