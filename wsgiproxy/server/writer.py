"""gunicorn's response writer, its Date header and its parse refusals, as a proxy needs them.

Part of the gunicorn adapter (``server/gunicorn.py`` checks the version and installs
these): a small response's head goes out with its first body bytes, its headers are
checked and rendered once a response rather than once a header, ``Date`` is
formatted once a second, a stopping worker says ``Connection: close``, and a request
gunicorn's parser refuses gets the proxy's one-line text/plain answer.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Any

from gunicorn import util as gunicorn_util  # type: ignore[import-untyped]
from gunicorn.http import wsgi as gunicorn_wsgi  # type: ignore[import-untyped]

from ..buffers import BLOCK
from .stopping import worker_stopping

#: Body bytes sent together with the head; a longer first write goes out separately
#: rather than being copied behind the head.
COALESCE_LIMIT = BLOCK

#: Longest body text of a parse refusal: gunicorn's message may quote a whole request line.
REFUSAL_TEXT_LIMIT = 300

# gunicorn's TOKEN_RE and HEADER_VALUE_RE as byte sets, newline added (the separator when
# names or values are checked joined): bytes.translate drops them in one C loop, several
# times faster than a regular expression's character class.
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAME_BYTES = _TOKEN_CHARS + b"\n"
_VALUE_BYTES = b"\t\n " + bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
#: Header names gunicorn's writer drops from an app's response, or acts on
#: (gunicorn/util.py: hop_headers).
DROPPED_BY_GUNICORN = frozenset(gunicorn_util.hop_headers)


class CheckedHeaders(list[tuple[str, str]]):
    """An app's response headers, already held to the rules gunicorn's writer checks, so
    ``CoalescingResponse`` takes them as they are: every name a token and none that
    gunicorn drops (``DROPPED_BY_GUNICORN``), every value free of control characters but
    tab and of spaces or tabs at its edges. ``content_length`` is the value of the last
    ``Content-Length`` among them, or None. Whoever builds one vouches for all of that
    (the proxy's ``response_head``, from a head its client parser checked); on any other
    server it is a plain list."""

    __slots__ = ("content_length",)

    def __init__(self) -> None:
        super().__init__()
        self.content_length: str | None = None


#: gunicorn's own writer class, whatever ``install()`` later puts in its place.
GUNICORN_RESPONSE: Any = gunicorn_wsgi.Response
_format_date = gunicorn_util.http_date
_date_cache: tuple[int, str] = (0, "")


# -- The response writer (gunicorn/http/wsgi.py: Response) ----------------------------------
class CoalescingResponse(GUNICORN_RESPONSE):  # type: ignore[misc]
    """gunicorn's ``Response``, sending its head with the first body bytes.

    gunicorn writes a head in one ``sendall`` and its body in another; each send is a trip
    through the kernel's TCP path and a wake-up of the reader. Here the head is held back
    and sent in the same call as the first body bytes, or when the response closes with
    no body. gunicorn checks and renders the head one header at a time in Python, which
    costs more than the rest of a small response's writing; here that is done once a
    response, in C. The bytes on the wire and the errors an app gets are gunicorn's,
    unchanged (tests/test_gunicorn_adapter.py compares the two).
    """

    _pending_head: bytes | None = None
    sock: Any
    headers_sent: bool
    chunked: bool

    def process_headers(self, headers: list[tuple[str, str]]) -> None:
        """gunicorn's checks of the app's headers, made once a response, not once a header.

        gunicorn's loop costs about 80 bytecodes and two regular expressions a header.
        Here the names and the values are each checked joined, in C, and the headers are
        kept as they are. Anything that loop would act on or refuse (a hop-by-hop name, a
        value to strip, a repeated ``Content-Length``, a bad character, type or shape, a
        name or value with a newline) goes through gunicorn's own loop instead: its result
        and its errors. ``CheckedHeaders`` were checked where they were built.
        """
        if type(headers) is CheckedHeaders:
            if headers.content_length is not None:
                self.response_length = int(headers.content_length)  # as gunicorn's loop
            self.headers.extend(headers)
            return
        try:
            names, values = zip(*headers, strict=True)
            joined_names, joined_values = "\n".join(names), "\n".join(values)
            # Characters outside ASCII or latin-1 raise: gunicorn's loop refuses them.
            name_bytes = joined_names.encode("ascii")
            value_bytes = joined_values.encode("latin-1")
        except (TypeError, ValueError):
            super().process_headers(headers)
            return
        lowered = joined_names.lower().split("\n")
        # Each value framed by newlines, tabs as spaces: a value gunicorn would strip
        # shows a space beside a newline.
        framed = f"\n{joined_values}\n".replace("\t", " ")
        if (
            name_bytes.translate(None, _NAME_BYTES)
            or value_bytes.translate(None, _VALUE_BYTES)
            or "\n " in framed
            or " \n" in framed
            or len(lowered) != len(names)
            or joined_values.count("\n") != len(values) - 1
            or "" in lowered
            or not DROPPED_BY_GUNICORN.isdisjoint(lowered)
            or lowered.count("content-length") > 1
        ):
            super().process_headers(headers)
            return
        if "content-length" in lowered:
            self.response_length = int(values[lowered.index("content-length")])
        self.headers.extend(zip(names, values, strict=True))

    def send_headers(self) -> None:
        """Render the head as gunicorn does, but hold it until there is a body to send.

        A worker that began to stop while this request was in flight says
        ``Connection: close`` (gunicorn only does so for requests that arrive after):
        the client then opens its next request elsewhere instead of writing it on a
        connection the worker is about to close, which is the one race a client cannot
        tell from a lost request.
        """
        if self.headers_sent:
            return
        if worker_stopping():
            self.force_close()
        # gunicorn's send_headers, less its per-header Python (the fields are joined by
        # map() in C), and the head is kept instead of sent.
        start = "".join(self.default_headers())  # each line with its CRLF
        fields = "\r\n".join(map(": ".join, self.headers))
        head = f"{start}{fields}\r\n\r\n" if fields else f"{start}\r\n"
        self._pending_head = head.encode("latin-1")
        self.headers_sent = True

    def flush_head(self) -> None:
        """Send a held head now (before bytes written to the socket some other way)."""
        head, self._pending_head = self._pending_head, None
        if head:
            self.sock.sendall(head)

    def write(self, arg: bytes) -> None:
        """gunicorn's write; an empty write also sends a held head."""
        super().write(arg)
        if not arg:
            # An empty write is how a WSGI app pushes the head out early (a stream
            # about to go quiet): send it now, as gunicorn would.
            self.flush_head()

    def _emit_body(self, data: bytes) -> None:
        head = self._pending_head
        if head is None or len(data) > COALESCE_LIMIT:
            self.flush_head()
            super()._emit_body(data)
            return
        self._pending_head = None
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data) if data else b""
        data = head + data
        # One send call: gevent's sendall would first ask the kernel for SO_SNDBUF.
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])

    def sendfile(self, respiter: Any) -> bool:
        """gunicorn's sendfile, with a held head sent first when it will use the socket."""
        # gunicorn's sendfile writes to the socket itself once the head is out: send the
        # head first, but only when it will get that far (else write() sends it).
        if (
            not self.cfg.is_ssl
            and self.can_sendfile()
            and gunicorn_util.has_fileno(respiter.filelike)
        ):
            self.send_headers()
            self.flush_head()
        result: bool = super().sendfile(respiter)
        return result

    def close(self) -> None:
        """End the response; a head still held (no body) goes out now."""
        if not self.headers_sent:
            self.send_headers()
        self.flush_head()
        super().close()


