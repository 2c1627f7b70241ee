"""Domain errors. Only the API layer turns them into HTTP responses."""

from __future__ import annotations


class DomainError(Exception):
    """Base class; ``details`` is a JSON-able list of problems."""

    def __init__(self, message: str, details: list | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class NotFound(DomainError):
    pass


class InvalidInput(DomainError):
    pass


class Conflict(DomainError):
    pass


class Abandoned(DomainError):
    """The request's client went away or it waited past its deadline: nothing was recorded."""
