"""Follow-up deadlines: the rules of referral.overdue / referral.escalated, the fold, the table, and
the deadline tracker on the in-memory store under a controllable clock."""

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from refbus.contracts.events import (
    ReferralAccepted,
    ReferralCompleted,
    ReferralEscalated,
    ReferralOverdue,
    ReferralReceived,
)
from refbus.contracts.vocabulary import Deadline, Outcome, Sector, Urgency
from refbus.services.deadlines.tracker import DeadlineTracker, notices
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.rules.audit import Auditor
from refbus.services.rules.deadlines import DEFAULT_TABLE, DeadlineTable, passed
from refbus.services.rules.lifecycle import IllegalEvent, check
from refbus.services.rules.state import fold
from refbus.services.runtime import metrics
from tests.factories import answer, envelope, new_child, record, request

KEY = secrets.token_bytes(32)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def at(event, when: datetime):
    import msgspec

    return msgspec.structs.replace(event, occurred_at=when)


def notice(kind, req, deadline: Deadline, due_at: datetime, occurred_at: datetime, to: Sector | None = None):
    party = req.to_sector if kind is ReferralOverdue else req.from_sector
    fields = envelope(req.child, party, to or party, req.correlation_id)
    fields["occurred_at"] = occurred_at
    return kind(**fields, referral_id=req.referral_id, deadline=deadline, due_at=due_at)


# -- the rules ----------------------------------------------------------------------------------------


def test_a_reminder_is_legal_once_per_deadline_and_only_once_it_passed() -> None:
    req = at(request(new_child()), T0)
    due = T0 + timedelta(minutes=15)
    state = fold(req.child, [(1, req)])
    with pytest.raises(IllegalEvent, match="has not passed"):
        check(state, notice(ReferralOverdue, req, Deadline.RECEIVED, due, T0 + timedelta(minutes=10)))
    first = notice(ReferralOverdue, req, Deadline.RECEIVED, due, T0 + timedelta(minutes=16))
    check(state, first)
    state = fold(req.child, [(1, req), (2, first)])
    assert state.referrals[req.referral_id].reminded == {Deadline.RECEIVED: due}
    # A second reminder for the same deadline is refused by state, whatever its id.
    with pytest.raises(IllegalEvent, match="already stated"):
        check(state, notice(ReferralOverdue, req, Deadline.RECEIVED, due, T0 + timedelta(minutes=17)))
    # The escalation of that deadline is a separate notice, still owed.
    check(state, notice(ReferralEscalated, req, Deadline.RECEIVED, due, T0 + timedelta(minutes=17)))


def test_notices_are_notes_of_a_sector_to_itself_reminder_receiver_escalation_referrer() -> None:
    req = at(request(new_child()), T0)  # social -> health
    state = fold(req.child, [(1, req)])
    late = T0 + timedelta(hours=1)
    due = T0 + timedelta(minutes=15)
    with pytest.raises(IllegalEvent, match="stated by health to itself"):
        check(state, notice(ReferralOverdue, req, Deadline.RECEIVED, due, late, to=Sector.SOCIAL))
    with pytest.raises(IllegalEvent, match="stated by social to itself"):
        check(state, notice(ReferralEscalated, req, Deadline.RECEIVED, due, late, to=Sector.HEALTH))
    import msgspec

    forged = msgspec.structs.replace(notice(ReferralOverdue, req, Deadline.RECEIVED, due, late),
                                     from_sector=Sector.SOCIAL)
    with pytest.raises(IllegalEvent, match="stated by health to itself"):
        check(state, forged)
    check(state, notice(ReferralOverdue, req, Deadline.RECEIVED, due, late))
    check(state, notice(ReferralEscalated, req, Deadline.RECEIVED, due, late))


def test_a_met_deadline_or_a_closed_referral_takes_no_notice() -> None:
    req = at(request(new_child()), T0)
    received = at(answer(ReferralReceived, req), T0 + timedelta(minutes=1))
    state = fold(req.child, [(1, req), (2, received)])
    late = T0 + timedelta(days=3)
    with pytest.raises(IllegalEvent, match="not pending"):
        check(state, notice(ReferralOverdue, req, Deadline.RECEIVED, T0 + timedelta(minutes=15), late))
    check(state, notice(ReferralOverdue, req, Deadline.DECIDED, T0 + timedelta(hours=48), late))
    done = [at(answer(ReferralAccepted, req), T0 + timedelta(hours=1)),
            at(answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED), T0 + timedelta(hours=2))]
    state = fold(req.child, [(1, req), (2, received), (3, done[0]), (4, done[1])])
    with pytest.raises(IllegalEvent, match="not pending"):
        check(state, notice(ReferralOverdue, req, Deadline.COMPLETED, T0 + timedelta(days=30), T0 + timedelta(days=31)))


