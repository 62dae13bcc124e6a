"""Domain errors. Each maps to one canonical gRPC status in transport/status.py; messages name the fix."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class Acg2vecError(Exception):
    """Base of the errors the service reports to callers."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None):
        super().__init__(message)
        self.message = message
        self.violations = violations or []


class InvalidInput(Acg2vecError):
    """The request is malformed (INVALID_ARGUMENT)."""


class TooLarge(Acg2vecError):
    """The request is over a size limit (RESOURCE_EXHAUSTED)."""


class NotFound(Acg2vecError):
    """The named thing does not exist (NOT_FOUND)."""


class FailedPrecondition(Acg2vecError):
    """The system is not in a state to answer, e.g. an optional model is not installed (FAILED_PRECONDITION)."""


class BackendUnavailable(Acg2vecError):
    """A backend cannot be reached; retry later (UNAVAILABLE)."""

    def __init__(self, backend: str, message: str):
        super().__init__(message)
        self.backend = backend


class Overloaded(Acg2vecError):
    """The server is at capacity (RESOURCE_EXHAUSTED); retry with backoff."""


@dataclass
class ItemFailure:
    """One failed item of a batch or stream, with its index."""

    index: int
    error: Acg2vecError
    extra: dict[str, str] = field(default_factory=dict)
