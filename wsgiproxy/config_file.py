"""PROXY_CONFIG: a TOML file of top-level ``KEY = value`` pairs, turned into the text the
environment would hold, so that every value goes through the environment's own parsers.

The file only supplies values: a variable set in the environment wins (``layer``), and
the caller (``settings``) parses the merged text and reports bad values. What is wrong
with the file itself (unreadable, not TOML, unknown keys, tables, a TOML type the
variable cannot take) is reported here, one line each, starting ``PROXY_CONFIG='path':``
so the operator knows which file to open. Standard library only: the gunicorn master
imports this before gevent has patched anything.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = ["ENV", "Kind", "Layered", "layer"]

#: The environment variable that names the file.
ENV = "PROXY_CONFIG"


class Kind(Enum):
    """Which TOML types a variable's value may take besides a string.

    A string is always allowed (it is what the environment holds). The others are
    converted to the text the variable's parser takes: a boolean to ``1``/``0``.
    """

    TEXT = "a string"
    INT = "an integer or a string"
    NUMBER = "a number or a string"
    FLAG = "true, false or a string"


@dataclass(frozen=True)
class Layered:
    """The environment with PROXY_CONFIG's values beneath it.

    ``values``: text per variable, the environment's where it sets one, else the file's.
    ``from_file``: the variables whose text came from the file, so a bad one is reported
    under ``label`` (``PROXY_CONFIG='path'``). ``problems``: complete lines about the file.
    """

    values: dict[str, str]
    from_file: frozenset[str]
    label: str
    problems: tuple[str, ...]


def layer(
    environ: Mapping[str, str],
    kinds: Mapping[str, Kind],
    keep_blank: Collection[str] = (),
) -> Layered:
    """Merge ``environ`` over the file PROXY_CONFIG names, for the variables in ``kinds``.

    A blank environment value counts as unset (the file's value applies), except for the
    names in ``keep_blank``, where empty means something (PROXY_ACCESS_LOG='' turns the
    access log off). Never raises for a bad file: every problem is a line in
    ``problems``, and a key that could not be used is left out of ``values``.
    """
    values = {name: environ[name] for name in kinds if name in environ}
    path = environ.get(ENV, "").strip()
    if not path:
        return Layered(values, frozenset(), "", ())
    label = f"{ENV}={environ.get(ENV, '')!r}"
    document, problems = _read(path, label)
    from_file: set[str] = set()
    for key, value in document.items():
        if isinstance(value, dict):
            problems.append(f"{label}: [{key}]: a table; settings are top-level KEY = value pairs")
            continue
        if key not in kinds:
            problems.append(f"{label}: {key}: {_unknown(key, kinds)}")
            continue
        text = _text(value, kinds[key])
        if text is None:
            problems.append(f"{label}: {key} = {_show(value)}: {_wrong_type(value, kinds[key])}")
            continue
        if key in environ and (environ[key].strip() or key in keep_blank):
            continue  # the environment wins
        values[key] = text
        from_file.add(key)
    return Layered(values, frozenset(from_file), label, tuple(problems))


def _read(path: str, label: str) -> tuple[dict[str, object], list[str]]:
    """The parsed document, or an empty one and the one line saying why not."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle), []
    except OSError as exc:
        return {}, [f"{label}: cannot be read: {exc.strerror or exc}"]
    except UnicodeDecodeError:
        return {}, [f"{label}: not valid TOML: the file is not UTF-8 text"]
    except tomllib.TOMLDecodeError as exc:
        # One line whatever the message holds: the collected lines are printed as they are.
        return {}, [f"{label}: not valid TOML: {' '.join(str(exc).split())}"]


def _text(value: object, kind: Kind) -> str | None:
    """The text the environment would hold for ``value``, or None if ``kind`` refuses it.

    bool is tested first: in Python it is an int, and ``PROXY_WORKERS = true`` must not
    quietly become 1 worker.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return ("1" if value else "0") if kind is Kind.FLAG else None
    if isinstance(value, int):
        return str(value) if kind in (Kind.INT, Kind.NUMBER) else None
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same float; nan and inf reach
        # the parser, which refuses them with its own message.
        return repr(value) if kind is Kind.NUMBER else None
    return None


def _unknown(key: str, kinds: Mapping[str, Kind]) -> str:
    if key == ENV:
        return "names this file; it can only be set in the environment"
    close = difflib.get_close_matches(key.upper(), list(kinds), n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"not a setting{hint}; the keys are the environment variables of the README"


def _wrong_type(value: object, kind: Kind) -> str:
    if isinstance(value, list):
        return f"an array; must be {kind.value} (write a list as the environment does: 'a,b')"
    return f"must be {kind.value}, not {_type_name(value)}"


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    return "a date or time"


def _show(value: object) -> str:
    """``value`` as TOML writes it, kept short: the line quotes what the operator wrote."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[...]"
    return str(value)
