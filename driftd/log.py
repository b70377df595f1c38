"""structlog set-up: JSON lines off a terminal (journald keeps them), readable
lines on one. Context such as the scan id is bound per unit of work."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(
    *, level: str = "warning", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Route driftd's log events to ``stream`` (stderr by default)."""
    output = stream or sys.stderr
    as_json = not output.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks without local variables: they can hold secrets.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
            if as_json
            else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=False,
    )
