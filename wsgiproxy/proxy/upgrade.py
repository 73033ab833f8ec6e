"""WebSocket upgrades: the handshake goes upstream as a request, a 101 makes it a relay.

A request ``headers.wants_websocket`` accepts is routed, checked and sent like any GET
(reverse through its group and the failover rules, forward through the forward policy),
with ``Connection: Upgrade`` and ``Upgrade: websocket`` kept. When the upstream answers
101, the exchange's connection leaves the pool and becomes one end of a relay
(``Tunnels.splice``, the same one CONNECT uses), the client's socket the other; any other
answer is an ordinary response.

Why the connection leaves the pool at the 101 rather than when the relay ends: a
WebSocket may stay open for hours, and ``HTTP_MAX_CONNECTIONS`` bounds the connections
plain requests share. Counted there, a hundred quiet sockets would starve every request of
the worker (503 ``pool-timeout``). Like a CONNECT tunnel, an upgraded connection is bounded
by the worker's clients instead (``PROXY_WORKER_CONNECTIONS``, ``PROXY_THREADS``): under
gevent it holds a greenlet, under gthread a thread, for as long as it is open.

The relay needs the client's socket, which only gunicorn hands over: under ``flask run``
an upgrade request gets 501, as CONNECT does there, rather than being quietly sent as a
plain request whose answer no WebSocket client could use.
"""

from __future__ import annotations

import socket
from typing import Any

from ..addresses import format_origin
from ..buffers import BLOCK
from ..client.exchange import Exchange, UpstreamClient
from ..errors import SENT, NotSupported, UpstreamProtocolError
from ..server.gunicorn import client_socket
from .tunnel import tls_pending

#: What the relay status is called in gunicorn's access log and in health figures.
KIND = "websocket"


def require_client_socket(environ: dict[str, Any]) -> None:
    """Refuse an upgrade before it goes upstream when the server cannot hand over the
    client's socket (the ``flask run`` dev server): NotSupported (501)."""
    if client_socket(environ) is None:
        raise NotSupported(
            "WebSocket needs a server that hands over the client socket: run under "
            "gunicorn (gevent or gthread workers), not the dev server"
        )


def detach(client: UpstreamClient, exchange: Exchange) -> tuple[socket.socket, bytes]:
    """Take an upgraded exchange's socket out of the pool; return it and the bytes the
    upstream sent behind its 101 head that the response parser already buffered.

    The pool's slot is freed (counted as a closed connection) but the socket stays open:
    it is the relay's now, and the relay closes it. Raises UpstreamProtocolError (502),
    leaving the exchange to the caller to finish, when the 101 came with
    ``Connection: close`` (the parser has then let go of the socket).
    """
    conn, response = exchange.conn, exchange.response
    sock: socket.socket | None = conn.sock
    if sock is None:
        raise UpstreamProtocolError(
            f"upstream {format_origin(exchange.origin)} answered 101 and closed the connection",
            stage=SENT,
        )
    early = _read_ahead(response.fp, sock)
    # The pool closes the connection object it discards: without this the socket would
    # go with it, under the relay's feet.
    conn.sock = None
    response.close()  # lets go of the parser's file object; the socket stays open
    client.pool.discard(exchange.lease)
    return sock, early


def _read_ahead(fp: Any, sock: socket.socket) -> bytes:
    """What the parser read past the head (a frame sent right behind the 101), without
    waiting for more: the socket is non-blocking meanwhile, so an empty buffer reads
    nothing. A TLS socket may hold more, decrypted but not yet read: that too."""
    early = b""
    if fp is not None:
        sock.settimeout(0.0)
        try:
            # peek returns what is buffered without reading the socket; only when the
            # buffer is empty does it read once, which here cannot wait.
            early = fp.read(len(fp.peek(BLOCK)))
        except OSError:  # nothing to read now (EAGAIN, TLS want-read)
            early = b""
    while tls_pending(sock):
        early += sock.recv(BLOCK)
    return bytes(early or b"")
