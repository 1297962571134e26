"""Replay of the whole log, in order, as fast as the client can parse it.

An ordered consumer with a callback (several times faster than iterating a subscription) hands raw
messages over in chunks, decoded on this side; a bounded queue keeps a slow reader from piling them
up. When the reader is slower than the log, nats-py drops what overflows its buffer after counting it
as delivered, so the ordered consumer does not notice: a jump in sequence numbers is checked against
the log, and the consumer made again from the first missing event if the log has it.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from refbus.contracts import subjects
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.reader import LogReader, bound_event
from refbus.services.eventstore.records import StoredEvent

log = structlog.get_logger(__name__)

REPLAY_STALL_S = 1.0
"A replay that hears nothing this long reads again from where it is."


async def replay(
    reader: LogReader, from_seq: int = 1, chunk: int = 512, client_buffer: int = 200_000, consumer: str | None = None
) -> AsyncIterator[StoredEvent]:
    """Every event of the log in order, from `from_seq` to the end as it is now; each payload bound
    to the subject it was stored on, with the proof its headers carry. `consumer`: see raw_replay."""
    async for seq, stored_ns, subject, headers, data in raw_replay(
        reader, from_seq, chunk, client_buffer, consumer=consumer
    ):
        yield bound_event(seq, jetstream.datetime_from_ns(stored_ns), subject, data, headers)


RawStored = tuple[int, int, str, dict[str, str], bytes]
"(sequence, stored at in ns, subject, headers, payload)"


async def raw_replay(
    reader: LogReader, from_seq: int = 1, chunk: int = 512, client_buffer: int = 200_000,
    stream: str = subjects.STREAM, subject_filter: str = subjects.LOG_SUBJECTS, consumer: str | None = None,
) -> AsyncIterator[RawStored]:
    """Every message of `stream` in order as stored, from `from_seq` to the end as it is now (for
    the verifier, which needs headers; `stream`: another stream with the log's shape). `consumer`:
    read through a consumer of that name (named_raw_replay), for a user whose permissions name its
    reader; None: an ordered consumer (a user that may create any consumer, the admin)."""
    if consumer is not None:
        async with contextlib.aclosing(
            named_raw_replay(reader.nc, consumer, from_seq, reader.timeout, stream, subject_filter, take_over=False)
        ) as messages:
            async for message in messages:
                yield message
        return
    js = reader.nc.jetstream(timeout=reader.timeout)
    end = (await js.stream_info(stream)).state.last_seq
    if end < from_seq:
        return
    chunks: asyncio.Queue[tuple[int, list[RawStored], bool]] = asyncio.Queue(maxsize=64)

    async def read_from(start: int, generation: int) -> Subscription:
        pending: list[RawStored] = []

        async def on_message(msg: Msg) -> None:
            seq, stored_ns = jetstream.delivered_position(msg.reply)
            pending.append((seq, stored_ns, msg.subject, msg.headers or {}, msg.data))
            # None pending after it: the last there is (the end's own sequence may be deleted).
            last = seq >= end or jetstream.delivered_pending(msg.reply) == 0
            if len(pending) >= chunk or last:
                await chunks.put((generation, pending.copy(), last))
                pending.clear()

        return await js.subscribe(
            subject_filter,
            stream=stream,
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=start),
            pending_msgs_limit=client_buffer,
        )

    generation = 0
    sub = await read_from(from_seq, generation)
    expected = from_seq
    loop = asyncio.get_running_loop()
    heard = loop.time()
    try:
        while True:
            try:
                async with asyncio.timeout(REPLAY_STALL_S):  # not wait_for: docs/decisions/0005
                    made_by, batch, last = await chunks.get()
            except TimeoutError:
                if loop.time() - heard > reader.timeout:
                    raise
                batch, last = [], False  # the chunk with the end may have been dropped: read again from here
            else:
                if made_by != generation:
                    continue  # from a consumer given up
                heard = loop.time()
            for item in batch:
                seq = item[0]
                if seq > expected and await reader.exists(expected, stream):
                    break  # dropped in the client: read again from there
                yield item
                expected = seq + 1
            else:
                if expected > end or last:
                    return
                if batch:
                    continue
            log.warning("replay_dropped_in_client", resumed_at=expected)
            await sub.unsubscribe()
            generation += 1
            sub = await read_from(expected, generation)
    finally:
        await sub.unsubscribe()


NAMED_PULL = 1024


class ReplayInterrupted(RuntimeError):
    """A pass through a named consumer ended early: a delivery lost, or the consumer taken over by
    another reader of the same name (which deletes it first)."""


async def named_raw_replay(
    nc: NATS, consumer: str, from_seq: int = 1, wait: float = 5.0,
    stream: str = subjects.STREAM, subject_filter: str = subjects.LOG_SUBJECTS, take_over: bool = True,
) -> AsyncIterator[RawStored]:
    """raw_replay through a consumer of a fixed name, made in the filtered form
    (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`), so that a permission can allow this reader
    and nothing else: an ordered consumer's create subject carries no name and no filter, and a
    permission for it would let its user create or repoint any consumer. Pulled a batch at a time (a
    reader never holds more than it asked for); a delivery lost on the way (the consumer's own
    sequence jumps) or a pull the server ends raises: the caller reads again later. Made afresh on
    every pass and deleted after it; two readers of one name end each other's pass. `take_over=False`
    (readers started by people, who may start two at once): a consumer of the name active in the last
    BUSY_S seconds is left alone and ReplayInterrupted raised, so the pass under way goes on."""
    js = nc.jetstream(timeout=wait)
    end = (await js.stream_info(stream)).state.last_seq
    if end < from_seq:
        return
    if not take_over and await _busy(nc, stream, consumer, wait):
        raise ReplayInterrupted(f"another reader is reading {stream} through {consumer}: try again when it ends")
    await _delete_consumer(nc, stream, consumer, wait)
    await jetstream.create_consumer(nc, stream, ConsumerConfig(
        name=consumer, filter_subject=subject_filter, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=from_seq, ack_policy=AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True,
    ), wait)
    pull = jetstream.PullRequest()
    reply = nc.new_inbox()
    subscription = await nc.subscribe(reply, cb=pull.on_message)
    # no_wait: what there is now, then the end of the request at once (the pass has an end anyway).
    request = json.dumps({"batch": NAMED_PULL, "no_wait": True}).encode()
    delivered = 0
    try:
        while True:
            pull.begin(NAMED_PULL)
            await nc.publish(jetstream.next_message_subject(stream, consumer), request, reply=reply)
            async with asyncio.timeout(wait):  # not wait_for: docs/decisions/0005
                await pull.done.wait()
            if pull.failure:
                raise ReplayInterrupted(f"reading {stream} through {consumer}: {pull.failure}")
            for msg in pull.messages:
                if jetstream.delivered_consumer_sequence(msg.reply) != delivered + 1:
                    raise ReplayInterrupted(f"reading {stream} through {consumer}: a delivery was lost")
                delivered += 1
                seq, stored_ns = jetstream.delivered_position(msg.reply)
                yield seq, stored_ns, msg.subject, msg.headers or {}, msg.data
                if seq >= end or jetstream.delivered_pending(msg.reply) == 0:
                    return  # the end as it was when the pass began (its own sequence may be deleted)
            if not pull.messages:
                return  # nothing more before the request expired
    finally:
        await subscription.unsubscribe()
        with contextlib.suppress(Exception):
            await _delete_consumer(nc, stream, consumer, wait)


BUSY_S = 10.0
"A named consumer made or delivering this recently belongs to a pass under way (a crashed one's is taken over)."


async def _busy(nc: NATS, stream: str, consumer: str, wait: float) -> bool:
    try:
        info = await jetstream.api_request(nc, jetstream.consumer_info_subject(stream, consumer), {}, wait)
    except jetstream.ApiError as exc:
        if exc.code != jetstream.CONSUMER_NOT_FOUND:
            raise
        return False
    delivered = info.get("delivered") or {}
    times = [str(info.get("created") or ""), str(delivered.get("last_active") or "")]  # type: ignore[union-attr]
    newest = max((jetstream.nats_time_ns(t) for t in times if t), default=0)
    return time.time_ns() - newest < BUSY_S * 1e9


async def _delete_consumer(nc: NATS, stream: str, consumer: str, wait: float) -> None:
    try:
        await jetstream.api_request(nc, jetstream.consumer_delete_subject(stream, consumer), {}, wait)
    except jetstream.ApiError as exc:
        if exc.code != jetstream.CONSUMER_NOT_FOUND:
            raise
