"""A sector's inbox: its durable pull consumer, fed by overlapping pull requests into one callback.

Not FastStream's pull subscriber: its per-message dispatch cost more CPU than the handling, and its
batch mode lost messages until ack_wait (docs/decisions/0007-inbox-workers.md). Pull requests ask
for at most as many messages as there are free workers, at least a quarter of the workers' worth,
and overlap: the next goes out before the last is fulfilled. What a request still owes is forgotten
when it expires (status 408 says how much), ends otherwise, or when the server has been silent for
three heartbeats (a reconnect or a server restart loses pending requests).
"""

import asyncio
import json
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, ConsumerInfo

from refbus.services.eventstore import jetstream

log = structlog.get_logger(__name__)


async def ensure_consumer(nc: NATS, stream: str, config: ConsumerConfig) -> ConsumerInfo:
    """Create the durable consumer unless it exists (an existing one keeps its configuration and
    its position); its info as the server gave it (a new one's: nothing delivered yet)."""
    assert config.durable_name
    try:
        info = await jetstream.api_request(nc, jetstream.consumer_info_subject(stream, config.durable_name), {}, 5.0)
        return ConsumerInfo.from_response(info)
    except jetstream.ApiError as exc:
        if exc.code != jetstream.CONSUMER_NOT_FOUND:
            raise
        return await jetstream.create_consumer(nc, stream, config)


class Inbox:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        handle: Callable[[Msg], Awaitable[None]],
        workers: int = 64,
        expires: float = 5.0,
        heartbeat: float = 1.0,
    ) -> None:
        self.nc = nc
        self.handle = handle
        self.workers = workers
        self.expires = expires
        self.heartbeat = heartbeat
        self._next_subject = jetstream.next_message_subject(stream, consumer)
        self._reply = ""
        self._owed = 0
        "Messages the outstanding pull requests may still bring (0: none outstanding)."
        self.smallest_pull = 0
        "The fewest messages a pull request has asked for so far (0: none sent)."
        self._heard = 0.0
        self._working: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._closing = False

    async def start(self) -> None:
        self._reply = self.nc.new_inbox()
        self._subscription = await self.nc.subscribe(self._reply, cb=self._on_message)
        self._watchdog = asyncio.create_task(self._watch())
        await self._pull()

    async def stop(self, wait: float = 5.0, requests_end: bool = False) -> None:
        """Stop asking for messages and give those in hand `wait` seconds to be handled; the rest
        stay unacknowledged and come back (to this or another instance) after ack_wait.
        `requests_end`: first let the pull requests out expire (at most `expires`), handling what
        they still bring, so that nothing is delivered to a closed subscription (to wait ack_wait)."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if requests_end:
            deadline = asyncio.get_running_loop().time() + self.expires + 1.0
            # What is owed changes on three paths (messages, statuses, the watchdog): polled, briefly.
            while self._owed and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        if self._subscription is not None:
            await self._subscription.unsubscribe()  # what the last request still brings is redelivered
        if self._working:
            await asyncio.wait(self._working, timeout=wait)

    async def _pull(self) -> None:
        free = self.workers - len(self._working) - self._owed
        if self._closing or free < max(1, self.workers // 4) or not self.nc.is_connected:
            return
        self._owed += free
        self.smallest_pull = min(self.smallest_pull or free, free)
        self._heard = asyncio.get_running_loop().time()
        request = {"batch": free, "expires": int(self.expires * 1e9), "idle_heartbeat": int(self.heartbeat * 1e9)}
        try:
            await self.nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._reply)
        except Exception as exc:  # the connection went away meanwhile: the watchdog asks again
            self._owed -= free
            log.warning("pull_request_not_sent", error=repr(exc))

    async def _on_message(self, msg: Msg) -> None:
        self._heard = asyncio.get_running_loop().time()
        headers = msg.headers or {}
        status = jetstream.status_of(msg)
        if status is None:
            self._owed = max(0, self._owed - 1)
            task = asyncio.create_task(self._work(msg))
            self._working.add(task)
            task.add_done_callback(self._working.discard)
        elif status == jetstream.HEARTBEAT:
            return  # idle heartbeat: the requests are alive
        else:
            # Expired (408), or ended by a leadership change, a deleted consumer, ... The server
            # says what the request still owed; without that, forget every request (the watchdog
            # asks again).
            unfulfilled = headers.get("Nats-Pending-Messages", "")
            self._owed = max(0, self._owed - int(unfulfilled)) if unfulfilled.isdigit() else 0
            if status != jetstream.REQUEST_EXPIRED:
                log.warning("pull_request_ended", status=status, description=headers.get("Description"))
                return
        await self._pull()

    async def _work(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception as exc:
            # Unacknowledged, the message comes back after ack_wait.
            log.error("handler_crashed", error=repr(exc))
        finally:
            self._working.discard(asyncio.current_task())  # type: ignore[arg-type]
        await self._pull()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            silent = asyncio.get_running_loop().time() - self._heard
            if self._owed and silent > 3 * self.heartbeat:
                log.info("pull_request_lost", silent_s=round(silent, 1))
                self._owed = 0
            await self._pull()
