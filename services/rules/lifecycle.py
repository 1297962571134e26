"""The rules an event must satisfy against the child's current state before it may be stored.

`check` is pure and runs in EventStore.transact before every append (and in the services and the
audit for what a raw writer slipped in): an illegal event is refused with a named reason and never
stored. The transitions follow FHIR Task.status (docs/decisions/0009-fhir-lifecycle.md).
"""

from collections.abc import Sequence

from refbus.contracts.events import (
    BasicServiceDelivered,
    CaseOpened,
    ChildReferenceLinked,
    ConsentRecorded,
    ConsentWithdrawn,
    Event,
    ReferralAccepted,
    ReferralCancelled,
    ReferralCompleted,
    ReferralEnteredInError,
    ReferralEscalated,
    ReferralEvent,
    ReferralFailed,
    ReferralInProgress,
    ReferralOnHold,
    ReferralOverdue,
    ReferralReceived,
    ReferralRejected,
    ReferralRequested,
    VulnerabilityIdentified,
)
from refbus.contracts.vocabulary import SERVICE_CATALOGUE, Deadline, LegalBasis, Status
from refbus.services.rules import child_links
from refbus.services.rules.deadlines import is_pending
from refbus.services.rules.state import ChildState, Referral, is_owed_cancel


class IllegalEvent(Exception):
    """The event breaks a lifecycle rule; `reason` says which. Nothing was stored."""

    def __init__(self, event: Event, reason: str) -> None:
        super().__init__(f"{type(event).__name__} {event.event_id}: {reason}")
        self.event = event
        self.reason = reason


S = Status
# Which status a receiver's decision may follow, per FHIR Task.
_RECEIVER_MOVES: dict[type[ReferralEvent], frozenset[Status]] = {
    ReferralAccepted: frozenset({S.REQUESTED}),
    ReferralRejected: frozenset({S.REQUESTED}),
    ReferralInProgress: frozenset({S.ACCEPTED, S.ON_HOLD}),
    ReferralOnHold: frozenset({S.ACCEPTED, S.IN_PROGRESS}),
    ReferralCompleted: frozenset({S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD}),
    ReferralFailed: frozenset({S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD}),
}
_CANCELLABLE = frozenset({S.REQUESTED, S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD})


def is_duplicate(state: ChildState, event: Event) -> bool:
    """The event is already in the log: storing it again must be a no-op, not an error."""
    return event.event_id in state.event_ids


def check(state: ChildState, event: Event) -> None:
    """Raise IllegalEvent unless `event` may follow `state`."""
    if event.child != state.child:
        raise IllegalEvent(event, f"belongs to child {event.child}, not {state.child}")
    match event:
        case ReferralRequested():
            _check_request(state, event)
        case ReferralOverdue() | ReferralEscalated():
            referral = state.referrals.get(event.referral_id)
            if referral is None:
                raise IllegalEvent(event, "no such referral for this child")
            _check_notice(event, referral)
        case ReferralEvent():
            referral = state.referrals.get(event.referral_id)
            if referral is None:
                raise IllegalEvent(event, "no such referral for this child")
            if event.referral_id in state.owed_cancels:
                _check_owed(state, event)
                return
            _check_addressing(event, referral)
            _check_move(event, referral)
        case CaseOpened():
            if event.from_sector in state.open_cases:
                raise IllegalEvent(event, f"{event.from_sector.value} already has a case open")
        case ChildReferenceLinked():
            reason = child_links.refusal(state, event)
            if reason is not None:
                raise IllegalEvent(event, reason)
        case VulnerabilityIdentified() | BasicServiceDelivered() | ConsentRecorded() | ConsentWithdrawn():
            pass
    if not isinstance(event, ReferralEvent) and event.to_sector is not None:
        raise IllegalEvent(event, "case events are addressed to no sector")


def check_append(state: ChildState, events: Sequence[Event]) -> None:
    """Raise IllegalEvent if an append (`events`, already applied to `state`) records a consent
    withdrawal and leaves a referral that relied on that consent open or a party of it untold: the
    cancellations go in the withdrawal's own atomic append, so that nothing can be decided on the
    referral in between and no crash can leave half (docs/decisions/0019-consent-withdrawal-cancels.md)."""
    if not state.owed_cancels:
        return
    withdrawals = {e.event_id: e for e in events if isinstance(e, ConsentWithdrawn)}
    for referral_id, owed in state.owed_cancels.items():
        if owed.withdrawal.event_id in withdrawals:
            parties = ", ".join(sorted(p.value for p in owed.parties))
            raise IllegalEvent(
                owed.withdrawal,
                f"consent withdrawn: referral {referral_id} relies on it and must be cancelled in the same append "
                f"(reason consent_withdrawn, to {parties})",
            )


