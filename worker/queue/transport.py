"""kombu's Redis transport, made to survive entries in a queue that are not kombu messages.

kombu pops an entry off a queue's list and parses it in the worker's event loop; an entry that is
not JSON, or JSON without a message's shape, raised there and Celery stopped the whole worker as
an "Unrecoverable error" (tests/test_bad_input.py). Anyone who can write to Redis could stop every
worker with one junk entry each. Here such an entry is logged and dropped: it was never a message
(nothing could have acknowledged or redelivered it), so dropping it loses nothing a submitter sent.
Messages that are well-formed envelopes go on to Celery, which refuses bad bodies itself (wrong
content type, pickle, unknown task) without stopping.
"""

from __future__ import annotations

import binascii
import json
import logging

from kombu.transport import redis

log = logging.getLogger("digits.worker")


class MalformedEntry(ValueError):
    """A queue entry that cannot be a kombu message; the reason is the text."""


def check_envelope(payload: object) -> None:
    """Raise :class:`MalformedEntry` unless ``payload`` has what kombu's Message reads from it."""
    if not isinstance(payload, dict):
        raise MalformedEntry(f"a {type(payload).__name__}, not a message object")
    properties = payload.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        raise MalformedEntry("no properties with a delivery tag")
    if payload.get("headers") is not None and not isinstance(payload["headers"], dict):
        raise MalformedEntry("headers is not an object")
    if properties.get("delivery_info") is not None and not isinstance(
        properties["delivery_info"], dict
    ):
        raise MalformedEntry("delivery_info is not an object")
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        raise MalformedEntry("body is not a string")
    encoding = properties.get("body_encoding")
    if encoding not in (None, "base64"):
        raise MalformedEntry(f"unknown body encoding {str(encoding)[:40]!r}")
    if encoding == "base64" and body:
        try:
            binascii.a2b_base64(body.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise MalformedEntry(f"body is not base64: {exc}") from None


class Channel(redis.Channel):
    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except (json.JSONDecodeError, UnicodeDecodeError, MalformedEntry) as exc:
            log.error("dropped a queue entry that is not a message: %s", str(exc)[:300])
            return True  # an entry was consumed; keep polling


class Transport(redis.Transport):
    Channel = Channel

    def _deliver(self, message, queue):
        check_envelope(message)
        return super()._deliver(message, queue)
