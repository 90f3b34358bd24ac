"""Structured logging: one event per line on stderr, JSON or console.

Tether's own events go through structlog's filtering logger straight to stderr
(the per-RPC line is on the hot path, so it skips the stdlib machinery). Other
libraries' stdlib `logging` records (alembic, SQLAlchemy, grpc) are rendered by
the same processors, so in `json` format every stderr line is one JSON object:

    {"address": "127.0.0.1:50051", "event": "serving", "level": "info", "timestamp": "..."}
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor


def _shared_processors(fields: Mapping[str, Any]) -> list[Processor]:
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fields:
        processors.insert(0, _add_fields(dict(fields)))
    return processors


def _add_fields(fields: dict[str, Any]) -> Processor:
    """A processor that puts `fields` on every line (e.g. `worker=1` in a worker process)."""

    def add(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict

    return add


def _renderer(log_format: str) -> list[Processor]:
    if log_format == "json":
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    return [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]


def configure_logging(
    level: str = "INFO", log_format: str = "console", fields: Mapping[str, Any] | None = None
) -> None:
    """Configure structlog and the stdlib root logger; safe to call again. `fields` are
    added to every line (the worker processes of `tether serve --workers N` say `worker`)."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    renderer = _renderer(log_format)
    shared = _shared_processors(fields or {})
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # Python warnings become log records too, so JSON output stays JSON.
    logging.captureWarnings(True)
    # SQLAlchemy's engine logger would echo every statement at INFO; keep it to warnings.
    logging.getLogger("sqlalchemy").setLevel(max(numeric, logging.WARNING))
    # Alembic chatters about plugins at INFO; keep only its "Running upgrade" lines.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("alembic.runtime.migration").setLevel(numeric)


def get_logger(**initial: Any) -> FilteringBoundLogger:
    """A logger bound to `initial` key/values."""
    return cast(FilteringBoundLogger, structlog.get_logger(**initial))
