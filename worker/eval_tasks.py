"""The Celery task of evaluation jobs; the work is in :mod:`worker.evaluation.launch`.

It runs the evaluation in the task itself (one evaluation at a time per worker process);
training jobs go through the worker's scheduler instead (see :mod:`worker.tasks`)."""

from __future__ import annotations

import logging

from backend.services.evaluations import EVAL_TASK
from worker.celery_app import app
from worker.evaluation.launch import run_evaluation_job

log = logging.getLogger(__name__)


@app.task(name=EVAL_TASK, bind=True)
def evaluate(self, evaluation_id: int) -> str:  # type: ignore[no-untyped-def]
    outcome = run_evaluation_job(evaluation_id, worker_name=self.request.hostname or "worker")
    log.info("evaluation %s: %s", evaluation_id, outcome)
    return outcome
