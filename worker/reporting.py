"""Optional reporting targets fed from metrics.jsonl by the worker: MLflow and W&B, each only
when its package is installed and it is configured. (TensorBoard event files are written by the
trainer itself with ``report_to: tensorboard``.)"""

from __future__ import annotations

import importlib.util
import logging
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


def make_reporters(run_dir: Path, job_id: int, hyper: dict[str, Any], settings: Settings) -> list[Reporter]:
    out: list[Reporter] = []
    targets = ((settings.mlflow_tracking_uri, "mlflow", lambda: MlflowReporter(settings.mlflow_tracking_uri, job_id,
                                                                               hyper)),
               (settings.wandb_project, "wandb", lambda: WandbReporter(settings.wandb_project, job_id, hyper, run_dir)))
    for configured, package, factory in targets:
        if not configured:
            continue
        if importlib.util.find_spec(package) is None:
            log.warning("%s is configured but not installed; job %s will not report to it", package, job_id)
            continue
        out.append(factory())
    return out
