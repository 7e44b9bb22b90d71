"""kombu's Redis transport, made to survive entries in a queue that are not kombu messages.

kombu pops an entry off a queue's list and parses it in the worker's event loop; an entry that is
not JSON, or JSON without a message's shape, raised there and Celery stopped the whole worker as
an "Unrecoverable error" (tests/test_bad_input.py). Anyone who can write to Redis could stop every
worker with one junk entry each. Here such an entry is logged and dropped: it was never a message
(nothing could have acknowledged or redelivered it), so dropping it loses nothing a submitter sent.
Messages that are well-formed envelopes go on to Celery, which refuses bad bodies itself (wrong
content type, pickle, unknown task) without stopping.

A Redis that refuses writes (maxmemory reached under ``noeviction``, a read-only replica) is the
other way the worker used to stop, and it lost a message doing so: see ``Transport._deliver``.

An entry larger than any chunk message a submitter can make (:func:`messages.entry_limit` of this
worker's ``DIGITS_MAX_CHUNK_BYTES``) is dropped by its length, as read off the socket, before it is
decoded: decoding a 400 MB entry (to text, JSON, base64, the task's arguments, the copy handed to
a child) grew the worker's parent from 243 MB to 2.7 GB and kept 1.4 GB of it. Nothing can be
written for such an entry (its job and keys are inside what is not decoded); a submitter's own
chunks never come near the limit, and those between the crop limit and it still reach the task,
which marks their items error.
"""

from __future__ import annotations

import binascii
import json
import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.json import dumps
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from digits.worker.config import Settings
from digits.worker.queue.messages import entry_limit

log = logging.getLogger("digits.worker")
MAX_REFUSAL_PAUSE = 8.0  # seconds between takes while Redis keeps refusing writes


class MalformedEntry(ValueError):
    """A queue entry that cannot be a kombu message; the reason is the text."""


class OversizedEntry(MalformedEntry):
    """A queue entry longer than any chunk message: refused before it is decoded."""


def check_envelope(payload: object) -> None:
    """Raise :class:`MalformedEntry` unless ``payload`` has what kombu's Message reads from it."""
    if not isinstance(payload, dict):
        raise MalformedEntry(f"a {type(payload).__name__}, not a message object")
    properties = payload.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        raise MalformedEntry("no properties with a delivery tag")
    if payload.get("headers") is not None and not isinstance(payload["headers"], dict):
        raise MalformedEntry("headers is not an object")
    # kombu's publish always writes where a message was sent (delivery_info's exchange and
    # routing key), and its record of a taken message reads both: an entry without them raised
    # KeyError in the event loop and stopped the worker.
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        raise MalformedEntry("delivery_info is missing or not an object")
    if not isinstance(info.get("exchange"), str) or not isinstance(info.get("routing_key"), str):
        raise MalformedEntry("delivery_info has no exchange and routing key")
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


class QoS(redis.QoS):
    """kombu's record of taken messages, kept working while Redis refuses writes.

    Under ``maxmemory`` with ``noeviction`` Redis refuses every command inside MULTI, even the
    ZREM and HDEL that forget an acknowledged message (they free memory), and kombu sends them as
    a transaction: the worker stopped on its next acknowledgement. Sent one by one they are
    allowed. A restore sweep refused (its lock is a SET) is skipped; the next one runs.
    """

    def ack(self, delivery_tag):
        try:
            super().ack(delivery_tag)
        except ResponseError as exc:
            self._forget_untransacted(delivery_tag, exc)

    def reject(self, delivery_tag, requeue=False):
        try:
            super().reject(delivery_tag, requeue=requeue)
        except ResponseError as exc:
            if requeue:  # putting it back is a write Redis refuses: leave it to the restore
                log.warning("broker refused to requeue a rejected message (%s)", str(exc)[:200])
                return
            self._forget_untransacted(delivery_tag, exc)

    def _forget_untransacted(self, delivery_tag, exc: Exception) -> None:
        log.warning("broker refused a transaction (%s); acknowledging without one", str(exc)[:200])
        with self.channel.conn_or_acquire() as client:
            self._remove_from_indices(delivery_tag, client.pipeline(transaction=False)).execute()
        virtual.QoS.ack(self, delivery_tag)  # the in-memory bookkeeping kombu's ack ends with

    def restore_visible(self, *args, **kwargs):
        try:
            return super().restore_visible(*args, **kwargs)
        except ResponseError as exc:
            log.warning("broker refused a restore sweep (%s); skipped", str(exc)[:200])
            return None


