"""One contract, two stores: what every EventStore promises, run on the in-memory store (fast, no
server) and on JetStream (a real nats-server on disk). The in-memory store is for unit tests of
handlers; this suite keeps it honest."""

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from refbus.contracts.events import ReferralAccepted, ReferralCancelled, ReferralRejected
from refbus.contracts.vocabulary import CancelReason, RejectReason, Sector, Status
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.eventstore.records import ConcurrencyConflict, EventIdTaken
from refbus.services.eventstore.store import EventStore
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.runtime.bus import connect
from tests.factories import answer, new_child, record, request


@pytest_asyncio.fixture(params=["memory", pytest.param("jetstream", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest, provisioned: str) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        yield InMemoryEventStore()
        return
    nc = await connect(provisioned, "contract")
    yield JetStreamEventStore(nc)
    await nc.drain()


async def test_what_is_appended_is_read_back_in_order(store: EventStore) -> None:
    child = new_child()
    req = request(child)
    accepted = answer(ReferralAccepted, req)
    done = await store.transact(child, lambda _state: [req, accepted])
    assert len(done.stored) == 2 and done.stored[0] < done.stored[1]
    assert [h.event for h in await store.history(child)] == [req, accepted]
    assert (await store.load(child)).referrals[req.referral_id].status is Status.ACCEPTED
    assert (await store.children())[child] == 2


async def test_a_retry_stores_nothing_twice(store: EventStore) -> None:
    child = new_child()
    req = request(child)
    first = await store.transact(child, lambda _state: [req])
    again = await store.transact(child, lambda _state: [req])
    assert len(first.stored) == 1 and again.stored == [] and again.duplicates == 1
    assert [h.event for h in await store.history(child)] == [req]


async def test_an_illegal_event_is_refused_and_nothing_of_its_call_is_stored(store: EventStore) -> None:
    child = new_child()
    req = request(child)
    with pytest.raises(IllegalEvent) as refused:
        # The acceptance is legal after the request; the rejection after it is not: all or nothing.
        rejected = answer(ReferralRejected, req, reason=RejectReason.OUT_OF_AREA)
        await store.transact(child, lambda _s: [req, answer(ReferralAccepted, req), rejected])
    assert "accepted" in refused.value.reason
    assert await store.history(child) == []


async def test_a_stale_writer_is_told_and_nothing_is_overwritten(store: EventStore) -> None:
    child = new_child()
    req = request(child)
    [seq] = await store.append(child, 0, [req])
    with pytest.raises(ConcurrencyConflict):
        await store.append(child, 0, [request(child)])
    assert [h.seq for h in await store.history(child)] == [seq]


async def test_racing_decisions_on_one_referral_exactly_one_wins(store: EventStore) -> None:
    child = new_child()
    req = request(child)
    await record(store, req)
    accept = answer(ReferralAccepted, req)
    cancel = answer(ReferralCancelled, req, by=Sector.SOCIAL, reason=CancelReason.NO_LONGER_NEEDED)
    results = await asyncio.gather(record(store, accept), record(store, cancel), return_exceptions=True)
    final = (await store.load(child)).referrals[req.referral_id].status
    assert final is Status.CANCELLED  # accept then cancel, or cancel then a refused accept
    assert sum(isinstance(r, int) for r in results) in (1, 2)


async def test_an_id_held_by_another_message_is_never_taken_for_ours(store: EventStore) -> None:
    first, clash = request(new_child()), request(new_child())
    clash = type(clash)(**{**{f: getattr(clash, f) for f in clash.__struct_fields__}, "event_id": first.event_id})
    await record(store, first)
    with pytest.raises(EventIdTaken):
        await record(store, clash)
    assert await store.history(clash.child) == []


async def test_a_replay_sees_every_event_once_in_log_order(store: EventStore) -> None:
    children = [new_child() for _ in range(3)]
    for child in children:
        await record(store, request(child))
    seen = [s.seq async for s in store.replay()]
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    ours = [s.event.child for s in [s async for s in store.replay()] if s.event and s.event.child in children]
    assert ours == children
