r"""File names as keys: text that every database, JSON document and terminal accepts, reversibly.

A POSIX file name is bytes. Python hands back a name that is not valid UTF-8 with each undecodable
byte as a lone surrogate (``os.fsdecode``'s ``surrogateescape``), and SQLite, PostgreSQL, JSON in
PostgreSQL and a UTF-8 terminal all refuse those: one such file used to abort a whole ``digits
ingest`` or ``digits enqueue``. So a name (a path relative to what was given, or a zip member name)
becomes a key by this rule, and :func:`name_of` maps a key back:

- each byte that is not part of valid UTF-8 is written ``\xHH`` (a backslash, ``x``, two
  lower-case hex digits): the name ``caf<0xe9>.png`` (Latin-1) is the key ``caf\xe9.png``;
- a backslash is written twice where it would otherwise read as the start of an escape: before
  another backslash, before an undecodable byte, or before ``x`` and two hex digits (the name
  ``a\x41.png`` is the key ``a\\x41.png``);
- every other character is kept as it is, so a valid UTF-8 name is its own key unless it holds
  one of those backslash sequences (``C:\scans\a.png`` stays as it is).

``os.fsencode(name_of(key))`` gives back the name's exact bytes, so a person holding a key can find
its file; two different names never share a key.
"""

from __future__ import annotations

import os
import re

# A lone surrogate from surrogateescape (U+DC80..U+DCFF stands for byte 0x80..0xFF); any other
# surrogate (which no file system decoding produces) is written by its UTF-8 bytes the same way.
_SURROGATE = "\ud800-\udfff"
_TO_KEY = re.compile(rf"\\(?=\\|x[0-9a-fA-F]{{2}}|[{_SURROGATE}])|[{_SURROGATE}]")
_FROM_KEY = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def key_for(name: str | os.PathLike[str]) -> str:
    r"""The key of a name as Python decoded it from the file system (see the module's rule)."""
    return _TO_KEY.sub(_escape, os.fspath(name))


def _escape(match: re.Match[str]) -> str:
    text = match.group()
    if text == "\\":
        return "\\\\"
    raw = text.encode(
        "utf-8", "surrogateescape" if "\udc80" <= text <= "\udcff" else "surrogatepass"
    )
    return "".join(f"\\x{byte:02x}" for byte in raw)


def name_of(key: str) -> str:
    r"""The name a key stands for, as ``os.fsdecode`` would give it: the inverse of :func:`key_for`.

    ``\\`` is a backslash, ``\xHH`` the byte HH, anything else itself (a backslash before anything
    else included).
    """
    out = bytearray()
    position = 0
    for match in _FROM_KEY.finditer(key):
        out += key[position : match.start()].encode("utf-8", "surrogatepass")
        escape = match.group(1)
        out += b"\\" if escape == "\\" else bytes([int(escape[1:], 16)])
        position = match.end()
    out += key[position:].encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "surrogateescape")


def shown(path: str | os.PathLike[str]) -> str:
    """A path as printed and stored (messages, summaries, a job's source): by the same rule."""
    return key_for(path)
