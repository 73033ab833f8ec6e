"""The access log as JSON, one object a line (PROXY_ACCESS_LOG_FORMAT=json).

gunicorn's text access log fills ``%`` atoms without escaping, so a user agent with a
quote would break a JSON template; this logger class builds the object and lets ``json``
escape it. Part of the gunicorn adapter: it relies on gunicorn's ``Logger.access`` and
``access_log`` (gunicorn/glogging.py), checked with the rest of ``server/``.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def record(resp: Any, environ: dict[str, Any], request_time: datetime.timedelta) -> dict[str, Any]:
    """One request's fields: what the text format shows, typed."""
    status = resp.status
    code = int(status.split(None, 1)[0]) if isinstance(status, str) else status
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "client": environ.get("REMOTE_ADDR"),
        "method": environ.get("REQUEST_METHOD"),
        "target": environ.get("RAW_URI"),
        "status": code,
        "bytes": getattr(resp, "sent", None),
        "duration": request_time.total_seconds(),
        "upstream_addr": environ.get("wsgiproxy.upstream_addr"),
        "upstream_status": environ.get("wsgiproxy.upstream_status"),
        "upstream_ms": _number(environ.get("wsgiproxy.upstream_ms")),
        "pool_wait_ms": _number(environ.get("wsgiproxy.pool_wait_ms")),
        "conn": environ.get("wsgiproxy.conn"),
        "request_id": environ.get("wsgiproxy.request_id"),
        "user_agent": environ.get("HTTP_USER_AGENT"),
    }


class JsonAccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing each access as one JSON object."""

    def access(
        self, resp: Any, req: Any, environ: dict[str, Any], request_time: datetime.timedelta
    ) -> None:
        if not self.access_log_enabled:
            return
        try:
            line = json.dumps(record(resp, environ, request_time), separators=(",", ":"))
            self.access_log.info(line)
        except Exception:
            self.exception("could not write the access log line")
