"""Log formats: `text` (one readable line per record) and `json` (one JSON object per line, for log collectors).

A JSON line carries `time` (UTC, RFC 3339), `level`, `logger`, `message`, the record's extra fields (the access log
adds grpc_service, grpc_method, grpc_code, duration_ms, peer, client), `exception` when there is one, and
`trace_id` / `span_id` (lower-case hex, as in W3C trace context) when the record is written inside a recorded span,
so that a log line leads to its trace.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from acg2vec_server.settings import LogFormat

#: What every LogRecord has; anything else on a record came from `extra=` and goes into the JSON line.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def trace_fields() -> dict[str, str]:
    """trace_id and span_id of the span current in this thread or task, if it is a valid one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "time": created.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        entry.update(trace_fields())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup(level: str = "INFO", timestamps: bool = True, fmt: LogFormat = "text") -> None:
    """The root logger writes to stderr in `fmt` (like logging.basicConfig: nothing changes when the root logger
    already has a handler)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(("%(asctime)s " if timestamps else "") + "%(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler])
