"""The Celery application's configuration, shared by the API (which sends tasks by name)
and the worker (which registers them). The backend never imports the training program."""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from celery import Celery

from backend import queue_fs  # noqa: F401  (registers the embedded broker's transport)
from backend.settings import Settings, get_settings

log = logging.getLogger(__name__)
TRAIN_TASK = "vlstudio.train"
GPU_QUEUE = "gpu"


def make_celery(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    app = Celery("vlstudio", broker=s.celery_broker_url)
    conf: dict = {
        "task_default_queue": GPU_QUEUE,
        "task_routes": {TRAIN_TASK: {"queue": GPU_QUEUE}},
        # The jobs table is the source of truth; no result backend.
        "task_ignore_result": True,
        # Ack on receipt: a multi-day run must never be redelivered after Redis' visibility
        # timeout. The message is only a wake-up (the jobs table is the queue, see
        # backend.services.scheduling); a lost worker is found by its heartbeat, and the
        # claim's conditional update refuses a second start in any case.
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if s.embedded_broker:
        s.broker_dir.mkdir(parents=True, exist_ok=True)
        folder = str(s.broker_dir / "in")
        conf["broker_transport_options"] = {
            "data_folder_in": folder, "data_folder_out": folder,
            "processed_folder": str(s.broker_dir / "processed"), "store_processed": False,
            # Fanout/control exchanges (pidbox) would default to ./control in the working directory.
            "control_folder": str(s.broker_dir / "control"),
        }
    app.conf.update(conf)
    return app


@lru_cache
def _cached_celery(broker: str) -> Celery:
    return make_celery()


class _Waker:
    """Sends wake-ups from a background thread, coalescing bursts: a worker that wakes claims
    every job that fits, and workers also poll the jobs table, so one message per burst is
    enough, and a slow or dead broker never delays an API response."""

    def __init__(self) -> None:
        self.pending = threading.Event()
        self.job_id = 0
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def wake(self, job_id: int) -> None:
        with self.lock:
            self.job_id = job_id
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="vlstudio-waker", daemon=True)
                self.thread.start()
        self.pending.set()

    def _loop(self) -> None:
        while True:
            self.pending.wait()
            self.pending.clear()
            try:
                _cached_celery(get_settings().celery_broker_url).send_task(TRAIN_TASK, args=[self.job_id],
                                                                           retry=False)
            except Exception as e:  # noqa: BLE001 - the job waits in the table; workers poll it
                log.warning("could not reach the broker to wake a worker (job %s stays queued): %s", self.job_id, e)


_waker = _Waker()


def wake_workers(job_id: int) -> None:
    """Tell the workers a job is waiting (asynchronously; see ``_Waker``)."""
    _waker.wake(job_id)
