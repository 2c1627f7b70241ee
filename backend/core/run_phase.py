"""What a run is doing before its first step, as its log says it: one line ``phase: <what>`` per
phase (preparing data, loading the model, compiling kernels, the first step). The trainer writes
them (:func:`worker.training.train.phase`); the API gives the last one of an active job with the
time it was written (``GET /api/jobs``: ``phase``, ``phase_since``) and the Jobs page shows it with
its elapsed time, so no wait is silent. Once steps are logged the step lines say the rest."""

from __future__ import annotations

PHASE_PREFIX = "phase: "


def phase_of(line: str) -> str | None:
    """The phase a log line announces, or None."""
    return line[len(PHASE_PREFIX):].strip() or None if line.startswith(PHASE_PREFIX) else None
