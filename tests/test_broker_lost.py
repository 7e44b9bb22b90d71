"""A broker connection that dies under a channel neither stops the worker nor loses its messages.

When Redis crashes, Celery detaches the transport from its dead connection and closes the
connection's channel: kombu's close puts the channel's taken messages back, and each chunk that
finishes afterwards acknowledges through the same channel. Both rebuilt a Redis pool from the
detached connection and raised AttributeError, which Celery does not expect there: the worker
exited with status 1 in tests/test_faults.py's Redis crash (once in a few runs, when a chunk
finished at that moment). Here the same state is made on purpose, on a real Redis.
"""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Exchange, Queue

from digits.worker.queue.transport import Transport
from tests.services import redis_process


@pytest.fixture
def broker_url(tmp_path):
    """A redis-server of this test's own: the session's is shared with running workers."""
    with redis_process(tmp_path / "redis") as server:
        yield server.url


def test_a_message_taken_on_a_connection_that_dies_waits_in_redis_and_stops_nothing(broker_url):
    store = redis.Redis.from_url(broker_url)
    connection = Connection(broker_url, transport=Transport)
    channel = connection.default_channel
    queue = Queue("chunks", Exchange("chunks"), "chunks")(channel)
    queue.declare()
    connection.Producer(channel).publish({"chunk": 1}, exchange="chunks", routing_key="chunks")
    message = queue.get(no_ack=False)
    assert message is not None and store.hlen("unacked") == 1

    # What Celery's consumer leaves after a Redis crash: pools gone, transport detached.
    channel._disconnect_pools()
    connection._do_close_transport()
    connection.close()  # its restore sweep cannot reach Redis: no AttributeError

    with pytest.raises(connection.connection_errors, match="broker connection is closed"):
        message.ack()  # how Celery's ack_log_error is told: an error it logs, not one it dies on
    # Nothing was lost: the message is still recorded as taken, for the sweeper and the
    # visibility timeout to send again.
    assert store.hlen("unacked") == 1 and store.llen("chunks") == 0
