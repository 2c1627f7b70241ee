"""Following one running job: its log and metrics into the database in batches, GPU samples,
cooperative cancel with escalation, and the verdict when the trainer exits."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from backend import live
from backend.db.models import JobLog, JobMetric, JobStatus
from backend.db.session import session_scope
from backend.services import jobs as jobs_svc
from backend.settings import get_settings
from worker import gpus
from worker.reporting import make_reporters

if TYPE_CHECKING:
    from worker.launcher import Executor, LogTail, MetricsTail, RunControl

S = JobStatus
TAIL_LINES = 20


class Supervision:
    def __init__(self, job_id: int, run_dir: Path, executor: Executor, control: RunControl, logs: LogTail,
                 metrics: MetricsTail) -> None:
        self.job_id, self.run_dir, self.executor, self.control = job_id, run_dir, executor, control
        self.logs, self.metrics = logs, metrics
        self.settings = get_settings()
        self.tail: list[str] = []
        self.stop_sent_at: float | None = None
        self.killed = False
        self.lost = False  # the job was finished by someone else (recovery after a stall)
        self.step = 0
        self.next_gpu_sample = time.monotonic()
        with session_scope() as s:
            self.log_seq = jobs_svc.next_seq(s, JobLog, job_id)
            self.metric_seq = jobs_svc.next_seq(s, JobMetric, job_id)
            hyper = jobs_svc.get_job(s, job_id).hyper
        self.reporters = make_reporters(run_dir, job_id, hyper, self.settings)

    def _gpu_rows(self) -> list[dict]:
        if not self.control.gpu_ids or time.monotonic() < self.next_gpu_sample:
            return []
        self.next_gpu_sample = time.monotonic() + self.settings.gpu_sample_seconds
        sample = gpus.sample(self.control.gpu_ids or [])
        return [{"kind": "gpu", "step": self.step, **sample}] if sample else []

    def _store(self, lines: list[str], rows: list[dict]) -> JobStatus:
        """One transaction per batch: every line read since the last tick, in order."""
        with session_scope() as s:
            if lines:
                self.log_seq = jobs_svc.append_logs(s, self.job_id, self.log_seq, lines)
                self.tail = (self.tail + lines)[-TAIL_LINES:]
            train_rows = [r for r in rows if r.get("kind") != "gpu"]
            if rows:
                self.metric_seq = jobs_svc.append_metrics(s, self.job_id, self.metric_seq, rows)
            if train_rows:
                last = train_rows[-1]
                self.step = int(last.get("step", self.step))
                jobs_svc.record_progress(s, self.job_id, step=self.step, total_steps=last.get("total_steps"))
                for r in self.reporters:
                    r.log(train_rows)
            status = jobs_svc.get_job(s, self.job_id).status
        if lines or rows:
            live.publish(self.job_id)
        return status

    def _steer(self, status: JobStatus) -> None:
        if status.finished and not self.killed:
            self.lost = True
            self.executor.kill()
            self.killed = True
        elif (status == S.stopping or self.control.drain_reason) and self.stop_sent_at is None:
            self.executor.terminate()  # the trainer saves a checkpoint and exits
            self.stop_sent_at = time.monotonic()
        elif (self.stop_sent_at is not None and not self.killed
              and time.monotonic() - self.stop_sent_at > self.settings.cancel_grace_seconds):
            self.executor.kill()
            self.killed = True

    def follow(self) -> int:
        while True:
            rc = self.executor.poll()
            status = self._store(self.logs.read(final=rc is not None), self.metrics.read() + self._gpu_rows())
            if rc is not None:
                return rc
            self._steer(status)
            time.sleep(self.settings.stream_poll_seconds)

    def finish(self, rc: int, send: Callable[[int], str | None]) -> str:
        for r in self.reporters:
            r.close()
        try:
            return self._verdict(rc, send)
        finally:
            live.publish(self.job_id)

    def _verdict(self, rc: int, send: Callable[[int], str | None]) -> str:
        ckpt = jobs_svc.latest_checkpoint(str(self.run_dir))
        with session_scope() as s:
            job = jobs_svc.get_job(s, self.job_id)
            if self.lost or job.status.finished:
                return "taken over (marked finished elsewhere)"
            jobs_svc.record_progress(s, self.job_id, last_checkpoint=str(ckpt) if ckpt else None)
            saved = f"; last checkpoint {ckpt.name}" if ckpt else "; no checkpoint"
            escalated = f" (killed after {self.settings.cancel_grace_seconds:.0f}s grace)" if self.killed else ""
            if job.status == S.stopping:
                jobs_svc.transition(s, self.job_id, S.cancelled, exit_code=rc,
                                    failure_reason=f"cancelled by the user{escalated}{saved}")
                return "cancelled"
            if self.control.drain_reason:
                jobs_svc.transition(s, self.job_id, S.failed, exit_code=rc,
                                    failure_reason=f"{self.control.drain_reason}{escalated}{saved}")
                if job.requeue_on_failure:
                    jobs_svc.requeue(s, job, send)
                return "failed (worker shut down)"
            final = self.run_dir / "final"
            # A full model, or a LoRA adapter saved without merging (merge_lora off).
            if rc == 0 and ((final / "config.json").exists() or (final / "adapter" / "adapter_config.json").exists()):
                jobs_svc.transition(s, self.job_id, S.succeeded, exit_code=0)
                return "succeeded"
            reason = f"trainer exited with code {rc}" if rc else "trainer exited without writing the final model"
            jobs_svc.transition(s, self.job_id, S.failed, exit_code=rc,
                                failure_reason=reason + saved + "\n" + "\n".join(self.tail))
            return "failed"
