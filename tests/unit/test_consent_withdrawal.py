"""A consent withdrawal cancels what relied on it, in its own append (services/rules): pure, no NATS."""

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import pytest

from refbus.contracts.events import (
    ConsentWithdrawn,
    Event,
    ReferralAccepted,
    ReferralCancelled,
    ReferralInProgress,
    ReferralOverdue,
    ReferralRequested,
)
from refbus.contracts.vocabulary import CancelReason, Deadline, Guardian, LegalBasis, Sector, Status
from refbus.services.eventstore.bulk import slices
from refbus.services.rules.audit import audit
from refbus.services.rules.decisions import consent_withdrawal
from refbus.services.rules.lifecycle import IllegalEvent, check, check_append
from refbus.services.rules.state import ChildState, apply, fold
from refbus.services.runtime import metrics
from tests.factories import answer, consent, envelope, new_child, request

KEY = b"k" * 32
S = Sector


def withdrawal(child: str, sectors: tuple[Sector, ...], by: Sector = S.SOCIAL) -> ConsentWithdrawn:
    return ConsentWithdrawn(**envelope(child, by, None), withdrawn_by=Guardian.PARENT, sectors=sectors)


def folded(child: str, *events: Event) -> ChildState:
    return fold(child, [(i + 1, e) for i, e in enumerate(events)])


def append(state: ChildState, events: Sequence[Event]) -> ChildState:
    """What EventStore.transact does with a decision, without the store."""
    for event in events:
        check(state, event)
        apply(state, event)
    check_append(state, events)
    return state


def consented(child: str, frm: Sector = S.SOCIAL, to: Sector = S.HEALTH) -> ReferralRequested:
    service = {S.HEALTH: "family_doctor_registration", S.EDUCATION: "school_enrolment"}[to]
    return request(child, frm, to, service, legal_basis=LegalBasis.GUARDIAN_CONSENT)


def test_only_open_consent_based_referrals_to_a_withdrawn_sector_are_cancelled_to_both_parties() -> None:
    child = new_child()
    relied = consented(child)  # social -> health on consent: relies on consent for health
    in_work = consented(child)
    statutory = request(child, S.SOCIAL, S.HEALTH, legal_basis=LegalBasis.CHILD_PROTECTION_DUTY)
    from_health = consented(child, S.HEALTH, S.EDUCATION)  # relies on consent for education, not health
    to_education = consented(child, S.SOCIAL, S.EDUCATION)
    closed = consented(child)
    state = folded(
        child, consent(child, (S.HEALTH, S.EDUCATION)), relied, in_work, statutory, from_health, to_education, closed,
        answer(ReferralAccepted, in_work), answer(ReferralInProgress, in_work),
        answer(ReferralCancelled, closed, by=S.SOCIAL, reason=CancelReason.NO_LONGER_NEEDED),
    )
    withdrawn = withdrawal(child, (S.HEALTH,))
    events = consent_withdrawal(KEY, state, withdrawn)
    assert events[0] is withdrawn
    cancels = [e for e in events[1:] if isinstance(e, ReferralCancelled)]
    assert len(cancels) == len(events) - 1 == 4
    assert {(c.referral_id, c.to_sector) for c in cancels} == {
        (r.referral_id, p) for r in (relied, in_work) for p in (S.HEALTH, S.SOCIAL)
    }
    for cancel in cancels:
        assert cancel.from_sector is S.SOCIAL and cancel.reason is CancelReason.CONSENT_WITHDRAWN
        assert cancel.causation_id == withdrawn.event_id
        assert cancel.correlation_id == state.referrals[cancel.referral_id].correlation_id
    after = append(state, events)
    status = {rid: r.status for rid, r in after.referrals.items()}
    assert status[relied.referral_id] is status[in_work.referral_id] is Status.CANCELLED
    for open_one in (statutory, from_health, to_education):
        assert status[open_one.referral_id] is Status.REQUESTED
    assert after.owed_cancels == {} and after.consent == {S.EDUCATION}


def test_a_withdrawal_that_leaves_a_relying_referral_open_or_a_party_untold_is_refused() -> None:
    child = new_child()
    relied = consented(child)
    state = folded(child, consent(child, (S.HEALTH,)), relied)
    withdrawn = withdrawal(child, (S.HEALTH,))
    with pytest.raises(IllegalEvent, match="must be cancelled in the same append") as refused:
        append(state.copy(), [withdrawn])
    assert refused.value.event is withdrawn
    full = consent_withdrawal(KEY, state, withdrawn)
    with pytest.raises(IllegalEvent, match=r"to social\)"):
        append(state.copy(), full[:2])  # the receiver told, the referrer not
    assert metrics.refusal_rule(refused.value.reason) == "consent_cancel_missing"
    # Nothing relied on it: a withdrawal alone is fine.
    assert append(folded(child, consent(child, (S.HEALTH,))), [withdrawal(child, (S.HEALTH,))]).consent == set()


