"""Reloading the proxy's configuration in a test: the PROXY_CONFIG file written as an
operator would, and which upstream a fresh request reaches."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.client import request
from tests.support.proxy import Proxy


def write_config(path: Path, **values: str | int | bool) -> None:
    """A PROXY_CONFIG file of top-level KEY = value pairs (written whole, then renamed, as
    an operator's editor or config management would)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    write_text(path, "\n".join(lines) + "\n")


def write_text(path: Path, text: str) -> None:
    draft = path.with_suffix(".draft")
    draft.write_text(text)
    draft.replace(path)


def served_by(proxy: Proxy) -> str:
    """Which upstream answered a fresh request: the base path its target started with."""
    reply = request(proxy.port, "GET", "/x")
    assert reply.status == 200, reply
    target: str = json.loads(reply.body)["target"]
    return target.removesuffix("/x")


def reaches(proxy: Proxy, base: str) -> bool:
    """True once a fresh request is served by the upstream at ``base``; a connection the
    reload reset counts as not yet (the trickle test is the one that counts those)."""
    try:
        return served_by(proxy) == base
    except OSError:
        return False
