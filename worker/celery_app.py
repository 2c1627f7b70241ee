"""The Celery worker application: ``celery -A worker.celery_app worker -Q gpu``."""

from __future__ import annotations

from backend.queue import make_celery

app = make_celery()
app.conf.imports = ("worker.tasks",)
