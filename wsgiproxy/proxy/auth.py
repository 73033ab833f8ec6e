"""Proxy authentication: ``Proxy-Authorization: Basic`` checked against an htpasswd file.

``PROXY_AUTH_FILE`` holds ``user:hash`` lines with bcrypt hashes, as ``htpasswd -B``
writes them (``$2y$``, ``$2b$`` or ``$2a$``). When it is set, forward-proxy requests and
``CONNECT`` need valid credentials; reverse-proxy traffic is unaffected. The header is
hop-by-hop and never forwarded upstream.

bcrypt is slow on purpose (tens to hundreds of milliseconds per check), far too slow to
run on every proxied request, so a successful check is remembered (keyed by a SHA-256 of
the credentials, never the password itself) for the life of the worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from pathlib import Path

import bcrypt

from ..errors import ProxyAuthRequired

_CACHE_LIMIT = 10_000


def load_htpasswd(path: str) -> dict[str, bytes]:
    """``user -> bcrypt hash`` from an htpasswd file (its format was checked by config)."""
    users: dict[str, bytes] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            user, _, hashed = line.partition(":")
            users[user] = hashed.encode("ascii")
    return users


class ProxyAuth:
    """Checks ``Proxy-Authorization`` headers against the loaded users."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._good: set[bytes] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str) -> ProxyAuth:
        return cls(load_htpasswd(path))

    def check(self, header: str | None) -> str:
        """The authenticated user name. Raises ProxyAuthRequired (407) otherwise."""
        if not header:
            raise ProxyAuthRequired("proxy authentication required (Proxy-Authorization: Basic)")
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            raise ProxyAuthRequired(f"proxy authentication scheme {scheme!r} is not Basic")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ProxyAuthRequired("malformed Basic proxy credentials") from None
        user_bytes, sep, password = decoded.partition(b":")
        user = user_bytes.decode("utf-8", "replace")
        key = hashlib.sha256(decoded).digest()
        if key in self._good:
            return user
        hashed = self._users.get(user) if sep else None
        if hashed is None or not bcrypt.checkpw(password, hashed):
            raise ProxyAuthRequired("wrong proxy user or password")
        with self._lock:
            if len(self._good) >= _CACHE_LIMIT:
                self._good.clear()
            self._good.add(key)
        return user
