"""JetStream's own state as Prometheus metrics (metrics.JETSTREAM_REGISTRY), read at scrape time.

Served by `refbus exporter` (on its own) and by `refbus monitor --web` (beside the dashboard), at
/metrics. One exporter per bus: the sector services export what they measure themselves; this
exports what only the server knows (stream size and limits, every durable consumer's backlog,
the services connected, the dead letters kept).
"""

from nats.aio.client import Client as NATS

from refbus.services.monitor import server_state
from refbus.services.monitor.server_state import ServerState
from refbus.services.runtime import metrics


def publish(state: ServerState, dead_letters: dict[str, int] | None) -> None:
    """Set the JetStream gauges from one reading of the server (series of vanished consumers go)."""
    metrics.JS_UP.set(0 if state.source == "unavailable" else 1)
    metrics.JS_STORAGE.set(state.storage)
    metrics.JS_STORAGE_LIMIT.set(state.storage_limit)
    metrics.FOREIGN_DELIVERIES.set(len(state.foreign_deliveries))
    for gauge in (
        metrics.STREAM_MESSAGES, metrics.STREAM_BYTES, metrics.STREAM_MAX_BYTES, metrics.STREAM_MAX_MESSAGES,
        metrics.CONSUMER_PENDING, metrics.CONSUMER_ACK_PENDING, metrics.CONSUMER_REDELIVERED, metrics.CONSUMER_WAITING,
        metrics.SERVICE_UP,
    ):
        gauge.clear()
    for stream in state.streams.values():
        metrics.STREAM_MESSAGES.labels(stream.name).set(stream.messages)
        metrics.STREAM_BYTES.labels(stream.name).set(stream.bytes)
        metrics.STREAM_MAX_BYTES.labels(stream.name).set(stream.max_bytes)
        metrics.STREAM_MAX_MESSAGES.labels(stream.name).set(stream.max_msgs)
    for consumer in state.consumers.values():
        labels = (consumer.stream, consumer.name)
        metrics.CONSUMER_PENDING.labels(*labels).set(consumer.num_pending)
        metrics.CONSUMER_ACK_PENDING.labels(*labels).set(consumer.num_ack_pending)
        metrics.CONSUMER_REDELIVERED.labels(*labels).set(consumer.num_redelivered)
        metrics.CONSUMER_WAITING.labels(*labels).set(consumer.num_waiting)
    for service, count in (state.connections or {}).items():
        metrics.SERVICE_UP.labels(metrics.service_label(service)).set(count)
    for sector, count in (dead_letters or {}).items():
        metrics.DEAD_LETTERS_STORED.labels(metrics.sector_label(sector)).set(count)


async def scrape(nc: NATS | None, monitor_url: str | None) -> bytes:
    """Read the server now and answer the exposition of JETSTREAM_REGISTRY."""
    state = await server_state.read(nc, monitor_url)
    dead: dict[str, int] | None = None
    if nc is not None and nc.is_connected:
        try:
            dead = await server_state.dead_letters(nc)
        except Exception:  # a user that may not read the dead-letter stream's state: the rest stands
            dead = None
    publish(state, dead)
    return metrics.exposition(metrics.JETSTREAM_REGISTRY)
