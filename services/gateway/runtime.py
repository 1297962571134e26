"""A sector service's gateway, started with it (services/sector/app.py): HTTP (when a port is
configured), NATS request/reply, and webhook delivery (to the URL its system registered, else the
configured default; registration.py)."""

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog
import uvicorn
from nats.aio.client import Client as NATS

from refbus.contracts.vocabulary import Sector
from refbus.services.audit.keys import Keyring
from refbus.services.eventstore.store import EventStore
from refbus.services.gateway.config import GatewayConfig
from refbus.services.gateway.core import Gateway
from refbus.services.gateway.feed import FeedReader
from refbus.services.gateway.http import gateway_app
from refbus.services.gateway.registration import KvRecords, WebhookControl
from refbus.services.gateway.requests import CommandResponder
from refbus.services.gateway.webhooks import WebhookDelivery
from refbus.services.privacy.content import ContentKeys

log = structlog.get_logger(__name__)


@dataclass
class GatewayRuntime:
    sector: Sector
    config: GatewayConfig
    gateway: Gateway | None = None
    webhook: WebhookControl | None = None
    responder: CommandResponder | None = None
    http: uvicorn.Server | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(
        self, nc: NATS, store: EventStore, id_key: bytes, ack_wait: float = 30.0, ring: Keyring | None = None
    ) -> None:
        """`ring`: the sector's keys, its content key among them (without it, content is refused)."""
        content = ContentKeys(nc, ring, self.sector) if ring is not None else None
        self.gateway = Gateway(self.sector, store, id_key, content=content)
        if self.config.nats_commands:
            self.responder = CommandResponder(nc, self.gateway)
            await self.responder.start()
        if self.config.webhook_url or self.config.http_port is not None:
            self.webhook = self._webhook_control(nc, ack_wait)
        if self.config.http_port is not None:
            app = gateway_app(
                {self.sector: self.gateway}, self.config.tokens, FeedReader(nc, opener=self.gateway.view),
                heartbeat_s=self.config.stream_heartbeat_s,
                webhooks={self.sector: self.webhook} if self.webhook else {},
            )
            server = uvicorn.Server(
                uvicorn.Config(
                    app, host=self.config.http_host, port=self.config.http_port, log_level="warning",
                    lifespan="off", access_log=False,
                )
            )
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the app's own
            self.http = server
            self._tasks.append(asyncio.create_task(server.serve()))
            while not server.started:
                if self._tasks[0].done():
                    self._tasks[0].result()  # raises why it could not start (port taken)
                await asyncio.sleep(0.02)
            log.info("gateway_http_started", sector=self.sector.value, port=self.config.http_port)
        if self.webhook is not None:
            await self.webhook.start()

    def _webhook_control(self, nc: NATS, ack_wait: float) -> WebhookControl:
        assert self.gateway is not None
        opener = self.gateway.view
        started: list[WebhookDelivery] = []

        async def deliver(url: str, secret: str) -> WebhookDelivery:
            delivery = WebhookDelivery(
                nc, self.sector, url, secret, opener=opener,
                retry_max_s=self.config.retry_max_s, timeout_s=self.config.webhook_timeout_s, ack_wait=ack_wait,
            )
            # Only this process's first delivery may follow a crash; later ones follow our own
            # stop, which handed back all it held.
            await delivery.start(after_restart=not started)
            started.append(delivery)
            del started[:-1]
            return delivery

        return WebhookControl(
            self.sector, KvRecords(nc), deliver, default_url=self.config.webhook_url,
            secret=self.config.webhook_secret, secret_file=self.config.webhook_secret_file,
            poll_s=self.config.registration_poll_s,
        )

    async def stop(self) -> None:
        if self.http is not None:
            self.http.should_exit = True
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5.0)
        if self.responder is not None:
            await self.responder.stop()
        if self.webhook is not None:
            await self.webhook.stop()
