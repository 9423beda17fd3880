"""Structured JSON logs (structlog), with the standard library's loggers (pynetdicom,
uvicorn, alembic) routed through the same renderer so one line is one JSON object."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure_logging(level: str = "INFO", fmt: str = "json", *, service: str = "rtops") -> None:
    def add_service(_logger: object, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        # Static, not a context variable: the SCP logs from pynetdicom's threads, which do
        # not inherit the main thread's context.
        event.setdefault("service", service)
        return event

    shared = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; its association summaries are enough at WARNING.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
