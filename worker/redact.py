"""Passwords never reach a log line: a filter on every handler the worker logs through.

Our own call sites already mask the URLs they log (:func:`worker.config.mask_url`); this is the net
under them, for the lines we do not write: a library's exception that quotes a connection string, a
traceback, a URL in a log call added later. It masks the password of any ``scheme://user:pw@``
URL, any libpq-style ``password=...``, and, literally, the passwords found in the ``DIGITS_*``
URLs of the environment (the only place secrets come from) and the message signing key.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

MASK = "***"
URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/?#@\s]*:)[^@/?#\s]+@", re.IGNORECASE)
KEYWORD_PASSWORD = re.compile(r"(\bpass(?:word)?\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;,)]+)", re.I)
# A secret shorter than this would mask innocent words; a real password is longer.
MIN_SECRET = 4
# Variables that are secrets as a whole, not URLs holding one (queue.signing's key).
SECRET_VARIABLES = ("DIGITS_MESSAGE_KEY",)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords, ``password=`` values and the given secrets replaced."""
    text = URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    text = KEYWORD_PASSWORD.sub(rf"\g<1>{MASK}", text)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def env_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """The passwords inside ``DIGITS_*`` URLs, as written and percent-decoded, and the whole
    value of each secret variable, longest first."""
    env = os.environ if env is None else env
    found: set[str] = set()
    for name, value in env.items():
        if name in SECRET_VARIABLES and value:
            found.add(value)
            continue
        if not name.startswith("DIGITS_") or "://" not in value:
            continue
        try:
            password = urlsplit(value).password
        except ValueError:
            continue
        if password:
            found.update({password, unquote(password)})
    return sorted((s for s in found if len(s) >= MIN_SECRET), key=len, reverse=True)


class MaskSecrets(logging.Filter):
    """Rewrites each record's message and traceback text before any handler formats it."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's problem, not ours
            return True
        masked = mask(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = mask(text, self.secrets)
        if record.stack_info:
            record.stack_info = mask(record.stack_info, self.secrets)
        return True


def install(logger: logging.Logger | None = None, env: Mapping[str, str] | None = None) -> None:
    """Put the filter on every handler of ``logger`` (the root logger by default), once each.

    On handlers, not on the logger: a logger's own filters skip records propagated from its
    children, which is where every library's records come from.
    """
    logger = logger or logging.getLogger()
    secrets = env_secrets(env)
    for handler in logger.handlers:
        if not any(isinstance(f, MaskSecrets) for f in handler.filters):
            handler.addFilter(MaskSecrets(secrets))
