"""The client's request body on its way upstream: streamed once, its start kept.

A request that fails on a reused connection before any response byte may be sent again
(CONTRACT: an idempotent method, a body of at most 64 KiB); to replay it the proxy must
still have the body, without ever buffering a large one. ``RequestBody`` keeps the first
block and reads the rest from the client as the upstream takes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..buffers import BLOCK
from ..errors import BodyTooLarge, ClientBodyError


class RequestBody:
    """The client's request body, streamed once, with the start kept for one replay.

    Iterating yields the body in blocks as the client sends it, never holding more than a
    block plus the replay buffer. The first ``BLOCK`` bytes are kept, so iterating
    again (a replay on a new connection) yields them and then carries on reading from the
    client. Errors reading the client become ``ClientBodyError`` (400) and a body over
    ``max_body`` becomes ``BodyTooLarge`` (413): both abort the upstream exchange.
    """

    def __init__(self, stream: Any, length: int | None, max_body: int) -> None:
        self._stream = stream
        #: Declared Content-Length, or None for a chunked body read to its end.
        self.length = length
        self._max_body = max_body
        self._kept: list[bytes] | None = []
        self._read = 0
        self._eof = length == 0

    @property
    def chunked(self) -> bool:
        """True when the body is relayed with chunked framing (no Content-Length)."""
        return self.length is None

    @property
    def replayable(self) -> bool:
        """True while everything read so far is kept (at most ``BLOCK`` bytes)."""
        return self._kept is not None

    def prime(self) -> None:
        """Read the first block before any upstream contact.

        A body that is broken or too large from its first bytes (a bad first chunk, a
        short small body) is then refused with nothing sent upstream, not even the head;
        a small body arrives whole and is sent in one go. Raises ClientBodyError (400) or
        BodyTooLarge (413).
        """
        if not self._read and not self._eof:
            self._read_block()

    def __iter__(self) -> Iterator[bytes]:
        if self._kept:
            yield from list(self._kept)
        while not self._eof:
            data = self._read_block()
            if data:
                yield data

    def _read_block(self) -> bytes:
        """The next block from the client (b"" at the end), counted, checked and kept."""
        want = BLOCK if self.length is None else min(BLOCK, self.length - self._read)
        try:
            data: bytes = self._stream.read(want)
        except Exception as exc:  # gunicorn raises its own parse errors here
            raise ClientBodyError(
                f"request body broke off after {self._read} bytes: {exc or type(exc).__name__}"
            ) from exc
        if not data:
            if self.length is not None:
                raise ClientBodyError(
                    f"client sent {self._read} of {self.length} body bytes, then stopped"
                )
            self._eof = True
            return b""
        self._read += len(data)
        if self._max_body and self._read > self._max_body:
            raise BodyTooLarge(f"request body over {self._max_body} bytes (PROXY_MAX_BODY)")
        if self.length is not None and self._read >= self.length:
            self._eof = True
        if self._kept is not None:
            if self._read <= BLOCK:
                self._kept.append(data)
            else:
                self._kept = None
        return data
