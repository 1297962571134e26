"""Deadlines that act, on a real server: an overdue referral is reminded (in the receiver's inbox)
and escalated (in the referrer's) under a test clock, and after every process is restarted (the
server, the sector services, the deadline service) the deadlines that passed meanwhile are fired
once, the ones already fired never again."""

import asyncio
from datetime import UTC, datetime, timedelta

import nats

from refbus.contracts import subjects
from refbus.contracts.events import ReferralEscalated, ReferralOverdue, ReferralReceived
from refbus.contracts.vocabulary import Deadline, Sector
from refbus.services.deadlines.main import create_app as deadlines_app
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.rules.audit import Auditor
from refbus.services.rules.deadlines import DeadlineTable
from refbus.services.runtime.embedded import EmbeddedNats
from refbus.services.runtime.settings import Settings
from tests.factories import new_child, record, request
from tests.services import TEST_EVENT_ID_KEY, ScriptedPolicy, running, wait_for

TABLE = DeadlineTable.from_json('{"routine": {"received": 600, "decided": 3600, "completed": 86400}}')
SILENT = {Sector.SOCIAL: ScriptedPolicy([]), Sector.HEALTH: ScriptedPolicy([])}
"Both sectors only acknowledge receipt: the referrals wait for a decision that never comes."


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def notices(log: JetStreamEventStore) -> list[tuple[str, object, Deadline]]:
    found = []
    async for stored in log.replay():
        if isinstance(stored.event, ReferralOverdue | ReferralEscalated):
            found.append((type(stored.event).__name__, stored.event.referral_id, stored.event.deadline))
    return found


async def inbox_done(nc: nats.NATS, sector: Sector) -> bool:
    info = await nc.jetstream().consumer_info(subjects.STREAM, f"inbox-{sector.value}")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_overdue_referrals_are_reminded_and_escalated_once_across_a_restart_of_everything(
    own_server: EmbeddedNats,
) -> None:
    clock = Clock()
    settings = Settings(nats_url=own_server.url, event_id_key_hex=TEST_EVENT_ID_KEY.hex())
    nc = await nats.connect(own_server.url)
    await streams.provision(nc.jetstream())
    log = JetStreamEventStore(nc, timeout=2.0)
    children = [new_child() for _ in range(3)]
    requests = [request(c) for c in children]
    async with running(own_server.url, SILENT, ack_wait=2.0):
        deadlines = deadlines_app(settings, clock=clock, table=TABLE, tick=3600)
        await deadlines.start()
        service = deadlines.services[0]  # type: ignore[attr-defined]
        for req in requests:
            await record(log, req)

        async def received() -> bool:
            for c in children:
                if not any(isinstance(h.event, ReferralReceived) for h in await log.history(c)):
                    return False
            return True

        await wait_for(received)
        assert await service.step() == 0  # nothing due yet by the test clock
        clock.now += timedelta(hours=2)  # decided (1 h) passed; received was met
        assert await service.step() == 6
        assert await service.step() == 0
        # Both sector systems are told: the reminders went to health's inbox, the escalations to
        # social's, and both services took them (nothing set aside, nothing pending).
        await wait_for(lambda: inbox_done(nc, Sector.HEALTH))
        await wait_for(lambda: inbox_done(nc, Sector.SOCIAL))
        dead = await nc.jetstream().stream_info(subjects.DEAD_LETTER_STREAM)
        assert dead.state.messages == 0
        await deadlines.stop()
    await nc.close()

    # Every process goes: the server too. The completed deadline (1 day) passes while all are down.
    own_server.stop()
    clock.now += timedelta(days=2)
    await asyncio.to_thread(own_server.start)

    nc = await nats.connect(own_server.url)
    log = JetStreamEventStore(nc, timeout=2.0)
    async with running(own_server.url, SILENT, ack_wait=2.0):
        deadlines = deadlines_app(settings, clock=clock, table=TABLE, tick=3600)
        await deadlines.start()
        service = deadlines.services[0]  # type: ignore[attr-defined]
        await service.ready.wait()
        assert service.tracker.open_referrals == 3
        assert await service.step() in (0, 6)  # the app's own first pass may have fired them already
        assert await service.step() == 0
        found = await notices(log)
        expected = {
            (kind, req.referral_id, deadline)
            for req in requests
            for kind in ("ReferralOverdue", "ReferralEscalated")
            for deadline in (Deadline.DECIDED, Deadline.COMPLETED)
        }
        assert sorted(found, key=str) == sorted(expected, key=str)  # each once: none twice, none missed
        # `refbus check` calls exactly these referrals stuck, for exactly these deadlines.
        auditor = Auditor(clock(), TABLE)
        async for stored in log.replay():
            auditor.see(stored.seq, stored.event, stored.error)
        auditor.finish()
        assert auditor.stuck() == {(rid, d.value) for _, rid, d in found}
        await wait_for(lambda: inbox_done(nc, Sector.HEALTH))
        await wait_for(lambda: inbox_done(nc, Sector.SOCIAL))
        await deadlines.stop()
    await nc.close()
