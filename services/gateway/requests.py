"""The gateways over NATS request/reply: a sector system sends a command as a request on
`refbus.cmd.<sector>.<command>` (contracts/subjects.py) and gets the same answer an HTTP caller gets,
`Applied` or `Refusal` as JSON with the HTTP status in `status`. The NATS user is the credential: the
server lets `<sector>-system` publish only on its own sector's command subjects."""

import asyncio

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from refbus.contracts import subjects
from refbus.contracts.commands import Refusal
from refbus.services.gateway.core import Gateway, refusal

log = structlog.get_logger(__name__)


class CommandResponder:
    def __init__(self, nc: NATS, gateway: Gateway) -> None:
        self.nc = nc
        self.gateway = gateway
        self._subscription: Subscription | None = None
        self._working: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sector = self.gateway.sector
        self._subscription = await self.nc.subscribe(
            subjects.command_filter(sector), queue=f"gateway-{sector.value}", cb=self._on_request
        )
        await self.nc.flush()  # the server has the subscription: a request right after start finds a responder

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._working:
            await asyncio.wait(self._working, timeout=5.0)

    async def _on_request(self, msg: Msg) -> None:
        # A task per request: nats-py runs one subscription's callbacks one after another.
        task = asyncio.create_task(self._answer(msg))
        self._working.add(task)
        task.add_done_callback(self._working.discard)

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        kind = msg.subject.rpartition(".")[2]
        try:
            command = self.gateway.decode(kind, msg.data)
            answer = command if isinstance(command, Refusal) else await self.gateway.execute(command)
        except Exception as exc:  # never leave a requester waiting for a timeout
            log.error("command_failed", error=repr(exc))
            answer = refusal(503, "unavailable", "internal error; retry with the same key")
        try:
            await msg.respond(msgspec.json.encode(answer))
        except Exception as exc:
            log.warning("reply_not_sent", error=repr(exc))
