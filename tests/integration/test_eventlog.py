"""The event log against a real nats-server with JetStream on disk."""

import asyncio

import pytest

from refbus.contracts.events import (
    ReferralAccepted,
    ReferralCancelled,
    ReferralCompleted,
    ReferralInProgress,
    ReferralReceived,
    ReferralRejected,
)
from refbus.contracts.vocabulary import CancelReason, Outcome, RejectReason, Sector, Status
from refbus.registry import pilot_events
from refbus.services.eventstore import streams
from refbus.services.eventstore.bulk import BulkWriter
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.records import ConcurrencyConflict
from refbus.services.eventstore.replay import replay
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import answer, new_child, record, request

pytestmark = pytest.mark.integration


async def test_history_rebuilt_from_the_log_equals_what_happened(eventlog: JetStreamEventStore, child: str) -> None:
    req = request(child)
    happened = [
        req,
        answer(ReferralReceived, req),
        answer(ReferralAccepted, req),
        answer(ReferralInProgress, req),
        answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED),
    ]
    seqs = [await record(eventlog, e) for e in happened]
    assert all(s is not None for s in seqs) and seqs == sorted(seqs)

    history = await eventlog.history(child, min_seq=seqs[-1])
    assert [h.event for h in history] == happened
    assert [h.seq for h in history] == seqs
    state = await eventlog.load(child)
    assert state.referrals[req.referral_id].status is Status.COMPLETED
    assert state.last_seq == seqs[-1]


async def test_a_childs_events_are_counted_across_its_subjects_and_no_one_elses(
    eventlog: JetStreamEventStore, child: str
) -> None:
    """What a read waits for: every event of the child, whichever sectors it went between."""
    assert await eventlog.reader.event_count(child) == 0
    to_health = request(child, to=Sector.HEALTH)
    to_justice = request(child, to=Sector.JUSTICE, service="birth_registration")
    for event in (to_health, answer(ReferralReceived, to_health), to_justice):
        await record(eventlog, event)
    await record(eventlog, request(new_child()))  # another child's, on a subject beside them
    assert await eventlog.reader.event_count(child) == 3
    assert len(await eventlog.history(child)) == 3


async def test_history_as_of_a_sequence_is_the_past(eventlog: JetStreamEventStore, child: str) -> None:
    req = request(child)
    first = await record(eventlog, req)
    await record(eventlog, answer(ReferralAccepted, req))
    past = await eventlog.history(child, upto_seq=first)
    assert [h.event for h in past] == [req]


async def test_the_same_event_twice_is_stored_once(eventlog: JetStreamEventStore, child: str) -> None:
    req = request(child)
    first = await record(eventlog, req)
    again = await record(eventlog, req)
    assert first is not None and again is None
    # A raw retry with the same expected sequence (a lost ack) is refused, not stored twice.
    with pytest.raises(ConcurrencyConflict):
        await eventlog.append(req.child, 0, [req])
    history = await eventlog.history(child, min_seq=first)
    assert [h.event.event_id for h in history if h.event] == [req.event_id]


async def test_a_stale_writer_gets_a_typed_conflict(eventlog: JetStreamEventStore, child: str) -> None:
    req = request(child)
    [seq] = await eventlog.append(req.child, 0, [req])
    with pytest.raises(ConcurrencyConflict) as caught:
        await eventlog.append(child, 0, [answer(ReferralAccepted, req)])
    assert caught.value.actual == seq