def test_respond_by_is_the_requests_own() -> None:
    respond_by = T0 + timedelta(hours=4)
    req = at(request(new_child(), respond_by=respond_by), T0)
    state = fold(req.child, [(1, req)])
    late = T0 + timedelta(hours=5)
    with pytest.raises(IllegalEvent, match="not the request's respond_by"):
        check(state, notice(ReferralOverdue, req, Deadline.RESPOND_BY, respond_by - timedelta(hours=1), late))
    check(state, notice(ReferralOverdue, req, Deadline.RESPOND_BY, respond_by, late))


def test_a_notice_changes_no_status_nor_the_referrals_steps() -> None:
    req = at(request(new_child()), T0)
    reminder = notice(ReferralOverdue, req, Deadline.RECEIVED, T0 + timedelta(minutes=15), T0 + timedelta(hours=1))
    referral = fold(req.child, [(1, req), (2, reminder)]).referrals[req.referral_id]
    assert referral.status.value == "requested" and referral.updated_at == T0
    assert referral.steps == {"referral.requested": 1}


# -- the table --------------------------------------------------------------------------------------


def test_the_table_is_per_urgency_with_sector_overrides_from_json() -> None:
    table = DeadlineTable.from_json('{"emergency": {"decided": 600}, "justice/routine": {"completed": 86400}}')
    assert table.allowance(Sector.HEALTH, Urgency.EMERGENCY, Deadline.DECIDED) == timedelta(minutes=10)
    assert table.allowance(Sector.HEALTH, Urgency.EMERGENCY, Deadline.RECEIVED) == timedelta(minutes=5)
    assert table.allowance(Sector.JUSTICE, Urgency.ROUTINE, Deadline.COMPLETED) == timedelta(days=1)
    assert table.allowance(Sector.HEALTH, Urgency.ROUTINE, Deadline.COMPLETED) == timedelta(days=30)
    assert DEFAULT_TABLE.allowance(Sector.SOCIAL, Urgency.ROUTINE, Deadline.DECIDED) == timedelta(hours=48)


# -- the tracker --------------------------------------------------------------------------------------


async def feed(tracker: DeadlineTracker, store: InMemoryEventStore) -> None:
    async for stored in store.replay(tracker.position + 1):
        tracker.see(stored)


async def test_an_overdue_referral_is_reminded_and_escalated_once_per_deadline() -> None:
    store, clock = InMemoryEventStore(), Clock(T0)
    req = at(request(new_child(), urgency=Urgency.EMERGENCY), T0)
    await record(store, req)
    tracker = DeadlineTracker(store, KEY, clock=clock)
    await feed(tracker, store)
    clock.advance(minutes=4)
    assert await tracker.fire_due() == 0
    clock.advance(minutes=2)  # received (5 min) passed
    overdue_before = metrics.OVERDUE.labels("health")._value.get()
    assert await tracker.fire_due() == 2
    assert metrics.OVERDUE.labels("health")._value.get() == overdue_before + 1  # refbus_overdue_total
    await feed(tracker, store)
    assert await tracker.fire_due() == 0
    overdue = [s.event for s in store.log if isinstance(s.event, ReferralOverdue)]
    escalated = [s.event for s in store.log if isinstance(s.event, ReferralEscalated)]
    assert [(e.deadline, e.from_sector, e.to_sector) for e in overdue] == [(Deadline.RECEIVED, Sector.HEALTH,
                                                                           Sector.HEALTH)]
    assert [(e.deadline, e.from_sector, e.to_sector) for e in escalated] == [(Deadline.RECEIVED, Sector.SOCIAL,
                                                                             Sector.SOCIAL)]
    # Receipt comes, then the decision deadline (2 h) passes as well: its own pair of notices.
    await record(store, at(answer(ReferralReceived, req), clock()))
    await feed(tracker, store)
    clock.advance(hours=3)
    assert await tracker.fire_due() == 2
    await feed(tracker, store)
    kinds = sorted(s.event.deadline for s in store.log if isinstance(s.event, ReferralOverdue | ReferralEscalated))
    assert kinds == [Deadline.DECIDED, Deadline.DECIDED, Deadline.RECEIVED, Deadline.RECEIVED]


