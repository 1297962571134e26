"""Helpers to run sector services in the test process against a real server."""

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from faststream import FastStream

from refbus.contracts.events import ReferralEvent
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.reads.service import ReadService, serving
from refbus.services.rules.policy import OnwardReferral, SectorPolicy, Step
from refbus.services.rules.state import ChildState, Referral
from refbus.services.runtime.identities import Credentials
from refbus.services.runtime.settings import Settings
from refbus.services.runtime.tls import client_context
from refbus.services.sector.app import sector_app

TEST_EVENT_ID_KEY = secrets.token_bytes(32)
"The services' event-id key in tests (never the data dir's: tests write nothing into the checkout)."


@dataclass
class ScriptedPolicy:
    """A sector that takes exactly the given steps, in order, for every referral it receives."""

    script: list[Step]
    onward_referrals: list[OnwardReferral] = field(default_factory=list)

    async def next_step(self, referral: Referral, child: ChildState) -> Step | None:
        taken = sum(referral.steps.values()) - 1 - referral.steps.get("referral.received", 0)
        return self.script[taken] if taken < len(self.script) and referral.is_open else None

    async def onward(self, referral: Referral, child: ChildState) -> list[OnwardReferral]:
        return self.onward_referrals


@asynccontextmanager
async def running(url: str, policies: Mapping[Sector, SectorPolicy], **settings: object) -> AsyncIterator[
    dict[Sector, FastStream]
]:
    settings.setdefault("event_id_key_hex", TEST_EVENT_ID_KEY.hex())
    config = Settings(nats_url=url, **settings)  # type: ignore[arg-type]
    async with started({s: sector_app(s, p, config) for s, p in policies.items()}, config) as apps:
        yield apps


@asynccontextmanager
async def started(apps: dict[Sector, FastStream], settings: Settings) -> AsyncIterator[dict[Sector, FastStream]]:
    """Sector services started for the block's length, beside the read service they read children
    through (as the pager when they connect with seeds: the pager's lies beside theirs)."""
    sector_seed = settings.nats_seed_file
    pager_seed = sector_seed.parent / "pager.nk" if sector_seed else None
    assert settings.nats_url is not None
    async with read_service(settings.nats_url, pager_seed, settings.tls_ca):
        for app in apps.values():
            await app.start()
        try:
            yield apps
        finally:
            for app in apps.values():
                await app.stop()


def read_service(
    url: str, pager_seed: Path | None = None, tls_ca: Path | None = None
) -> AbstractAsyncContextManager[ReadService]:
    """The sectors' read service (it runs in the pager's process in production), as the pager when
    given its seed, over TLS when given the CA."""
    pager = Credentials("pager", pager_seed) if pager_seed else None
    return serving(url, pager, client_context(tls_ca) if tls_ca else None)


async def wait_for(predicate: Callable[[], "asyncio.Future[bool] | bool"], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


async def referral_events(eventlog: JetStreamEventStore, child: str, referral_id: object) -> list[ReferralEvent]:
    return [
        h.event
        for h in await eventlog.history(child)
        if isinstance(h.event, ReferralEvent) and h.event.referral_id == referral_id
    ]
