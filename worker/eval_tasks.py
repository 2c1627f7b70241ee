"""The Celery task of evaluation jobs; the work is in :mod:`worker.evaluation.launch`.

It runs the evaluation in the task itself (one evaluation at a time per worker process), on a
GPU leased from the worker's scheduler like a training job's (which also heartbeats it and
drains it on shutdown); training jobs go through the scheduler alone (see :mod:`worker.tasks`)."""

from __future__ import annotations

import logging

from backend.services.evaluations import EVAL_TASK
from worker.celery_app import app
from worker.evaluation.launch import run_evaluation_job
from worker.scheduler import get_scheduler

log = logging.getLogger(__name__)


@app.task(name=EVAL_TASK, bind=True)
def evaluate(self, evaluation_id: int) -> str:  # type: ignore[no-untyped-def]
    name = self.request.hostname or "worker"
    scheduler = get_scheduler(name)
    try:
        outcome = run_evaluation_job(evaluation_id, name, lease=scheduler.lease_for_evaluation)
    finally:
        scheduler.evaluation_done(evaluation_id)
    log.info("evaluation %s: %s", evaluation_id, outcome)
    return outcome
