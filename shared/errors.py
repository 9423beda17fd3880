"""Error classes every service raises; each edge (HTTP, consumer, SCP) maps them once.

Messages say how to fix the problem, not only what went wrong.
"""

from __future__ import annotations


class RtopsError(Exception):
    """Base class; ``status`` is the HTTP status the app factory maps it to."""

    status: int = 500
    title: str = "Internal error"


class NotFound(RtopsError):
    status = 404
    title = "Not found"


class Conflict(RtopsError):
    status = 409
    title = "Conflict"


class RuleViolation(RtopsError):
    status = 422
    title = "Rule violated"


class Forbidden(RtopsError):
    status = 403
    title = "Forbidden"


class Unauthorized(RtopsError):
    status = 401
    title = "Unauthorized"


class TransientError(RtopsError):
    """Worth retrying later (database or broker briefly unavailable): consumers nak it."""

    status = 503
    title = "Temporarily unavailable"


class Poison(RtopsError):
    """Raised by an event handler for a message that will never succeed (a rule it breaks, a
    fact it contradicts): the consumer terms it to the dead letter at once."""

    status = 422
    title = "Event cannot be applied"


def is_permanent(exc: BaseException) -> bool:
    """The one mapping of errors to a consumer's outcome: True for an event that no retry can
    fix (unparseable, ``Poison``, a ``RuleViolation``, a payload that fails validation), which
    goes to the dead letter at once; False for anything else, which is redelivered with
    backoff (a database or broker away, or a bug in rtops that a fix and a redelivery cure)."""
    from pydantic import ValidationError

    from shared.events import InvalidEvent

    return isinstance(exc, InvalidEvent | Poison | RuleViolation | ValidationError)
