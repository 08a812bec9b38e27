"""Logging setup: structured JSON lines, and a filter that keeps tokens out of every log line.

uvicorn logs each WebSocket handshake with its path and query string on ``uvicorn.error`` (and
HTTP requests on ``uvicorn.access``); browsers can only pass a token in the query string, so
those lines would carry it. ``RedactSecrets`` rewrites them before any handler sees them.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

_TOKEN_PARAM = re.compile(r"((?:access_)?token=)[^&\s\"']+", re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_JWT_PREFIX = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.")
_BEARER = re.compile(r"(bearer[ .])[A-Za-z0-9._-]+", re.IGNORECASE)
REDACTED = "[redacted]"
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def redact(text: str) -> str:
    """Replace anything that looks like a token (query parameter, JWT, bearer credential)."""
    text = _TOKEN_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _JWT.sub(REDACTED, text)


class RedactSecrets(logging.Filter):
    """Redacts tokens from a record's message and arguments (attach to loggers or handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(_redact_arg(a) for a in args)
        return True


def _redact_arg(value: object) -> object:
    """Strings are redacted; other objects too when their text carries a token (uvicorn logs each
    WebSocket frame at DEBUG as a ``Frame`` object, and a ``token_refresh`` frame holds a JWT)."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float):
        return value
    text = str(value)
    cleaned = redact(text)
    if cleaned == text and not _JWT_PREFIX.search(repr(value)):
        return value
    return cleaned


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS:
                entry[key] = value if isinstance(value, int | float | bool | None) else redact(str(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


_FILTER = RedactSecrets()


def install_redaction() -> None:
    """Attach the redaction filter to the loggers that may see tokens (idempotent)."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn", ""):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def configure(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Configure the root handler once (the CLI calls this; tests configure logging themselves)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s %(message)s")
    )
    handler.addFilter(_FILTER)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    install_redaction()
