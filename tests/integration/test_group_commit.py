"""Bulk writes on a real server: through group commit's atomic batches, every guarantee of a single append."""

import pytest

from refbus.community import community
from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralReceived
from refbus.contracts.vocabulary import Outcome, Sector
from refbus.services.eventstore.bulk import BulkWriter
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from tests.factories import answer, new_child, record, request

pytestmark = pytest.mark.integration


async def test_a_community_is_stored_in_order_and_once(own_log: JetStreamEventStore) -> None:
    cases = list(community(60, seed=11))
    events = [e for case in cases for e in case.events]
    report = await BulkWriter(own_log).write(events)
    assert report.stored == len(events) and report.refused == []
    for case in cases[:10]:
        assert [h.event for h in await own_log.history(case.child)] == list(case.events)

    again = await BulkWriter(own_log).write(events)  # a resumed import, with a cold cache
    assert again.stored == 0 and again.duplicates == len(events)


async def test_a_stale_cache_is_caught_by_the_server_and_decided_again(own_log: JetStreamEventStore) -> None:
    child = new_child()
    req = request(child)
    writer = BulkWriter(own_log)
    await writer.write([req])
    receipt = answer(ReferralReceived, req)
    await record(own_log, receipt)  # another writer: the writer's cached last sequence is now stale
    accepted = answer(ReferralAccepted, req)  # legal on either state: only the server can catch it
    report = await writer.write([accepted])
    assert report.stored == 1 and report.refused == []
    assert [h.event for h in await own_log.history(child)] == [req, receipt, accepted]


async def test_a_refusal_on_a_stale_cache_is_checked_against_the_log(own_log: JetStreamEventStore) -> None:
    child = new_child()
    req = request(child)
    writer = BulkWriter(own_log)
    await writer.write([req])
    await record(own_log, answer(ReferralAccepted, req))  # the cache still says "requested"
    completed = answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)
    report = await writer.write([completed])
    assert report.stored == 1 and report.refused == []


async def test_illegal_events_are_refused_and_the_rest_of_the_batch_is_stored(own_log: JetStreamEventStore) -> None:
    good, bad = request(new_child()), request(new_child(), Sector.HEALTH, Sector.HEALTH)
    never_requested = answer(ReferralAccepted, request(new_child()))
    report = await BulkWriter(own_log).write([good, bad, never_requested])
    assert report.stored == 1
    assert sorted(r.event.event_id for r in report.refused) == sorted([bad.event_id, never_requested.event_id])
    assert await own_log.history(bad.child) == []


async def test_an_event_stored_by_someone_else_is_not_stored_twice(own_log: JetStreamEventStore) -> None:
    child = new_child()
    req = request(child)
    writer = BulkWriter(own_log)
    await writer.write([request(child)])  # the writer now caches the child
    await record(own_log, req)  # stored behind its back
    report = await writer.write([req])
    assert report.stored == 0 and report.duplicates == 1
    ids = [h.event.event_id for h in await own_log.history(child) if h.event]
    assert ids.count(req.event_id) == 1


async def test_an_event_id_used_by_two_children_is_refused_not_retried_forever(own_log: JetStreamEventStore) -> None:
    first = request(new_child())
    clash = request(new_child())
    clash = type(clash)(**{**{f: getattr(clash, f) for f in clash.__struct_fields__}, "event_id": first.event_id})
    report = await BulkWriter(own_log).write([first, clash])
    assert report.stored == 1
    # The two children are written concurrently: whichever reaches the log first keeps the id.
    assert len(report.refused) == 1 and "already used by another message" in report.refused[0].reason
    loser = report.refused[0].event
    assert loser in (first, clash) and await own_log.history(loser.child) == []