def test_nothing_is_decided_on_the_referral_between_the_withdrawal_and_its_cancellations() -> None:
    child = new_child()
    relied = consented(child)
    state = folded(child, consent(child, (S.HEALTH,)), relied)
    withdrawn = withdrawal(child, (S.HEALTH,))
    apply(state, withdrawn)
    before = folded(child, consent(child, (S.HEALTH,)), relied)
    [to_receiver, to_referrer] = consent_withdrawal(KEY, before, withdrawn)[1:]
    not_now = [
        answer(ReferralAccepted, relied),  # the receiver's step
        answer(ReferralCancelled, relied, by=S.SOCIAL, reason=CancelReason.CONSENT_WITHDRAWN),  # not the owed one
        msgspec.structs.replace(to_receiver, causation_id=relied.event_id),  # not caused by the withdrawal
        msgspec.structs.replace(to_receiver, reason=CancelReason.NO_LONGER_NEEDED),
        msgspec.structs.replace(to_receiver, from_sector=S.HEALTH, to_sector=S.HEALTH),  # not by the recorder
        msgspec.structs.replace(to_receiver, to_sector=S.JUSTICE),  # not a party
    ]
    for event in not_now:
        with pytest.raises(IllegalEvent, match="takes only its consent_withdrawn cancellations") as refused:
            check(state, event)
        assert metrics.refusal_rule(refused.value.reason) == "consent_withdrawn_referral"
    check(state, to_receiver)
    apply(state, to_receiver)
    with pytest.raises(IllegalEvent):
        check(state, msgspec.structs.replace(to_receiver, event_id=to_referrer.event_id))  # that party was told
    check(state, to_referrer)  # from cancelled: the second copy, to the other party
    apply(state, to_referrer)
    assert state.owed_cancels == {}
    with pytest.raises(IllegalEvent, match="not allowed from status cancelled"):
        check(state, answer(ReferralCancelled, relied, by=S.SOCIAL, reason=CancelReason.CONSENT_WITHDRAWN))


def test_a_sector_that_is_no_party_may_cancel_only_as_the_recorder_of_the_withdrawal() -> None:
    child = new_child()
    relied = consented(child)  # social -> health; education hears the guardian withdraw
    state = folded(child, consent(child, (S.HEALTH,)), relied)
    uninvolved = answer(ReferralCancelled, relied, by=S.SOCIAL, reason=CancelReason.CONSENT_WITHDRAWN)
    with pytest.raises(IllegalEvent, match="not a party"):
        check(state, msgspec.structs.replace(uninvolved, from_sector=S.EDUCATION))
    events = consent_withdrawal(KEY, state, withdrawal(child, (S.HEALTH,), by=S.EDUCATION))
    assert {(e.from_sector, e.to_sector) for e in events[1:]} == {(S.EDUCATION, S.HEALTH), (S.EDUCATION, S.SOCIAL)}
    assert append(state, events).referrals[relied.referral_id].status is Status.CANCELLED


def test_the_cancellations_ids_are_derived_and_keyed() -> None:
    child = new_child()
    state = folded(child, consent(child, (S.HEALTH,)), consented(child))
    withdrawn = withdrawal(child, (S.HEALTH,))
    first, again = consent_withdrawal(KEY, state, withdrawn), consent_withdrawal(KEY, state, withdrawn)
    assert [e.event_id for e in first] == [e.event_id for e in again]
    other_key = consent_withdrawal(b"x" * 32, state, withdrawn)
    assert not {e.event_id for e in first[1:]} & {e.event_id for e in other_key[1:]}


def test_a_withdrawal_published_alone_freezes_the_referral_until_its_recorder_finishes_it() -> None:
    child = new_child()
    relied = consented(child)
    raw = withdrawal(child, (S.HEALTH,))
    state = folded(child, consent(child, (S.HEALTH,)), relied, raw)  # a system wrote it to the log itself
    with pytest.raises(IllegalEvent, match="takes only"):
        check(state, answer(ReferralAccepted, relied))
    other = request(child, S.EDUCATION, S.JUSTICE, "legal_aid")
    check(state, other)  # the rest of the child goes on
    due = relied.occurred_at
    check(state, ReferralOverdue(**envelope(child, S.HEALTH, S.HEALTH), referral_id=relied.referral_id,
                                 deadline=Deadline.RECEIVED, due_at=due))  # a notice is no decision
    assert [f.detail for f in audit([(1, raw, None)], datetime.now(UTC)).findings] == []  # nothing relied yet
    report = audit([(i + 1, e, None) for i, e in enumerate([relied, raw])], datetime.now(UTC))
    assert any("cancellations are missing" in f.detail for f in report.findings)
    # The recorder records the withdrawal again (through its gateway): the owed cancellations go with it.
    events = consent_withdrawal(KEY, state, withdrawal(child, (S.HEALTH,)))
    assert {e.causation_id for e in events[1:]} == {raw.event_id}
    assert append(state, events).referrals[relied.referral_id].status is Status.CANCELLED
    # Another sector cannot finish what social owes.
    again = folded(child, consent(child, (S.HEALTH,)), relied, raw)
    assert consent_withdrawal(KEY, again, withdrawal(child, (S.HEALTH,), by=S.JUSTICE))[1:] == []


def test_an_import_slice_never_parts_a_withdrawal_from_its_cancellations() -> None:
    child = new_child()
    relied = [consented(child) for _ in range(3)]
    before: list[Event] = [consent(child, (S.HEALTH,)), *relied]
    withdrawn = withdrawal(child, (S.HEALTH,))
    events = consent_withdrawal(KEY, folded(child, *before), withdrawn)
    todo = [*before, *events, request(child)]
    parts = list(slices(todo, size=5))  # the withdrawal is the fifth: a plain cut would part it
    assert [len(p) for p in parts] == [11, 1]
    assert [e for part in parts for e in part] == todo
    assert [len(p) for p in slices(todo[:4] + [request(child) for _ in range(3)], size=5)] == [5, 2]
