"""The worker's import runner: model imports (checkpoint conversions, a kind of run of the one
lifecycle, :data:`backend.services.runs.MODEL_IMPORT`) claimed from the ``model_imports`` table
and done here, with progress stored as weights are written and a cancel
that stops the conversion (the half-written folder is removed: the converter writes into a
temporary folder and renames it only when complete)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend import live
from backend.db.models import JobStatus as S
from backend.db.session import session_scope
from backend.services import model_imports as svc
from backend.services.errors import Conflict, DomainError, InvalidInput
from backend.services.models import import_model
from backend.settings import get_settings

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
REPORT_SECONDS = 0.5


class ImportCancelled(Exception):
    """Raised from the progress callback: the user cancelled the import."""


class ImportRunner:
    def __init__(self, worker_name: str, convert: Callable[..., Any] | None = None) -> None:
        self.name = worker_name
        self.convert = convert
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="vlstudio-imports", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.run_once():
                    continue
            except Exception:  # a database outage must not end the runner
                log.exception("import runner: failed; retrying")
            self.stopping.wait(POLL_SECONDS)

    def run_once(self) -> bool:
        with session_scope() as s:
            imp = svc.claim(s, self.name)
            if imp is None:
                return False
            import_id, src, name, owner = imp.id, Path(imp.src), imp.name, imp.owner_id
        self._run(import_id, src, name, owner)
        return True

    def _progress(self, import_id: int) -> Callable[[int, int, str], None]:
        last = [0.0]

        def report(done: int, total: int, message: str) -> None:
            if time.monotonic() - last[0] < REPORT_SECONDS and done < total:
                return
            last[0] = time.monotonic()
            with session_scope() as s:
                go_on = svc.report(s, import_id, done / total if total else 0.0, message)
            live.publish(import_id, "import")
            if not go_on:
                raise ImportCancelled(f"model import {import_id} cancelled")

        return report

    def _run(self, import_id: int, src: Path, name: str, owner: int | None) -> None:
        convert = self.convert
        if convert is None:
            from worker.convert import import_checkpoint as convert
        settings = get_settings()
        try:
            with session_scope() as s:
                model = import_model(s, settings, src, name, owner, convert, self._progress(import_id))
                values = {"model_id": model.id, "progress": 1.0, "message": f"registered as {model.name}"}
            outcome = (S.succeeded, values)
        except ImportCancelled:
            outcome = (S.cancelled, {"message": "cancelled; nothing was kept",
                                     "failure_reason": "cancelled by the user; nothing was kept"})
        except DomainError as e:
            code = 409 if isinstance(e, Conflict) else 422 if isinstance(e, InvalidInput) else 400
            outcome = (S.failed, {"failure_reason": e.message, "error_status": code})
        except Exception as e:  # noqa: BLE001 - recorded on the import, with the trace in the worker log
            log.exception("model import %s failed", import_id)
            outcome = (S.failed, {"failure_reason": f"{type(e).__name__}: {e}", "error_status": 500})
        with session_scope() as s:
            svc.finish(s, import_id, outcome[0], **outcome[1])
        live.publish(import_id, "import")


_runner: ImportRunner | None = None


def start_runner(worker_name: str) -> ImportRunner:
    global _runner
    if _runner is None:
        _runner = ImportRunner(worker_name)
        _runner.start()
    return _runner
