"""The referral lifecycle rules, pure: events in, fold, check the next one. No NATS."""

import pytest

from refbus.contracts.events import (
    ReferralAccepted,
    ReferralCancelled,
    ReferralCompleted,
    ReferralEnteredInError,
    ReferralFailed,
    ReferralInProgress,
    ReferralOnHold,
    ReferralReceived,
    ReferralRejected,
)
from refbus.contracts.vocabulary import (
    CancelReason,
    ErrorReason,
    FailReason,
    HoldReason,
    LegalBasis,
    Outcome,
    RejectReason,
    Sector,
    Status,
)
from refbus.services.rules.lifecycle import IllegalEvent, check, is_duplicate
from refbus.services.rules.state import fold
from tests.factories import answer, consent, new_child, request

FIELDS = {
    ReferralRejected: {"reason": RejectReason.NOT_ELIGIBLE},
    ReferralOnHold: {"reason": HoldReason.WAITING_LIST},
    ReferralCompleted: {"outcome": Outcome.SERVICE_DELIVERED},
    ReferralFailed: {"reason": FailReason.LOST_CONTACT},
    ReferralCancelled: {"reason": CancelReason.NO_LONGER_NEEDED},
    ReferralEnteredInError: {"reason": ErrorReason.WRONG_CHILD},
}
PATHS = {
    Status.REQUESTED: [],
    Status.ACCEPTED: [ReferralAccepted],
    Status.REJECTED: [ReferralRejected],
    Status.IN_PROGRESS: [ReferralAccepted, ReferralInProgress],
    Status.ON_HOLD: [ReferralAccepted, ReferralInProgress, ReferralOnHold],
    Status.COMPLETED: [ReferralAccepted, ReferralInProgress, ReferralCompleted],
    Status.FAILED: [ReferralAccepted, ReferralFailed],
    Status.CANCELLED: [ReferralCancelled],
    Status.ENTERED_IN_ERROR: [ReferralEnteredInError],
}
# FHIR Task transitions (docs/decisions/0009-fhir-lifecycle.md); everything else is illegal.
LEGAL = {
    Status.REQUESTED: {ReferralAccepted, ReferralRejected, ReferralCancelled, ReferralEnteredInError},
    Status.ACCEPTED: {ReferralInProgress, ReferralOnHold, ReferralCompleted, ReferralFailed, ReferralCancelled,
                      ReferralEnteredInError},
    Status.IN_PROGRESS: {ReferralOnHold, ReferralCompleted, ReferralFailed, ReferralCancelled, ReferralEnteredInError},
    Status.ON_HOLD: {ReferralInProgress, ReferralCompleted, ReferralFailed, ReferralCancelled, ReferralEnteredInError},
    Status.REJECTED: {ReferralEnteredInError},
    Status.COMPLETED: {ReferralEnteredInError},
    Status.FAILED: {ReferralEnteredInError},
    Status.CANCELLED: {ReferralEnteredInError},
    Status.ENTERED_IN_ERROR: set(),
}
MOVES = [ReferralAccepted, ReferralRejected, ReferralInProgress, ReferralOnHold, ReferralCompleted, ReferralFailed,
         ReferralCancelled, ReferralEnteredInError]


def referral_at(status: Status):
    child = new_child()
    req = request(child)
    events = [req]
    for kind in PATHS[status]:
        by = Sector.SOCIAL if kind is ReferralCancelled else None
        events.append(answer(kind, req, by=by, **FIELDS.get(kind, {})))
    state = fold(child, enumerate(events, 1))
    assert state.referrals[req.referral_id].status is status
    return state, req


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("move", MOVES, ids=lambda k: k.__name__)
def test_transition_table(status: Status, move: type) -> None:
    state, req = referral_at(status)
    by = Sector.SOCIAL if move is ReferralCancelled else None
    event = answer(move, req, by=by, **FIELDS.get(move, {}))
    if move in LEGAL[status]:
        check(state, event)
    else:
        with pytest.raises(IllegalEvent):
            check(state, event)


def test_only_the_receiver_decides() -> None:
    state, req = referral_at(Status.REQUESTED)
    with pytest.raises(IllegalEvent, match="only the receiving sector"):
        check(state, answer(ReferralAccepted, req, by=Sector.SOCIAL))


def test_a_third_sector_cannot_cancel() -> None:
    state, req = referral_at(Status.ACCEPTED)
    with pytest.raises(IllegalEvent, match="not a party"):
        check(state, answer(ReferralCancelled, req, by=Sector.JUSTICE, reason=CancelReason.CHILD_MOVED))


def test_either_side_may_cancel() -> None:
    state, req = referral_at(Status.ACCEPTED)
    check(state, answer(ReferralCancelled, req, by=Sector.HEALTH, reason=CancelReason.CHILD_MOVED))
    check(state, answer(ReferralCancelled, req, by=Sector.SOCIAL, reason=CancelReason.CHILD_MOVED))


def test_receipt_once_and_only_while_requested() -> None:
    state, req = referral_at(Status.REQUESTED)
    receipt = answer(ReferralReceived, req)
    check(state, receipt)
    state = fold(state.child, enumerate([req, receipt], 1))
    with pytest.raises(IllegalEvent, match="already"):
        check(state, answer(ReferralReceived, req))
    cancelled, req2 = referral_at(Status.CANCELLED)
    with pytest.raises(IllegalEvent):
        check(cancelled, answer(ReferralReceived, req2))


def test_consent_gates_referrals_that_rely_on_it() -> None:
    child = new_child()
    state = fold(child, [])
    needs_consent = request(child, legal_basis=LegalBasis.GUARDIAN_CONSENT)
    with pytest.raises(IllegalEvent, match="no consent"):
        check(state, needs_consent)
    state = fold(child, [(1, consent(child, (Sector.HEALTH,)))])
    check(state, needs_consent)


def test_service_must_be_in_the_receivers_catalogue() -> None:
    child = new_child()
    with pytest.raises(IllegalEvent, match="offers no service"):
        check(fold(child, []), request(child, to=Sector.JUSTICE, service="vaccination"))


def test_no_referral_to_oneself_and_no_reused_referral_id() -> None:
    child = new_child()
    with pytest.raises(IllegalEvent, match="another sector"):
        check(fold(child, []), request(child, frm=Sector.HEALTH, to=Sector.HEALTH))
    state, req = referral_at(Status.REQUESTED)
    with pytest.raises(IllegalEvent, match="already used"):
        check(state, req)


def test_a_stored_event_is_recognised_as_duplicate() -> None:
    state, req = referral_at(Status.REQUESTED)
    assert is_duplicate(state, req)
    assert not is_duplicate(state, answer(ReferralAccepted, req))
