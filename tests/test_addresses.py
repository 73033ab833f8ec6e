"""Address helpers: which upstream hosts are dialled without the resolver, and the
address a client reached the proxy on (for refusing a forward loop to ourselves)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from wsgiproxy.client.transport import ip_family
from wsgiproxy.proxy.policy import own_address


@pytest.mark.parametrize(
    "host, family",
    [
        ("127.0.0.1", socket.AF_INET),
        ("10.0.0.5", socket.AF_INET),
        ("::1", socket.AF_INET6),
        ("2001:db8::1", socket.AF_INET6),
        # A scope names an interface: only getaddrinfo turns it into the index connect
        # needs; dialled as a plain pair it fails with EINVAL.
        ("fe80::1%eth0", None),
        ("localhost", None),
        ("example.com", None),
        ("127.0.0.1.nip.io", None),
    ],
)
def test_only_plain_ip_addresses_are_dialled_directly(host: str, family: int | None) -> None:
    assert ip_family(host) == family


def test_own_address_of_a_tcp_listener_and_of_a_unix_socket() -> None:
    """On a unix-socket bind getsockname() is a path: that must not turn a forward
    request into a 500."""
    tcp = SimpleNamespace(getsockname=lambda: ("127.0.0.1", 8080))
    assert own_address({"gunicorn.socket": tcp}) == ("127.0.0.1", 8080)
    unix = SimpleNamespace(getsockname=lambda: "/run/wsgiproxy.sock")
    environ = {"gunicorn.socket": unix, "SERVER_NAME": "localhost", "SERVER_PORT": "8080"}
    assert own_address(environ) == ("localhost", 8080)
