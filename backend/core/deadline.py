"""Cooperative deadlines for work that grows with a request's input (issue 26).

A thread cannot be killed from outside, so work proportional to its input (a sample preview's
tiles, a report's rows, a comparison's jobs) calls :func:`check` between its units: inside
:func:`bound` it raises the bound's error once the request is past its deadline or its client
has gone away; outside one (the CLI, a worker) it does nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[Callable[[], None] | None] = ContextVar("vlstudio_deadline", default=None)


def check() -> None:
    """Raise if the work under way should stop (see the module docstring)."""
    stop = _current.get()
    if stop is not None:
        stop()


@contextmanager
def bound(stop: Callable[[], None]) -> Iterator[None]:
    """:func:`check` calls ``stop`` (which raises to end the work) while this block runs."""
    token = _current.set(stop)
    try:
        yield
    finally:
        _current.reset(token)