# -- The Date header (gunicorn/util.py: http_date) ------------------------------------------
def http_date(timestamp: float | None = None) -> str:
    """gunicorn's ``Date`` value, formatted once a second rather than once a response,
    as nginx does: the text only changes once a second."""
    global _date_cache
    if timestamp is not None:
        return str(_format_date(timestamp))
    now = time.time()
    second, text = _date_cache
    if int(now) != second:
        text = str(_format_date(now))
        _date_cache = (int(now), text)
    return text


# -- Parse refusals (gunicorn/workers/base.py: Worker.handle_error) -------------------------
def _one_line(text: str) -> str:
    """``text`` as one short printable line: whitespace runs become one space, control
    characters are escaped, and anything past ``REFUSAL_TEXT_LIMIT`` is cut."""
    line = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in " ".join(text.split())
    )
    if len(line) > REFUSAL_TEXT_LIMIT:
        line = line[: REFUSAL_TEXT_LIMIT - 3] + "..."
    return line


_STATUS_OF_PHRASE = {status.phrase: status.value for status in HTTPStatus}


def _refusal_kind(status: int) -> str:
    """The ``X-Proxy-Error`` kind of a gunicorn refusal, named as the proxy's own are."""
    if status == 403:
        return "forbidden"
    if 400 <= status < 500:
        return "bad-request"
    if status == 501:
        return "not-implemented"
    return "internal-error"


def refusal_bytes(status: int, reason: str, message: str) -> bytes:
    """The whole response for a request gunicorn refused: the proxy's error format.

    The status and reason phrase are gunicorn's, unless the phrase belongs to another
    status (gunicorn sends "501 Bad Request"); the body is gunicorn's message made one
    line, or the phrase when it gave none (a 500).
    """
    phrase = _one_line(reason)
    if not phrase or _STATUS_OF_PHRASE.get(phrase, status) != status:
        phrase = HTTPStatus(status).phrase if status in _STATUS_OF_PHRASE.values() else "Error"
    body = (_one_line(message) or phrase) + "\n"
    data = body.encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"X-Proxy-Error: {_refusal_kind(status)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("latin-1", "replace") + data


def write_refusal(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Stands in for ``gunicorn.util.write_error``, which only ``Worker.handle_error``
    calls: same arguments and socket write, the proxy's one-line text instead of HTML."""
    gunicorn_util.write_nonblock(sock, refusal_bytes(int(status_int), reason, mesg))