class Channel(redis.Channel):
    QoS = QoS

    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except (json.JSONDecodeError, UnicodeDecodeError, MalformedEntry) as exc:
            log.error("dropped a queue entry that is not a message: %s", str(exc)[:300])
            return True  # an entry was consumed; keep polling

    def _connparams(self, asynchronous=False):
        """kombu's connection parameters, or a connection error once the connection is closed.

        A Redis crash makes Celery close the connection (its kombu client becomes None) and open
        a new one; the old channel still runs a restore sweep as it closes, and each chunk that
        finishes afterwards acknowledges through it. kombu then rebuilt a pool from the closed
        connection and raised AttributeError, which no caller expects: the worker stopped
        (kombu#970). A connection error is what every one of those callers handles: the close
        goes on, an acknowledgement is logged as not made, and the message stays in Redis's
        unacked hash for the sweeper (its items are final by then) or the visibility timeout.
        """
        if getattr(self.connection, "client", None) is None:
            raise RedisConnectionError("this channel's broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)

    def _create_client(self, asynchronous=False):
        """kombu's client, but a BRPOP reply is measured before kombu decodes it (the consuming
        client is the asynchronous one; the other publishes and never reads a queue entry)."""
        client = super()._create_client(asynchronous=asynchronous)
        if asynchronous:
            client.parse_response = _bounded(client.parse_response, self.max_entry_bytes)
        return client

    @cached_property
    def max_entry_bytes(self) -> int:
        return entry_limit(Settings.from_env().max_chunk_bytes)


def _bounded(read: Callable[..., Any], limit: int) -> Callable[..., Any]:
    """``read`` (redis-py's ``parse_response``), refusing a BRPOP entry over ``limit`` bytes."""

    def parse_response(connection, command_name, **options):
        reply = read(connection, command_name, **options)
        if command_name == "BRPOP" and reply and len(reply[1]) > limit:
            queue, size = reply[0], len(reply[1])
            del reply  # the entry's only reference: freed before anything else runs
            name = queue.decode("utf-8", "replace") if isinstance(queue, bytes) else str(queue)
            raise OversizedEntry(
                f"an entry of {size} bytes in {name[:100]!r}, over the {limit} bytes a chunk "
                "message can take (DIGITS_MAX_CHUNK_BYTES); not decoded"
            )
        return reply

    return parse_response


class Transport(redis.Transport):
    """kombu's Redis transport, plus: junk entries are dropped (above), and a message Redis would
    not let us record as taken is given back to its queue instead of being lost (below)."""

    Channel = Channel
    _refusals = 0  # refusals in a row: how long to pause before taking the next message

    def _deliver(self, message, queue):
        check_envelope(message)
        try:
            delivered = super()._deliver(message, queue)
        except ResponseError as exc:
            # kombu's BRPOP has taken the message off its list and the write that records it in
            # ``unacked`` was refused (OOM under noeviction, READONLY on a replica after a
            # failover, the EXECABORT around either): the message is now only in this process.
            # Celery would stop the worker as "unrecoverable" and the chunk would be gone.
            self._give_back(message, queue, exc)
            return None
        self._refusals = 0
        return delivered

    def _give_back(self, message: dict, queue: str, exc: Exception) -> None:
        """Put ``message`` back where BRPOP takes next, retrying until Redis takes it, then pause.

        The pause grows with each refusal in a row (0.5 s to 8 s): a full Redis is not hammered
        with pops that it will refuse to record. Holding the message here while Redis refuses
        even the push is the only place it still exists, so the loop does not give up.
        """
        channel = self.channels[0]
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        payload = dumps(message)
        self._refusals += 1
        pause = min(0.5 * 2 ** (self._refusals - 1), MAX_REFUSAL_PAUSE)
        attempt = 0
        while True:
            try:
                with channel.conn_or_acquire() as client:
                    client.rpush(key, payload)
                break
            except (ResponseError, RedisConnectionError, OSError) as push_error:
                attempt += 1
                log.error(
                    "broker refused to take back a message of queue %s (%s); holding it, "
                    "try %d again in %.0f s",
                    queue,
                    str(push_error)[:200],
                    attempt,
                    MAX_REFUSAL_PAUSE,
                )
                time.sleep(MAX_REFUSAL_PAUSE)
        log.warning(
            "broker refused to record a message as taken (%s); gave it back to queue %s, "
            "pausing %.1f s",
            str(exc)[:200],
            queue,
            pause,
        )
        time.sleep(pause)
