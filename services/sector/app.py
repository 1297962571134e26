"""The composition root of one sector's service: its policy, the event store on the broker's
connection, the inbox feeding the handler, inside the app every refbus service runs in."""

from collections.abc import Callable

import structlog
from faststream import FastStream
from nats.aio.client import Client as NATS

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.gateway.config import GatewayConfig
from refbus.services.gateway.external import ExternalSector
from refbus.services.gateway.runtime import GatewayRuntime
from refbus.services.reads.client import ViewReader
from refbus.services.rules.policy import SectorPolicy
from refbus.services.runtime import instrument
from refbus.services.runtime.app import service_app
from refbus.services.runtime.settings import Settings
from refbus.services.sector.inbox import Inbox, ensure_consumer
from refbus.services.sector.redrive import Redriver, redrive_consumer
from refbus.services.sector.service import WORKERS, SectorService, inbox_consumer

log = structlog.get_logger(__name__)

PolicyFactory = Callable[[Settings], SectorPolicy]


def sector_app(
    sector: Sector,
    policy: SectorPolicy,
    settings: Settings,
    workers: int = WORKERS,
    gateway: GatewayConfig | None = None,
) -> FastStream:
    """One sector's service as an app: started, it consumes the sector's inbox and serves as the
    sector's gateway (services/gateway: commands over HTTP and NATS, webhook delivery)."""
    inboxes: list[Inbox] = []
    services: list[SectorService] = []
    samplers: list[instrument.LagSampler] = []
    gateways: list[GatewayRuntime] = []

    async def start_inbox(nc: NATS) -> None:
        ring = settings.service_keyring(sector.value)
        # Counts what it appends; reads children through the read service, as the sector may see them.
        store = instrument.event_store(nc, ring=ring, reader=ViewReader(nc, sector))
        service = SectorService(sector, policy, store, settings.event_id_key())
        services.append(service)
        await ensure_consumer(nc, subjects.STREAM, inbox_consumer(sector, settings.ack_wait))
        handle = instrument.handler(sector, service.handle)  # service.handle itself with REFBUS_METRICS=0
        inboxes.append(Inbox(nc, subjects.STREAM, service.consumer_name, handle, workers))
        await inboxes[0].start()
        samplers.extend(filter(None, [instrument.lag_sampler(nc, sector, service.consumer_name)]))
        # Redrive requests from operators (refbus dead redrive): a few at a time is plenty.
        redriver = Redriver(service)
        await ensure_consumer(nc, subjects.DEAD_LETTER_STREAM, redrive_consumer(sector, settings.ack_wait))
        inboxes.append(Inbox(nc, subjects.DEAD_LETTER_STREAM, f"redrive-{sector.value}", redriver.handle, 8))
        await inboxes[1].start()
        log.info("sector_service_started", sector=sector.value, consumer=service.consumer_name)
        config = gateway or GatewayConfig.from_env(sector, settings.data_dir)
        gateways.append(GatewayRuntime(sector, config))
        await gateways[0].start(nc, service.store, service.id_key, settings.ack_wait, ring=ring)

    async def stop_inbox() -> None:
        for sampler in samplers:
            await sampler.stop()
        for runtime in gateways:
            await runtime.stop()
        for inbox in inboxes:
            await inbox.stop(wait=5.0)

    app = service_app(sector.value, settings, start_inbox, stop_inbox)
    app.services = services  # type: ignore[attr-defined]  # for tests: the service once started
    app.gateways = gateways  # type: ignore[attr-defined]  # for tests: the gateway once started
    return app


def app_factory(sector: Sector, build_policy: PolicyFactory) -> Callable[..., FastStream]:
    """`create_app` for a sector's main.py (what `faststream run --factory` and `refbus service` call)."""

    def create_app(settings: Settings | None = None) -> FastStream:
        settings = settings or Settings.from_env()
        gateway = GatewayConfig.from_env(sector, settings.data_dir)
        policy = ExternalSector(sector) if gateway.external else build_policy(settings)
        return sector_app(sector, policy, settings, gateway=gateway)

    return create_app
