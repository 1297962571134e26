"""The inbox puller on a real server: every message once, never more in hand than workers, many
messages per pull request when handlers are quick, and work resumes after the server drops the
pull request."""

import asyncio
from collections import Counter

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from refbus.services.sector.inbox import Inbox, ensure_consumer
from tests.services import wait_for

CONSUMER = ConsumerConfig(durable_name="c", filter_subject="t.>", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.seen: Counter[int] = Counter()
        self.in_hand = 0
        self.most_in_hand = 0

    async def handle(self, msg: Msg) -> None:
        self.in_hand += 1
        self.most_in_hand = max(self.most_in_hand, self.in_hand)
        await asyncio.sleep(self.pause)
        self.seen[int(msg.data)] += 1
        self.in_hand -= 1
        await msg.ack()


async def test_every_message_once_and_never_more_in_hand_than_workers(own_server: EmbeddedNats) -> None:
    nc = await connect(own_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
    await ensure_consumer(nc, "T", CONSUMER)
    await ensure_consumer(nc, "T", CONSUMER)
    for i in range(200):
        await js.publish(f"t.{i % 7}", str(i).encode())
    recorder = Recorder(pause=0.002)
    inbox = Inbox(nc, "T", "c", recorder.handle, workers=3, expires=1.0, heartbeat=0.2)
    await inbox.start()
    await wait_for(lambda: len(recorder.seen) == 200, within=20)
    # More published while it waits on an idle request: delivered without polling.
    for i in range(200, 210):
        await js.publish("t.x", str(i).encode())
    await wait_for(lambda: len(recorder.seen) == 210, within=5)
    await inbox.stop()
    await nc.close()
    assert set(recorder.seen) == set(range(210))
    assert max(recorder.seen.values()) == 1
    assert 1 < recorder.most_in_hand <= 3


async def test_quick_handlers_get_many_messages_per_pull_request(own_server: EmbeddedNats) -> None:
    # A referrer's inbox takes every status update of its referrals: thousands a second, each
    # handled in a moment. Asking, when a request was fulfilled, only for the workers free then
    # (none: their tasks had not run yet) made requests of one or two messages, a round trip each.
    nc = await connect(own_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
    await ensure_consumer(nc, "T", CONSUMER)
    total = 3000
    acks = [js.publish(f"t.{i % 7}", str(i).encode()) for i in range(total)]
    await asyncio.gather(*acks)
    recorder = Recorder(pause=0.001)
    inbox = Inbox(nc, "T", "c", recorder.handle, workers=64, expires=5.0, heartbeat=0.2)
    await inbox.start()
    await wait_for(lambda: len(recorder.seen) == total, within=20)
    await inbox.stop()
    await nc.close()
    assert set(recorder.seen) == set(range(total))
    assert max(recorder.seen.values()) == 1
    assert recorder.most_in_hand <= 64
    assert inbox.smallest_pull >= 16


async def test_a_pull_request_lost_with_the_server_is_asked_again(own_server: EmbeddedNats) -> None:
    nc = await connect(own_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
    await ensure_consumer(nc, "T", CONSUMER)
    recorder = Recorder(pause=0.0)
    inbox = Inbox(nc, "T", "c", recorder.handle, workers=4, expires=30.0, heartbeat=0.2)
    await inbox.start()
    await js.publish("t.a", b"1")
    await wait_for(lambda: len(recorder.seen) == 1, within=5)
    own_server.kill()  # the outstanding pull request dies with the server
    own_server.start()
    await wait_for(lambda: nc.is_connected, within=10)

    async def published() -> bool:
        try:
            await js.publish("t.a", b"2", headers={"Nats-Msg-Id": "2"})  # JetStream may still be recovering
        except Exception:
            return False
        return True

    await wait_for(published, within=10)
    await wait_for(lambda: len(recorder.seen) == 2, within=10)
    await inbox.stop()
    await nc.close()
    assert recorder.seen == Counter({1: 1, 2: 1})
