"""How the deadline service reads the log on NATS: a consumer of its own on REFBUS, made afresh from
the first event on every start (the rebuild), then followed (docs/decisions/0011-deadlines.md).

A named consumer created in the filtered form (`$JS.API.CONSUMER.CREATE.REFBUS.<name>.refbus.ev.>`),
so the deadlines user's permission names this consumer and nothing else: unlike an unnamed ordered
consumer, whose filterless create form could also create or repoint a sector's inbox consumer. No
acks (it is a reader); pull requests and their recovery after a server restart are the sector
inbox's (services/sector/inbox.py), but each message is handed to the tracker inline, in delivery
order, in the subscription's callback: no task per message.
"""

import asyncio
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from refbus.contracts import subjects
from refbus.services.deadlines.tracker import DeadlineTracker
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.reader import bound_event
from refbus.services.sector.inbox import Inbox

PULL = 1024
CATCH_UP_S = 60.0


def follower_config(name: str) -> ConsumerConfig:
    return ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=subjects.LOG_SUBJECTS,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        max_ack_pending=-1,
        inactive_threshold=3600.0,  # durable across server restarts; gone an hour after its service
    )


class _InlineInbox(Inbox):
    def __init__(self, nc: NATS, consumer: str, see: Callable[[Msg], None], pull: int) -> None:
        super().__init__(nc, subjects.STREAM, consumer, _never, workers=pull)
        self.see = see

    async def _on_message(self, msg: Msg) -> None:
        if msg.headers is None or jetstream.STATUS not in msg.headers:
            self._heard = asyncio.get_running_loop().time()
            self._owed = max(0, self._owed - 1)
            self.see(msg)
            await self._pull()
            return
        await super()._on_message(msg)


async def _never(msg: Msg) -> None:  # pragma: no cover
    raise AssertionError("handled inline")


class LogFollower:
    def __init__(self, nc: NATS, tracker: DeadlineTracker, name: str = "deadlines", wait: float = 5.0) -> None:
        self.nc = nc
        self.tracker = tracker
        self.name = name
        self.wait = wait
        self._inbox: Inbox | None = None

    async def start(self) -> None:
        subject = jetstream.consumer_delete_subject(subjects.STREAM, self.name)
        try:  # from the first event again: the deadlines are rebuilt from the log, not remembered
            await jetstream.api_request(self.nc, subject, {}, self.wait)
        except jetstream.ApiError as exc:
            if exc.code != jetstream.CONSUMER_NOT_FOUND:
                raise
        await jetstream.create_consumer(self.nc, subjects.STREAM, follower_config(self.name), self.wait)
        self._inbox = _InlineInbox(self.nc, self.name, self._see, PULL)
        await self._inbox.start()

    async def stop(self) -> None:
        if self._inbox is not None:
            await self._inbox.stop(wait=1.0)

    def _see(self, msg: Msg) -> None:
        seq, stored_ns = jetstream.delivered_position(msg.reply)
        self.tracker.see(bound_event(seq, jetstream.datetime_from_ns(stored_ns), msg.subject, msg.data))

    async def caught_up(self) -> None:
        """Return once the tracker has seen the log up to its end as it is now (a minute at most)."""
        info = await self.nc.jetstream(timeout=self.wait).stream_info(subjects.STREAM)
        end = info.state.last_seq
        async with asyncio.timeout(CATCH_UP_S):
            while self.tracker.position < end:  # noqa: ASYNC110  (polled: the tracker is sync code)
                await asyncio.sleep(0.01)