def _check_owed(state: ChildState, event: ReferralEvent) -> None:
    """A referral whose consent was withdrawn takes only the withdrawal's cancellations, one to each
    party, by the sector that recorded it (a party or not): nothing can be decided on it meanwhile.
    (Deadline notices are no decision: `check` takes them before this.)"""
    if is_owed_cancel(state, event):
        return
    recorder = state.owed_cancels[event.referral_id].withdrawal.from_sector.value
    raise IllegalEvent(
        event,
        f"consent withdrawn: the referral takes only its consent_withdrawn cancellations, stated by {recorder} "
        "as caused by the withdrawal, one to each party",
    )


def _check_request(state: ChildState, event: ReferralRequested) -> None:
    if event.referral_id in state.referrals:
        raise IllegalEvent(event, "referral id already used")
    if event.to_sector is None or event.to_sector == event.from_sector:
        raise IllegalEvent(event, "a referral goes to another sector")
    if event.service not in SERVICE_CATALOGUE[event.to_sector]:
        raise IllegalEvent(event, f"{event.to_sector.value} offers no service {event.service!r}")
    if event.legal_basis == LegalBasis.GUARDIAN_CONSENT and event.to_sector not in state.consent:
        raise IllegalEvent(event, f"no consent on record for sharing with {event.to_sector.value}")


def _check_addressing(event: ReferralEvent, referral: Referral) -> None:
    either_side = isinstance(event, ReferralCancelled | ReferralEnteredInError)
    if not either_side and event.from_sector != referral.receiver:
        raise IllegalEvent(event, f"only the receiving sector ({referral.receiver.value}) may do this")
    if event.from_sector not in (referral.referrer, referral.receiver):
        raise IllegalEvent(event, f"{event.from_sector.value} is not a party to this referral")
    if event.to_sector != referral.counterpart(event.from_sector):
        raise IllegalEvent(event, "must be addressed to the other party of the referral")


def _check_move(event: ReferralEvent, referral: Referral) -> None:
    status = referral.status
    if isinstance(event, ReferralReceived):
        if referral.received_at is not None:
            raise IllegalEvent(event, "receipt already acknowledged")
        if status != S.REQUESTED:
            raise IllegalEvent(event, f"cannot acknowledge receipt of a {status.value} referral")
        return
    if isinstance(event, ReferralCancelled):
        allowed = _CANCELLABLE
    elif isinstance(event, ReferralEnteredInError):
        allowed = frozenset(Status) - {S.ENTERED_IN_ERROR}
    else:
        allowed = _RECEIVER_MOVES[type(event)]
    if status not in allowed:
        tag = type(event).__struct_config__.tag
        raise IllegalEvent(event, f"{tag} is not allowed from status {status.value}")


def _check_notice(event: ReferralOverdue | ReferralEscalated, referral: Referral) -> None:
    """A deadline notice is a note a sector's system writes to itself, on the subjects no other event
    uses (`refbus.ev.<child>.<s>.<s>`; but see `_check_owed`): the reminder in the receiver's inbox, the
    escalation in the referrer's. Legal only while the deadline is pending, once its time has come, and once per
    deadline (by state: a second notice with another id is refused too)."""
    tag = type(event).__struct_config__.tag
    party = referral.receiver if isinstance(event, ReferralOverdue) else referral.referrer
    if event.from_sector != party or event.to_sector != party:
        raise IllegalEvent(event, f"{tag} is stated by {party.value} to itself")
    if not is_pending(referral, event.deadline):
        raise IllegalEvent(event, f"deadline {event.deadline.value} is not pending ({referral.status.value})")
    if event.deadline is Deadline.RESPOND_BY and event.due_at != referral.respond_by:
        raise IllegalEvent(event, "respond_by deadline is not the request's respond_by")
    if event.due_at < referral.requested_at or event.occurred_at < event.due_at:
        raise IllegalEvent(event, f"deadline {event.deadline.value} has not passed")
    noticed = referral.reminded if isinstance(event, ReferralOverdue) else referral.escalated
    if event.deadline in noticed:
        raise IllegalEvent(event, f"{tag} already stated for deadline {event.deadline.value}")
