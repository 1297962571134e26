"""Least privilege, on a real server with deploy/nats-permissions.conf: a sector service works with
its own user, and the server refuses that user writing as another sector.

Every connection here uses its user's reply prefix (`_INBOX.<user>`), the only subjects it may
subscribe to, as the services do. test_permissions_holes.py has the holes an outside attacker found."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from refbus.contracts import subjects
from refbus.contracts.events import ReferralReceived
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.reader import LogReader
from refbus.services.pager.pager import HistoryPager, pager_checkpoint
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import new_child, record, request
from tests.integration import secured
from tests.integration.secured import connect_as, sector_store, seed_file
from tests.services import ScriptedPolicy, referral_events, running, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured.secured_server(tmp_path, monkeypatch)


async def test_each_sector_writes_only_as_itself(secured_server: EmbeddedNats,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    admin = await connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    errors: list[Exception] = []
    social = await connect_as(secured_server, "social", errors)
    social_log = sector_store(social, Sector.SOCIAL, timeout=2.0)
    child = new_child()
    async with running(secured_server.url, {Sector.HEALTH: ScriptedPolicy([])},
                       nats_seed_file=seed_file(secured_server, "health")):
        req = request(child, Sector.SOCIAL, Sector.HEALTH)
        assert await record(social_log, req)  # social writes as social: allowed

        async def received() -> bool:
            events = await referral_events(social_log, child, req.referral_id)
            return any(isinstance(e, ReferralReceived) for e in events)

        await wait_for(received)  # health consumed its inbox and wrote as health, with its own user

        forged = request(child, Sector.HEALTH, Sector.JUSTICE, "birth_registration")  # social posing as health
        with pytest.raises((NatsTimeout, NoRespondersError, asyncio.TimeoutError)):
            await social_log.js.publish(subjects.event_subject(child, Sector.HEALTH, Sector.JUSTICE), b"{}",
                                        timeout=1.0)
        await asyncio.sleep(0.2)
        assert any("permissions violation for publish" in str(e).lower() for e in errors), errors
        history = [h.event for h in await social_log.history(child)]
        assert forged.event_id not in {e.event_id for e in history if e}
        assert all(e.from_sector is not Sector.HEALTH or e.to_sector is Sector.SOCIAL for e in history if e)

        # The operator sees flows (stream state) but cannot read a child's events.
        operator = await connect_as(secured_server, "operator", errors)
        info = await operator.jetstream().stream_info(subjects.STREAM)
        assert info.state.messages >= 2
        with pytest.raises((NatsTimeout, NoRespondersError, asyncio.TimeoutError)):
            await JetStreamEventStore(operator, timeout=1.0).history(child)
        await operator.close()
    await social.close()
    await admin.close()


async def test_the_pager_writes_pages_and_nothing_else(secured_server: EmbeddedNats) -> None:
    admin = await connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    social = await connect_as(secured_server, "social")
    social_log = sector_store(social, Sector.SOCIAL, timeout=2.0)
    child = new_child()
    seq = await record(social_log, request(child, Sector.SOCIAL, Sector.HEALTH))
    errors: list[Exception] = []
    pager_nc = await connect_as(secured_server, "pager", errors)
    pager = HistoryPager(pager_nc, flush_after=0.05, timeout=2.0)
    await pager.start()
    try:
        async def paged() -> bool:
            return await pager_checkpoint(admin) >= 1

        await wait_for(paged, within=10)
    finally:
        await pager.stop()
    # The pages hold the child's events; a sector may not read them directly (only through the read
    # service, which the pager's identity runs: services/reads/).
    pages, _ = await LogReader(admin, timeout=2.0)._history_pages(child)
    assert [p.seq for p in pages] == [seq]
    with pytest.raises((NatsTimeout, NoRespondersError, asyncio.TimeoutError)):
        await LogReader(social, timeout=1.0)._history_pages(child)
    assert not errors, errors  # everything the pager did was allowed, deletes and checkpoints included
    # The pager cannot write an event.
    with pytest.raises((NatsTimeout, NoRespondersError, asyncio.TimeoutError)):
        await pager_nc.jetstream().publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), b"{}",
                                           timeout=1.0)
    await asyncio.sleep(0.2)
    assert any("permissions violation for publish" in str(e).lower() for e in errors), errors
    await pager_nc.close()
    await social.close()
    await admin.close()


async def test_the_deadline_service_writes_notices_and_nothing_else(secured_server: EmbeddedNats) -> None:
    from datetime import UTC, datetime, timedelta

    from refbus.contracts.events import ReferralEscalated, ReferralOverdue
    from refbus.services.deadlines.main import create_app as deadlines_app
    from refbus.services.rules.deadlines import DeadlineTable
    from tests.services import TEST_EVENT_ID_KEY

    admin = await connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    log = JetStreamEventStore(admin, timeout=2.0)
    child = new_child()
    req = request(child, Sector.SOCIAL, Sector.HEALTH)
    await record(log, req)
    now = datetime.now(UTC) + timedelta(hours=1)  # the receipt (10 minutes) is overdue: nobody runs
    settings = secured.settings_for(secured_server, "deadlines", event_id_key_hex=TEST_EVENT_ID_KEY.hex())
    app = deadlines_app(settings, clock=lambda: now, table=DeadlineTable.from_json('{"routine": {"received": 600}}'),
                        tick=3600)
    await app.start()
    try:
        service = app.services[0]  # type: ignore[attr-defined]
        assert await service.step() in (0, 2)  # its own first pass may have fired already
        notices = [e for e in await referral_events(log, child, req.referral_id)
                   if isinstance(e, ReferralOverdue | ReferralEscalated)]
        assert sorted((type(e).__name__, e.from_sector, e.to_sector) for e in notices) == [
            ("ReferralEscalated", Sector.SOCIAL, Sector.SOCIAL), ("ReferralOverdue", Sector.HEALTH, Sector.HEALTH)]
    finally:
        await app.stop()
    # Its user can state nothing else: a cross-sector subject is refused by the server.
    errors: list[Exception] = []
    deadlines = await connect_as(secured_server, "deadlines", errors)
    with pytest.raises((NatsTimeout, NoRespondersError, asyncio.TimeoutError)):
        await deadlines.jetstream().publish(subjects.event_subject(child, Sector.SOCIAL, Sector.HEALTH), b"{}",
                                            timeout=1.0)
    await asyncio.sleep(0.2)
    assert any("permissions violation for publish" in str(e).lower() for e in errors), errors
    await deadlines.close()
    await admin.close()
