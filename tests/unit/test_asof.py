"""State as of a moment, by stored time and by occurred time."""

from datetime import UTC, datetime, timedelta

import msgspec

from refbus.contracts.events import ReferralAccepted, ReferralCompleted
from refbus.contracts.vocabulary import Outcome, Status
from refbus.services.audit.asof import state_as_of
from refbus.services.eventstore.records import StoredEvent
from tests.factories import answer, new_child, request

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _history(occurred_shift: timedelta = timedelta(0)) -> tuple[list[StoredEvent], object]:
    child = new_child()
    req = request(child)
    events = [req, answer(ReferralAccepted, req), answer(ReferralCompleted, req, outcome=Outcome.SERVICE_DELIVERED)]
    stored_at = [T - timedelta(days=2), T - timedelta(hours=1), T + timedelta(hours=1)]
    history = [
        StoredEvent(seq, when, msgspec.structs.replace(event, occurred_at=when + occurred_shift))
        for seq, (event, when) in enumerate(zip(events, stored_at, strict=True), 1)
    ]
    return history, req.referral_id


def test_accepted_before_and_completed_after_shows_accepted() -> None:
    history, rid = _history()
    assert state_as_of(history, T).referrals[rid].status is Status.ACCEPTED
    assert state_as_of(history, T + timedelta(hours=2)).referrals[rid].status is Status.COMPLETED
    assert state_as_of(history, T - timedelta(days=3)).referrals == {}


def test_occurred_time_is_the_sectors_own() -> None:
    # Each event recorded by its sector two hours before the log stored it (an offline client).
    history, rid = _history(occurred_shift=-timedelta(hours=2))
    assert state_as_of(history, T, by="stored").referrals[rid].status is Status.ACCEPTED
    assert state_as_of(history, T, by="occurred").referrals[rid].status is Status.COMPLETED