async def test_racing_decisions_on_one_referral_exactly_one_wins(eventlog: JetStreamEventStore, child: str) -> None:
    """Two workers of the receiving sector decide at once, accept against reject: one is stored."""
    for _round in range(5):
        req = request(child)
        await record(eventlog, req)
        accept = answer(ReferralAccepted, req)
        reject = answer(ReferralRejected, req, reason=RejectReason.NO_CAPACITY)
        results = await asyncio.gather(record(eventlog, accept), record(eventlog, reject), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["IllegalEvent", "int"], results
        stored = {h.event.event_id for h in await eventlog.history(child) if h.event}
        assert len(stored & {accept.event_id, reject.event_id}) == 1


async def test_two_sectors_racing_to_decide_the_same_referral_exactly_one_wins(
    eventlog: JetStreamEventStore, child: str
) -> None:
    """The receiver (health) rejects while the referrer (social) cancels: each excludes the other."""
    for _round in range(5):
        req = request(child)
        await record(eventlog, req)
        reject = answer(ReferralRejected, req, reason=RejectReason.NOT_ELIGIBLE)
        cancel = answer(ReferralCancelled, req, by=Sector.SOCIAL, reason=CancelReason.NO_LONGER_NEEDED)
        results = await asyncio.gather(record(eventlog, reject), record(eventlog, cancel), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["IllegalEvent", "int"], results
        status = (await eventlog.load(child)).referrals[req.referral_id].status
        assert status is (Status.REJECTED if isinstance(results[0], int) else Status.CANCELLED)


async def test_referrer_cancelling_while_receiver_accepts_ends_cancelled(
    eventlog: JetStreamEventStore, child: str
) -> None:
    """Either order is legal (accept then cancel, or cancel then a refused accept): both end cancelled."""
    req = request(child)
    await record(eventlog, req)
    accept = answer(ReferralAccepted, req)
    cancel = answer(ReferralCancelled, req, by=Sector.SOCIAL, reason=CancelReason.NO_LONGER_NEEDED)
    results = await asyncio.gather(record(eventlog, accept), record(eventlog, cancel), return_exceptions=True)
    assert isinstance(results[1], int), results
    assert isinstance(results[0], int | IllegalEvent), results
    state = await eventlog.load(child)
    assert state.referrals[req.referral_id].status is Status.CANCELLED


@pytest.mark.parametrize(
    ("steps", "illegal"),
    [
        ([ReferralCancelled], ReferralAccepted),  # accepting a cancelled referral
        ([ReferralAccepted], ReferralAccepted),  # a second acceptance
        ([], ReferralCompleted),  # completing what was never accepted
    ],
)
async def test_illegal_transitions_are_refused_and_never_stored(
    eventlog: JetStreamEventStore, child: str, steps: list[type], illegal: type
) -> None:
    req = request(child)
    await record(eventlog, req)
    for kind in steps:
        extra = {"reason": CancelReason.CHILD_MOVED} if kind is ReferralCancelled else {}
        await record(eventlog, answer(kind, req, by=Sector.SOCIAL if extra else None, **extra))
    before = await eventlog.history(child)
    fields = {"outcome": Outcome.SERVICE_DELIVERED} if illegal is ReferralCompleted else {}
    with pytest.raises(IllegalEvent):
        await record(eventlog, answer(illegal, req, **fields))
    assert await eventlog.history(child) == before


async def test_concurrent_appends_are_group_committed_and_each_stored_once(eventlog: JetStreamEventStore) -> None:
    """Appends made while a publish is in flight go out together as one atomic batch; a stale one
    in the batch makes the whole batch refused, and every transact retries on its own."""
    requests = [request(new_child()) for _ in range(200)]
    stale = request(requests[0].child)  # same child as the first: must wait for the next batch
    results = await asyncio.gather(*(record(eventlog, r) for r in [*requests, stale]))
    assert all(isinstance(seq, int) for seq in results)
    assert len(set(results)) == len(results)
    for req in requests[:20]:
        assert next(h.event for h in await eventlog.history(req.child) if h.event is not None) == req
    with pytest.raises(ConcurrencyConflict):
        await eventlog.append(requests[1].child, 0, [request(requests[1].child)])


async def test_a_child_is_read_from_the_log_itself_while_the_index_is_behind(own_log: JetStreamEventStore) -> None:
    from refbus.contracts import subjects
    from refbus.services.eventstore import streams

    child = new_child()
    req = request(child)
    first = await record(own_log, req)
    # The index stops copying (as it does for a while after a leader fails over).
    stalled = streams.child_index_config()
    stalled.sources = []
    await own_log.js.update_stream(stalled)
    accepted = answer(ReferralAccepted, req)
    later = await record(own_log, accepted)
    assert first is not None and later is not None
    history = await own_log.history(child)
    assert [(h.seq, h.event) for h in history] == [(first, req), (later, accepted)]
    info = await own_log.js.stream_info(subjects.CHILD_INDEX_STREAM)
    assert info.state.messages < len(history), "the index really was behind"


async def test_a_replay_slower_than_the_log_loses_nothing(own_server: EmbeddedNats) -> None:
    """A reader slower than the log makes nats-py drop messages it has counted as delivered; the
    replay notices the jump in sequence and reads again from the first missing event."""
    nc = await connect(own_server.url)
    await streams.provision(nc.jetstream())
    eventlog = JetStreamEventStore(nc)
    events = pilot_events(children=100, total=6000, seed=12)
    report = await BulkWriter(eventlog).write(events)
    assert report.stored == len(events)
    seen = []
    async for stored in replay(eventlog.reader, chunk=100, client_buffer=300):
        seen.append(stored.seq)
        if len(seen) % 100 == 0:
            await asyncio.sleep(0.01)  # slower than the server delivers
    assert seen == list(range(1, len(events) + 1))
    await nc.close()


async def test_a_store_that_kept_a_child_sees_what_another_writer_added(provisioned: str) -> None:
    """The kept state (docs/decisions/0014-recent-children.md) never hides a write: a fresh load
    counts the child's events on the leader and reads again when another process added one."""
    child = new_child()
    first_nc, second_nc = await connect(provisioned, "keeper"), await connect(provisioned, "other")
    try:
        keeper, other = JetStreamEventStore(first_nc), JetStreamEventStore(second_nc)
        req = request(child)
        await keeper.transact(child, lambda _s: [req])
        await other.transact(child, lambda _s: [answer(ReferralAccepted, req)])
        state = await keeper.load(child)
        assert state.referrals[req.referral_id].status is Status.ACCEPTED and state.events_folded == 2
        # A decision on the kept (stale) state would conflict; transact reads again and decides right.
        done = await keeper.transact(child, lambda s: [answer(ReferralInProgress, req)]
                                     if s.referrals[req.referral_id].status is Status.ACCEPTED else [])
        assert len(done.stored) == 1
    finally:
        await first_nc.close()
        await second_nc.close()
