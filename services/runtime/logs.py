"""structlog setup: JSON lines when not on a terminal (production), readable text on one.

Correlation ids travel in contextvars (`bind_contextvars`), so every line a handler writes while
working on a referral carries them.
"""

import logging
import os
import sys

import structlog


def configure_logging(level: str | None = None, json: bool | None = None) -> None:
    level = (level or os.environ.get("REFBUS_LOG_LEVEL", "INFO")).upper()
    if json is None:
        json = os.environ.get("REFBUS_LOG_JSON", "").lower() in ("1", "true") or not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
