"""A strict, lean parser for the upstream's response head.

urllib3's connections keep http.client's ``HTTPResponse`` for reading a response; its
``begin`` hands the header block to the ``email`` package, which costs about as much as
the rest of a proxied request put together and treats a bare CR as a line break (so
``X-A: 1\\rSet-Cookie: x`` would reach the client as two headers). ``UpstreamResponse``
keeps http.client's body reading (lengths, chunks, read-until-close, ``read1``) and
replaces only the head: each line is checked as it is read, a malformed head raises
``http.client.HTTPException`` (a 502), and the headers land in a plain list in order,
repeats kept, plus a lower-case index for the few lookups the framing needs.
"""

from __future__ import annotations

import http.client
import re
from typing import Any

# A header line: a token, a colon, then visible characters, spaces and tabs.
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r?\n"
)
# A continuation (obs-fold) line: leading space or tab, then the same characters.
_FOLD_LINE = re.compile(rb"[ \t]+([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r?\n")
# The fast path: a whole block of plain CRLF header lines and the blank line ending it.
_PLAIN_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n")
# Splits a block _PLAIN_BLOCK accepted (so every character is already known good).
_PLAIN_FIELD = re.compile(rb"([^:]+):[ \t]*([^\r]*)\r\n")
_MAX_LINE = 65536
_MAX_HEADERS = 100


class Headers(http.client.HTTPMessage):
    """Response headers as a list, with the ``email.message.Message`` lookups
    http.client (and urllib3) use answered from an index instead of a scan."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__()
        self._headers = items
        self.index: dict[str, list[str]] = {}
        for name, value in items:
            self.index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, failobj: Any = None) -> Any:
        values = self.index.get(name.lower())
        return values[0] if values else failobj

    def get_all(self, name: str, failobj: Any = None) -> Any:
        return list(self.index.get(name.lower(), ())) or failobj

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.index

    def items(self) -> list[tuple[str, str]]:
        return list(self._headers)


class UpstreamResponse(http.client.HTTPResponse):
    """http.client's response with a strict, fast head parser (see the module docstring)."""

    headers: Headers
    msg: Headers

    def begin(self) -> None:
        if self.headers is not None:
            return
        fp = self.fp
        while True:
            version, status, reason, items = self._head(fp)
            if status >= 200 or status == 101:
                break  # 1xx interim responses (100, 103...) are skipped
        self.code = self.status = status
        self.reason = reason
        self.version = 10 if version in ("HTTP/1.0", "HTTP/0.9") else 11
        self.headers = self.msg = Headers(items)
        coding = self.headers.get("transfer-encoding")
        self.chunked = bool(coding) and coding.strip().lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            length = length.strip()
            if not length.isdigit():
                raise http.client.HTTPException(f"bad Content-Length {length[:40]!r}")
            self.length = int(length)
        if status in (204, 304) or status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True

    def _head(self, fp: Any) -> tuple[str, int, str, list[tuple[str, str]]]:
        """One response head: status line and header lines.

        The common case, a head already buffered whole with plain ``name: value`` CRLF
        lines, is checked and split in two regex passes over the buffer; anything else
        (a head split across reads, obs-fold, bare LF, a malformed line) is read line by
        line, which gives the same result or the same error.
        """
        buf = fp.peek(_MAX_LINE) if hasattr(fp, "peek") else b""
        start = buf.find(b"\n") + 1  # the status line must end in CRLF too
        end = buf.find(b"\r\n\r\n", start - 2) if start > 1 and buf[start - 2] == 13 else -1
        if end >= 0 and _PLAIN_BLOCK.fullmatch(buf, start, end + 4) is not None:
            block = fp.read(end + 4)
            version, status, reason = self._status_line(block[:start])
            items = [
                (name.decode("ascii"), value.rstrip(b" \t").decode("iso-8859-1"))
                for name, value in _PLAIN_FIELD.findall(block, start)
            ]
            if len(items) > _MAX_HEADERS:
                raise http.client.HTTPException(f"more than {_MAX_HEADERS} response headers")
            return version, status, reason, items
        version, status, reason = self._status_line(fp.readline(_MAX_LINE + 1))
        return version, status, reason, self._header_lines(fp)

    def _status_line(self, line: bytes) -> tuple[str, int, str]:
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("status line")
        text = line.decode("iso-8859-1").rstrip("\r\n")
        version, _, rest = text.partition(" ")
        code, _, reason = rest.partition(" ")
        if (
            not version.startswith("HTTP/1.")
            or len(code) != 3
            or not code.isdigit()
            or "\r" in text
            or "\x00" in text
        ):
            self._close_conn()  # type: ignore[attr-defined]
            raise http.client.BadStatusLine(text[:100])
        return version, int(code), reason.strip()

    def _header_lines(self, fp: Any) -> list[tuple[str, str]]:
        """Read header lines up to the blank line; obs-fold joined with one space."""
        items: list[tuple[str, str]] = []
        while True:
            line = fp.readline(_MAX_LINE + 1)
            if line in (b"\r\n", b"\n"):
                return items
            if not line:
                raise http.client.IncompleteRead(b"", None)
            if len(line) > _MAX_LINE:
                raise http.client.LineTooLong("header line")
            match = _HEADER_LINE.fullmatch(line)
            if match is not None:
                items.append((match[1].decode("ascii"), match[2].decode("iso-8859-1")))
            else:
                fold = _FOLD_LINE.fullmatch(line)
                if fold is None or not items:
                    raise http.client.HTTPException(
                        "a response header line is malformed (bare CR, NUL, control "
                        "character or no name)"
                    )
                name, value = items[-1]
                items[-1] = (name, f"{value} {fold[1].decode('iso-8859-1')}".strip())
            if len(items) > _MAX_HEADERS:
                raise http.client.HTTPException(f"more than {_MAX_HEADERS} response headers")

    @property
    def incomplete(self) -> bool:
        """True when the body ended before its declared length."""
        return bool(self.length)
