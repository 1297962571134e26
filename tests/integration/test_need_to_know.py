"""Need-to-know reads, as each identity, on the secured server: a sector reads a child only through
the read service, whole what it is party to or what the child's consent shares with it, a stand-in
for the rest; no sector, system or operator reads the log, the index or the pages directly, and no
sector can ask as another (docs/decisions/0023-need-to-know-reads.md)."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from refbus.contracts import codec, reads, subjects
from refbus.contracts.events import CaseOpened, Event, ReferralAccepted
from refbus.contracts.vocabulary import LegalBasis, Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.reads.client import ReadUnavailable, ViewReader
from refbus.services.reads.view import PLACEHOLDER_ACTOR
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import answer, consent, envelope, new_child, record, request
from tests.integration import secured
from tests.services import read_service

NO_ANSWER = (NatsTimeout, NoRespondersError, asyncio.TimeoutError)
DIRECT_READS = {
    subjects.STREAM: {"next_by_subj": "refbus.ev.>", "seq": 1},
    subjects.CHILD_INDEX_STREAM: {"next_by_subj": "refbus.child.>", "seq": 1},
    subjects.PAGES_STREAM: {"next_by_subj": "refbus.page.*", "seq": 1},
}


@pytest.fixture
def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured.secured_server(tmp_path, monkeypatch)


async def _child_of_four_sectors(admin: NATS) -> tuple[str, dict[str, Event]]:
    """A child with a case and a consent that shares with health only, a referral social -> health on
    that consent (accepted), and one justice -> education on the protection duty."""
    child = new_child()
    store = JetStreamEventStore(admin, timeout=2.0)
    to_health = request(child, Sector.SOCIAL, Sector.HEALTH, legal_basis=LegalBasis.GUARDIAN_CONSENT)
    to_education = request(child, Sector.JUSTICE, Sector.EDUCATION, "school_enrolment")
    events: dict[str, Event] = {
        "case": CaseOpened(**envelope(child, Sector.SOCIAL, None), household="h" + "1" * 16),
        "consent": consent(child, (Sector.HEALTH,)),
        "to_health": to_health,
        "accepted": answer(ReferralAccepted, to_health),
        "to_education": to_education,
    }
    for event in events.values():
        assert await record(store, event)
    return child, events


# Which of the child's events each sector reads whole; the others come as stand-ins.
WHOLE = {
    Sector.SOCIAL: {"case", "consent", "to_health", "accepted"},  # it stated the case facts, party to one
    Sector.HEALTH: {"case", "consent", "to_health", "accepted"},  # the consent shares the case with it
    Sector.EDUCATION: {"to_education"},
    Sector.JUSTICE: {"to_education"},
}


async def test_each_sector_reads_only_what_it_needs_to_know(secured_server: EmbeddedNats) -> None:
    admin = await secured.connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    child, events = await _child_of_four_sectors(admin)
    by_id = {event.event_id: name for name, event in events.items()}
    async with read_service(secured_server.url, secured.seed_file(secured_server, "pager")):
        for sector in Sector:
            nc = await secured.connect_as(secured_server, sector.value)
            history = await ViewReader(nc, sector, timeout=2.0).history(child)
            assert [by_id[h.event.event_id] for h in history if h.event] == list(events)  # all, in log order
            for stored in history:
                name = by_id[stored.event.event_id]  # type: ignore[union-attr]
                whole = name in WHOLE[sector]
                assert stored.withheld is not whole, (sector, name)
                assert (stored.event == events[name]) is whole, (sector, name)
                if not whole:
                    assert stored.event.actor == PLACEHOLDER_ACTOR  # type: ignore[union-attr]
                    assert stored.chain  # the chain's link comes along: the sector's next append builds on it
            # Its rules decide on the view as on the whole: the same referrals, statuses and parties.
            state = await secured.sector_store(nc, sector, timeout=2.0).load(child)
            whole_state = await JetStreamEventStore(admin, timeout=2.0).load(child)
            assert {r: (x.referrer, x.receiver, x.status, x.legal_basis) for r, x in state.referrals.items()} == {
                r: (x.referrer, x.receiver, x.status, x.legal_basis) for r, x in whole_state.referrals.items()}
            assert (state.consent, state.open_cases, state.last_seq, state.chain_hash) == (
                whole_state.consent, whole_state.open_cases, whole_state.last_seq, whole_state.chain_hash)
            # Its feed: the events addressed to it, each whole.
            feed = await ViewReader(nc, sector, timeout=2.0).feed(0, 100)
            addressed = [n for n, e in events.items() if e.to_sector is sector]
            assert [by_id[reads_event_id(v)] for v in feed.events] == addressed
            await nc.close()
    await admin.close()


def reads_event_id(viewed: reads.ViewedEvent) -> object:
    return codec.decode(viewed.data).event_id


@pytest.mark.parametrize("user", [*(s.value for s in Sector), *(f"{s.value}-system" for s in Sector), "operator"])
async def test_no_direct_read_of_the_log_index_or_pages(secured_server: EmbeddedNats, user: str) -> None:
    admin = await secured.connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    await _child_of_four_sectors(admin)
    errors: list[Exception] = []
    nc = await secured.connect_as(secured_server, user, errors)
    for stream, request_body in DIRECT_READS.items():
        with pytest.raises(NO_ANSWER):
            await nc.request(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request_body).encode(), timeout=0.5)
    # The admin's same requests are answered: the refusals above are the permissions', not an empty bus.
    for stream, request_body in DIRECT_READS.items():  # (no pager ran: the pages' answer is "not found")
        answer = await admin.request(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request_body).encode(), 2)
        assert answer.data if stream != subjects.PAGES_STREAM else answer.headers["Status"] == "404"  # type: ignore[index]
    await asyncio.sleep(0.2)
    assert sum("permissions violation for publish" in str(e).lower() for e in errors) == len(DIRECT_READS)
    await nc.close()
    await admin.close()


@pytest.mark.parametrize("user", ["social", "health-system", "operator", "deadlines"])
async def test_nobody_asks_the_read_service_as_another_sector(secured_server: EmbeddedNats, user: str) -> None:
    admin = await secured.connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    child, _ = await _child_of_four_sectors(admin)
    errors: list[Exception] = []
    nc = await secured.connect_as(secured_server, user, errors)
    async with read_service(secured_server.url, secured.seed_file(secured_server, "pager")):
        with pytest.raises(ReadUnavailable):  # the server drops the request: no read service ever sees it
            await ViewReader(nc, Sector.HEALTH, timeout=1.0).history(child, fresh=False)
        await asyncio.sleep(0.2)
        assert any("permissions violation for publish" in str(e).lower() for e in errors), errors
        health = await secured.connect_as(secured_server, "health")
        assert await ViewReader(health, Sector.HEALTH, timeout=2.0).history(child, fresh=False)  # health itself may
        await health.close()
    await nc.close()
    await admin.close()
