"""Celery tasks. They are thin: the work is in :mod:`worker.launcher`."""

from __future__ import annotations

import logging

from backend.queue import TRAIN_TASK
from worker.celery_app import app
from worker.launcher import run_training_job

log = logging.getLogger(__name__)


@app.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
    outcome = run_training_job(job_id, worker_name=self.request.hostname or "worker")
    log.info("job %s: %s", job_id, outcome)
    return outcome
