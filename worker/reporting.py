"""Optional reporting targets fed from metrics.jsonl by the worker: MLflow and W&B, each only
when its package is installed and it is configured. (TensorBoard event files are written by the
trainer itself with ``report_to: tensorboard``.)"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from backend.settings import Settings

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def log(self, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)
            and k != "step"}


class MlflowReporter:
    def __init__(self, uri: str, job_id: int, hyper: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("vlstudio")
        self.run = mlflow.start_run(run_name=f"job-{job_id}")
        mlflow.log_params({k: v for k, v in hyper.items() if v is not None})

    def log(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.mlflow.log_metrics(_numbers(r), step=int(r.get("step", 0)))

    def close(self) -> None:
        self.mlflow.end_run()


class WandbReporter:
    def __init__(self, project: str, job_id: int, hyper: dict[str, Any], run_dir: Path) -> None:
        import wandb

        self.run = wandb.init(project=project, name=f"job-{job_id}", config=hyper, dir=str(run_dir), reinit=True)

    def log(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.run.log(_numbers(r), step=int(r.get("step", 0)))

    def close(self) -> None:
        self.run.finish()


class ReporterPump:
    """Feeds one reporter from a thread of its own, so an MLflow or W&B outage (their clients
    retry for minutes) never stalls the job's log stream. Rows wait in order and are sent again
    with backoff until the target answers; creating the reporter is retried the same way.
    ``notes`` collects what the job's log should say about it (outage, recovery)."""

    def __init__(self, name: str, factory: Callable[[], Reporter], max_backoff: float = 30.0) -> None:
        self.name, self.factory, self.max_backoff = name, factory, max_backoff
        self.reporter: Reporter | None = None
        self.queue: deque[dict[str, Any]] = deque()
        self.cond = threading.Condition()
        self.closing = False
        self.failing = False
        self.messages: list[str] = []
        self.thread = threading.Thread(target=self._loop, name=f"report-{name}", daemon=True)
        self.thread.start()

    def log(self, rows: list[dict[str, Any]]) -> None:
        with self.cond:
            self.queue.extend(rows)
            self.cond.notify()

    def notes(self) -> list[str]:
        with self.cond:
            out, self.messages = self.messages, []
        return out

    def _send(self) -> None:
        if self.reporter is None:
            self.reporter = self.factory()
        with self.cond:
            batch = list(self.queue)
        if batch:
            self.reporter.log(batch)
            with self.cond:
                for _ in batch:
                    self.queue.popleft()

    def _loop(self) -> None:
        delay = 0.5
        while True:
            with self.cond:
                while not self.queue and not self.closing and self.reporter is not None:
                    self.cond.wait()
                if self.closing and not self.queue:
                    return
            try:
                self._send()
            except Exception as e:  # noqa: BLE001 - any client error is an outage: rows wait
                if not self.failing:
                    self.failing = True
                    self.messages.append(f"reporting to {self.name} failed ({type(e).__name__}: {e}); "
                                         "metrics are kept and sent again when it answers")
                    log.warning("%s reporter failed: %s", self.name, e)
                time.sleep(delay)
                delay = min(self.max_backoff, delay * 2)
                continue
            if self.failing:
                self.failing = False
                self.messages.append(f"reporting to {self.name} works again; no metric was lost")
            delay = 0.5

    def close(self, timeout: float = 30.0) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("%s reporter: %d metric rows not sent (still unreachable)", self.name, len(self.queue))
            return
        if self.reporter is not None:
            try:
                self.reporter.close()
            except Exception as e:  # noqa: BLE001 - the run is over; say so, do not fail the job
                log.warning("%s reporter: closing failed: %s", self.name, e)


def make_reporters(run_dir: Path, job_id: int, hyper: dict[str, Any], settings: Settings) -> list[ReporterPump]:
    out: list[ReporterPump] = []
    targets = ((settings.mlflow_tracking_uri, "mlflow", lambda: MlflowReporter(settings.mlflow_tracking_uri, job_id,
                                                                               hyper)),
               (settings.wandb_project, "wandb", lambda: WandbReporter(settings.wandb_project, job_id, hyper, run_dir)))
    for configured, package, factory in targets:
        if not configured:
            continue
        if importlib.util.find_spec(package) is None:
            log.warning("%s is configured but not installed; job %s will not report to it", package, job_id)
            continue
        out.append(ReporterPump(package, factory))
    return out
