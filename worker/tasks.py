"""Celery tasks. They are thin: a message only wakes this worker's scheduler
(:mod:`worker.scheduler`), which takes jobs from the jobs table."""

from __future__ import annotations

import logging

from backend.queue import TRAIN_TASK
from worker.celery_app import app
from worker.scheduler import get_scheduler

log = logging.getLogger(__name__)


@app.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
    get_scheduler(self.request.hostname or "worker").wake()
    log.info("job %s queued: scheduler woken", job_id)
    return "woken"
