"""structlog setup: JSON lines when not on a terminal (production), readable text on one.

Correlation ids travel in contextvars (`bind_contextvars`), so every line a handler writes while
working on a referral carries them. `file=` sends every log line (structlog's and the standard
library's: nats-py, FastStream) to a file instead of stderr: `refbus up` and `refbus demo` keep their
logs in `<data_dir>/logs/refbus.log`, so that what a person reads on the terminal is the summary.
"""

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

import structlog

_open_files: list[TextIO] = []


def configure_logging(level: str | None = None, json: bool | None = None, file: Path | None = None) -> None:
    level = (level or os.environ.get("REFBUS_LOG_LEVEL") or "INFO").upper()
    numeric = logging.getLevelName(level)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    target: TextIO = sys.stderr
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        target = open(file, "a", buffering=1, encoding="utf-8")  # open for the process's life
        _open_files.append(target)
    if json is None:
        json = os.environ.get("REFBUS_LOG_JSON", "").lower() in ("1", "true") or not target.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=target),
        cache_logger_on_first_use=True,
    )
    # The libraries' own logging (nats-py, FastStream, asyncio) goes to the same place, one line each.
    handler = logging.StreamHandler(target)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_refbus", False):
            root.removeHandler(old)
    handler._refbus = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.INFO))


class bound:
    """Log context for a block, as structlog's `bound_contextvars` but without reading every bound
    variable first: that copy of the context cost ~4% of a service's CPU, once per message."""

    __slots__ = ("tokens", "values")

    def __init__(self, **values: object) -> None:
        self.values = values

    def __enter__(self) -> None:
        self.tokens = structlog.contextvars.bind_contextvars(**self.values)

    def __exit__(self, *_exc: object) -> None:
        structlog.contextvars.reset_contextvars(**self.tokens)