async def test_a_rebuilt_tracker_fires_what_was_missed_and_nothing_twice() -> None:
    store, clock = InMemoryEventStore(), Clock(T0)
    reqs = [at(request(new_child()), T0) for _ in range(3)]
    for req in reqs:
        await record(store, req)
    first = DeadlineTracker(store, KEY, clock=clock)
    await feed(first, store)
    clock.advance(minutes=20)
    await first.fire_due()  # received, for all three: 6 events
    await record(store, at(answer(ReferralReceived, reqs[0]), clock()))
    await record(store, at(answer(ReferralAccepted, reqs[0]), clock()))
    # "Restart": a new tracker replays the log; the decision deadline passes while nobody runs.
    clock.advance(days=3)
    second = DeadlineTracker(store, KEY, clock=clock)
    await feed(second, store)
    assert await second.fire_due() == 4  # decided, for the two never accepted
    await feed(second, store)
    assert await second.fire_due() == 0
    # And a third, concurrently with a stale one: state and derived ids keep it to once.
    third = DeadlineTracker(store, KEY, clock=clock)
    await feed(third, store)
    assert await third.fire_due() == 0 and await first.fire_due() == 0
    ids = [s.event.event_id for s in store.log]
    assert len(ids) == len(set(ids)) == 3 + 6 + 2 + 4


async def test_check_and_the_tracker_agree_on_what_is_overdue() -> None:
    store, clock = InMemoryEventStore(), Clock(T0)
    table = DeadlineTable.from_json('{"routine": {"decided": 3600}}')
    reqs = [at(request(new_child(), urgency=u, respond_by=rb), T0)
            for u in Urgency for rb in (None, T0 + timedelta(minutes=30))]
    for i, req in enumerate(reqs):
        await record(store, req)
        if i % 2:
            await record(store, at(answer(ReferralReceived, req), T0 + timedelta(minutes=1)))
    tracker = DeadlineTracker(store, KEY, table=table, clock=clock)
    for minutes in (3, 7, 12, 40, 90, 60 * 30, 60 * 24 * 40):
        clock.now = T0 + timedelta(minutes=minutes)
        await feed(tracker, store)
        await tracker.fire_due()
        await feed(tracker, store)
        auditor = Auditor(clock(), table)
        async for stored in store.replay():
            auditor.see(stored.seq, stored.event, stored.error)
        auditor.finish()
        noticed = {(s.event.referral_id, s.event.deadline.value) for s in store.log
                   if isinstance(s.event, ReferralOverdue)}
        escalated = {(s.event.referral_id, s.event.deadline.value) for s in store.log
                     if isinstance(s.event, ReferralEscalated)}
        assert auditor.stuck() == noticed == escalated, minutes


def test_notices_for_an_unknown_deadline_set_are_empty() -> None:
    req = at(request(new_child()), T0)
    referral = fold(req.child, [(1, req)]).referrals[req.referral_id]
    assert notices(KEY, req.child, referral, T0, DEFAULT_TABLE) == []
    assert passed(referral, DEFAULT_TABLE, T0 + timedelta(minutes=16)) == [
        (Deadline.RECEIVED, T0 + timedelta(minutes=15))
    ]
    assert uuid.UUID(str(req.referral_id))


async def test_the_heap_forgets_closed_referrals_and_still_fires_the_open_ones() -> None:
    store, clock = InMemoryEventStore(), Clock(T0)
    tracker = DeadlineTracker(store, KEY, clock=clock)
    reqs = [at(request(new_child()), T0) for _ in range(600)]
    for req in reqs:
        await record(store, req)
    for req in reqs[1:]:  # all but the first are done at once
        for kind, extra in ((ReferralReceived, {}), (ReferralAccepted, {}),
                            (ReferralCompleted, {"outcome": Outcome.SERVICE_DELIVERED})):
            await record(store, at(answer(kind, req, **extra), T0 + timedelta(minutes=1)))
    await feed(tracker, store)
    assert tracker.pending == 3 * 600 and tracker.open_referrals == 1
    tracker.compact()
    assert tracker.pending == 3
    clock.advance(minutes=20)
    assert await tracker.fire_due() == 2
