"""The Celery task of evaluations. Like :mod:`worker.tasks`, a message only wakes this worker's
scheduler (:mod:`worker.scheduler`), which claims evaluations from their table with a GPU
lease as it claims training jobs: an evaluation waiting for a GPU holds no Celery worker slot."""

from __future__ import annotations

import logging

from backend.services.evaluations import EVAL_TASK
from worker.celery_app import app
from worker.scheduler import get_scheduler

log = logging.getLogger(__name__)


@app.task(name=EVAL_TASK, bind=True)
def evaluate(self, evaluation_id: int) -> str:  # type: ignore[no-untyped-def]
    get_scheduler(self.request.hostname or "worker").wake()
    log.info("evaluation %s queued: scheduler woken", evaluation_id)
    return "woken"
