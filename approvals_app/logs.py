"""Structured logs: one JSON object per line, each carrying the request id.

The id comes from a well-formed ``X-Request-ID`` header or is made here, is returned in
the response header, and is attached to every log line written while handling that
request (a context variable), so a release can be followed across log lines. Bodies,
headers and tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def choose_request_id(header: str | None) -> str:
    return header if header and _VALID_ID.match(header) else uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    FIELDS = ("method", "path", "status", "ms", "client", "code")

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage(),
               "request_id": request_id.get()}
        out.update({k: getattr(record, k) for k in self.FIELDS if hasattr(record, k)})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, separators=(",", ":"))


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = name != "uvicorn.access"  # we log requests
