"""Group commit on a real server: atomic batches keep every guarantee of a single append."""

import pytest

from refbus.community import community
from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralReceived
from refbus.contracts.vocabulary import Outcome, Sector
from refbus.services.core.eventlog import EventLog
from refbus.services.core.group_commit import GroupCommitWriter
from tests.factories import answer, new_child, request

pytestmark = pytest.mark.integration


async def test_a_community_is_stored_in_order_and_once(own_log: EventLog) -> None:
    cases = list(community(60, seed=11))
    events = [e for case in cases for e in case.events]
    writer = GroupCommitWriter(own_log, batch_size=100)
    report = await writer.write(events)
    assert report.stored == len(events) and report.refused == [] and report.batches >= len(events) // 100
    for case in cases[:10]:
        assert [h.event for h in await own_log.history(case.child)] == list(case.events)

    again = await GroupCommitWriter(own_log).write(events)  # a resumed import, with a cold cache
    assert again.stored == 0 and again.duplicates == len(events)


async def test_a_stale_cache_is_caught_by_the_server_and_decided_again(own_log: EventLog) -> None:
    child = new_child()
    req = request(child)
    writer = GroupCommitWriter(own_log)
    await writer.write([req])
    receipt = answer(ReferralReceived, req)
    await own_log.record(receipt)  # another writer: the writer's cached last sequence is now stale
    accepted = answer(ReferralAccepted, req)  # legal on either state: only the server can catch it
    report = await writer.write([accepted])
    assert report.stored == 1 and report.retried_batches == 1
    assert [h.event for h in await own_log.history(child)] == [req, receipt, accepted]


async def test_a_refusal_on_a_stale_cache_is_checked_against_the_log(own_log: EventLog) -> None:
    child = new_child()
    req = request(child)
    writer = GroupCommitWriter(own_log)
    await writer.write([req])
    await own_log.record(answer(ReferralAccepted, req))  # the cache still says "requested"
    completed = answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)
    report = await writer.write([completed])
    assert report.stored == 1 and report.refused == []


async def test_illegal_events_are_refused_and_the_rest_of_the_batch_is_stored(own_log: EventLog) -> None:
    good, bad = request(new_child()), request(new_child(), Sector.HEALTH, Sector.HEALTH)
    never_requested = answer(ReferralAccepted, request(new_child()))
    report = await GroupCommitWriter(own_log).write([good, bad, never_requested])
    assert report.stored == 1
    assert sorted(r.event.event_id for r in report.refused) == sorted([bad.event_id, never_requested.event_id])
    assert await own_log.history(bad.child) == []


async def test_an_event_stored_by_someone_else_is_not_stored_twice(own_log: EventLog) -> None:
    child = new_child()
    req = request(child)
    writer = GroupCommitWriter(own_log)
    await writer.write([request(child)])  # the writer now caches the child
    await own_log.record(req)  # stored behind its back
    report = await writer.write([req])
    assert report.stored == 0 and report.duplicates == 1
    ids = [h.event.event_id for h in await own_log.history(child) if h.event]
    assert ids.count(req.event_id) == 1


async def test_an_event_id_used_by_two_children_is_refused_not_retried_forever(own_log: EventLog) -> None:
    first = request(new_child())
    clash = request(new_child())
    clash = type(clash)(**{**{f: getattr(clash, f) for f in clash.__struct_fields__}, "event_id": first.event_id})
    report = await GroupCommitWriter(own_log).write([first, clash])
    assert report.stored == 1
    assert [r.reason for r in report.refused] == ["event id already used by another event"]
