"""Getting a bus to talk to: a server given by URL, one already running, or the embedded one."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

import nats
import structlog
from nats.aio.client import Client as NATS

from refbus.services.audit import keys
from refbus.services.eventstore import streams
from refbus.services.runtime.embedded import EmbeddedNats, port_open
from refbus.services.runtime.settings import DEFAULT_NATS_URL, Settings

log = structlog.get_logger(__name__)


@dataclass
class Bus:
    nc: NATS
    url: str
    server: EmbeddedNats | None
    "Set when this process started the server (and so stops it)."


def _reachable(url: str) -> bool:
    parsed = urlparse(url.split(",")[0])
    return parsed.hostname is not None and port_open(parsed.port or 4222, parsed.hostname)


def reply_prefix(url: str) -> str:
    """The reply-inbox prefix of the user a URL connects as, `_INBOX.<user>` (nats-py's `_INBOX`
    without a user): under the secured permissions a user may subscribe to its own replies only."""
    user = urlparse(url.split(",")[0]).username
    return f"_INBOX.{user}" if user else "_INBOX"


async def connect(url: str, name: str = "refbus") -> NATS:
    return await nats.connect(
        servers=url.split(","), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        inbox_prefix=reply_prefix(url),
    )


@asynccontextmanager
async def open_bus(settings: Settings, name: str = "refbus") -> AsyncIterator[Bus]:
    """Connect to `settings.nats_url`; else to the default local server if one runs; else start the
    embedded server on the data dir for as long as the block runs. Streams are provisioned."""
    server: EmbeddedNats | None = None
    url = settings.nats_url
    if url is None and _reachable(DEFAULT_NATS_URL):
        url = DEFAULT_NATS_URL
    if url is None:
        server = await EmbeddedNats(settings.data_dir / "nats", port=4222).astart()
        url = server.url
    nc = await connect(url, name)
    try:
        await streams.provision(nc.jetstream(), replicas=settings.replicas)
        ring = settings.keyring()
        keys.install(ring)  # what this process writes is signed with the deployment's keys
        try:
            await keys.publish(nc, ring, wait=2.0)
        except Exception as exc:  # a user that may not publish keys (the operator): reading still works
            log.warning("keys_not_published", error=repr(exc))
        yield Bus(nc, url, server)
    finally:
        await nc.drain()
        if server is not None:
            await server.astop()
