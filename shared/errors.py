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
