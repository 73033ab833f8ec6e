"""HTTP/1.1 on the wire, toward the upstream: one grammar, one writer, one parser.

- The token grammar (RFC 9110 5.6.2) that request methods and header names obey.
- ``request_head``: the request line and header block, encoded once per request.
- ``request_framing``: how a client's request body is framed, or why it is refused.
- ``UpstreamResponse``: http.client's response with a strict head parser. http.client
  hands the header block to the ``email`` package, which costs about as much as the rest
  of a proxied request and treats a bare CR as a line break (so ``X-A: 1\\rSet-Cookie: x``
  would reach the client as two headers). Here each line is checked as it is read, a
  malformed head raises ``http.client.HTTPException`` (a 502), and the headers land in a
  plain list in order, repeats kept, plus a lower-case index for the framing lookups.
  Body reading (lengths, chunks, read-until-close, ``read1``) stays http.client's.
- ``response_framing_error``: a response head a client must not receive.
"""

from __future__ import annotations

import http.client
import re
from typing import Any

from ..errors import BadRequest, BodyTooLarge, NotSupported

# tchar (RFC 9110 5.6.2): what a method and a header name are made of.
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_METHOD = re.compile(f"[{_TCHAR}]+")
# A request target on the wire: no spaces, controls or DEL (non-ASCII is checked apart).
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_BTCHAR = _TCHAR.encode()
# A header line: a token, a colon, then visible characters, spaces and tabs.
_HEADER_LINE = re.compile(rb"([" + _BTCHAR + rb"]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r?\n")
# A continuation (obs-fold) line: leading space or tab, then the same characters.
_FOLD_LINE = re.compile(rb"[ \t]+([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r?\n")
# The fast path: a whole block of plain CRLF header lines and the blank line ending it.
_PLAIN_BLOCK = re.compile(rb"(?:[" + _BTCHAR + rb"]+:[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n")
# Splits a block _PLAIN_BLOCK accepted (so every character is already known good).
_PLAIN_FIELD = re.compile(rb"([^:]+):[ \t]*([^\r]*)\r\n")
_MAX_LINE = 65536
_MAX_HEADERS = 100


def request_head(method: str, target: str, headers: dict[str, str], chunked: bool) -> bytes:
    """The request line and header block, encoded once (also for a replay).

    A method or target the request line cannot carry raises BadRequest (400) before any
    connection is taken. Header values come from the client's request, which gunicorn
    (or werkzeug) has already checked for CR, LF and NUL, and from this proxy itself.
    """
    if _METHOD.fullmatch(method) is None:
        raise BadRequest(f"method {method[:40]!r} is not an HTTP token")
    if _BAD_TARGET.search(target) is not None or not target.isascii():
        raise BadRequest(f"request target {target[:80]!r} has spaces, controls or non-ASCII")
    # One join and one encode for the whole head; each field is joined by map() in C, so
    # a header costs no Python bytecode of its own.
    lines = [f"{method} {target} HTTP/1.1", *map(": ".join, headers.items())]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1", "replace")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


#: The chunk that ends a chunked body (no trailers).
LAST_CHUNK = b"0\r\n\r\n"


def request_framing(coding: str | None, length_text: str, max_body: int) -> int | None:
    """How a request body is framed: its length, 0 for none, None for chunked.

    Raises NotSupported (501) for a transfer coding other than ``chunked`` alone,
    BadRequest (400) for both framings or an unreadable length, BodyTooLarge (413) for
    a declared length over ``max_body`` (0: no limit).
    """
    if coding is not None:
        if coding.strip().lower() != "chunked":
            raise NotSupported(
                f"Transfer-Encoding {coding[:60]!r} is not supported; only chunked is"
            )
        if length_text:
            raise BadRequest("request has both Content-Length and Transfer-Encoding")
        return None
    if not length_text:
        return 0
    if not length_text.isdigit():
        raise BadRequest(f"bad Content-Length {length_text[:40]!r}")
    length = int(length_text)
    if max_body and length > max_body:
        raise BodyTooLarge(f"request body of {length} bytes is over {max_body} (PROXY_MAX_BODY)")
    return length


def response_framing_error(index: dict[str, list[str]]) -> str | None:
    """Why a response head's framing is ambiguous to the client's side, or None.

    Both Content-Length and Transfer-Encoding, or Content-Lengths that disagree, are
    refused (as nginx does): which framing the client would see cannot be known.
    """
    if "transfer-encoding" in index and "content-length" in index:
        return "sent both Content-Length and Transfer-Encoding"
    lengths = set(index.get("content-length", ()))
    if len(lengths) > 1 or (len(lengths) == 1 and "," in next(iter(lengths))):
        return "sent conflicting Content-Lengths"
    return None


def keepalive_timeout(value: str | None) -> float | None:
    """The ``timeout=N`` of a ``Keep-Alive`` response header, or None."""
    if not value:
        return None
    for part in value.split(","):
        name, _, number = part.strip().partition("=")
        if name.strip().lower() == "timeout":
            try:
                return float(number.strip())
            except ValueError:
                return None
    return None


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
