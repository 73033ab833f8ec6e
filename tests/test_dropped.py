"""The check an idle pooled connection passes before it carries another request."""

from __future__ import annotations

import socket
import ssl
import threading

import trustme

from wsgiproxy.client.transport import is_dropped


def test_a_quiet_open_socket_is_kept_and_any_sign_of_the_peer_drops_it() -> None:
    """A socket that is readable while idle must never carry a request: an EOF means
    the upstream closed it (the request would be lost), unsolicited bytes would be
    read as the next request's response."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5.0)  # as a pooled socket has: the check must not wait on it
        assert not is_dropped(ours)
        theirs.sendall(b"HTTP/1.1 200 OK\r\n")
        assert is_dropped(ours)
        assert is_dropped(ours), "checking must not consume the bytes"
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        assert is_dropped(ours)
    assert is_dropped(ours), "a socket closed on our side"


def test_a_tls_socket_is_judged_by_its_raw_bytes(ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        raw_client = socket.create_connection(listener.getsockname(), timeout=5)
        raw_server, _ = listener.accept()
        raw_server.settimeout(5)
        client = client_ctx.wrap_socket(
            raw_client, server_hostname="localhost", do_handshake_on_connect=False
        )
        server = server_ctx.wrap_socket(raw_server, server_side=True, do_handshake_on_connect=False)
        with client, server:
            handshake = threading.Thread(target=server.do_handshake, daemon=True)
            handshake.start()
            client.do_handshake()
            handshake.join(5)
            # One exchange, as a pooled connection has had: reading it also takes in
            # the TLS 1.3 session tickets sent after the handshake (raw bytes too).
            server.sendall(b"response")
            assert client.recv(100) == b"response"
            assert not is_dropped(client)
            server.close()  # close_notify and FIN
            assert is_dropped(client)
