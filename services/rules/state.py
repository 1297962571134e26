"""A child's state, folded from its events. Pure: no I/O, no clock."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from refbus.contracts.events import (
    DEADLINE_NOTICES,
    STATUS_AFTER,
    CaseOpened,
    ChildReferenceLinked,
    ConsentRecorded,
    ConsentWithdrawn,
    Event,
    ReferralCancelled,
    ReferralEscalated,
    ReferralEvent,
    ReferralOverdue,
    ReferralReceived,
    ReferralRequested,
    VulnerabilityIdentified,
)
from refbus.contracts.vocabulary import (
    TERMINAL_STATUSES,
    CancelReason,
    Deadline,
    Dimension,
    LegalBasis,
    Sector,
    Status,
    Urgency,
)


@dataclass
class Referral:
    referral_id: UUID
    referrer: Sector
    receiver: Sector
    service: str
    dimension: Dimension
    requested_at: datetime
    correlation_id: UUID
    legal_basis: LegalBasis
    urgency: Urgency = Urgency.ROUTINE
    respond_by: datetime | None = None
    request_event_id: UUID | None = None
    status: Status = Status.REQUESTED
    received_at: datetime | None = None
    decided_at: datetime | None = None
    "When it was accepted or rejected."
    closed_at: datetime | None = None
    updated_at: datetime | None = None
    "When its newest event occurred: a policy's delays count from here."
    steps: dict[str, int] = field(default_factory=dict)
    "How many events of each type this referral has: makes deterministic event ids possible."
    reminded: dict[Deadline, datetime] = field(default_factory=dict)
    "Deadlines the receiver has been reminded of (referral.overdue), with their due times."
    escalated: dict[Deadline, datetime] = field(default_factory=dict)
    "Deadlines escalated on the referrer's side (referral.escalated), with their due times."

    @property
    def is_open(self) -> bool:
        return self.status not in TERMINAL_STATUSES

    def counterpart(self, sector: Sector) -> Sector:
        return self.receiver if sector == self.referrer else self.referrer

    def relies_on_consent_for(self, sectors: Iterable[Sector]) -> bool:
        """Open, lawful only by the guardian's consent, and sent to one of `sectors`: a consent names
        the sectors that may receive the child's referrals, so a referral relies on its receiver's."""
        return self.is_open and self.legal_basis is LegalBasis.GUARDIAN_CONSENT and self.receiver in sectors

    def copy(self) -> "Referral":
        copied = object.__new__(Referral)
        copied.__dict__.update(self.__dict__)
        copied.steps, copied.reminded, copied.escalated = dict(self.steps), dict(self.reminded), dict(self.escalated)
        return copied


class OwedCancels(NamedTuple):
    """What a consent withdrawal still owes one referral: a cancellation to each of `parties`."""

    withdrawal: ConsentWithdrawn
    parties: frozenset[Sector]


def is_owed_cancel(state: "ChildState", event: Event) -> bool:
    """`event` is one of the cancellations a withdrawal owes: reason consent_withdrawn, stated by the
    sector that recorded the withdrawal, naming it as the cause, to a party not yet told."""
    if not isinstance(event, ReferralCancelled):
        return False
    owed = state.owed_cancels.get(event.referral_id)
    return (
        owed is not None
        and event.reason is CancelReason.CONSENT_WITHDRAWN
        and event.from_sector == owed.withdrawal.from_sector
        and event.causation_id == owed.withdrawal.event_id
        and event.to_sector in owed.parties
    )


@dataclass
class ChildState:
    child: str
    last_seq: int = 0
    "Stream sequence of the child's newest event: the expected sequence for the next append."
    event_ids: set[UUID] = field(default_factory=set)
    open_cases: set[Sector] = field(default_factory=set)
    vulnerabilities: set[Dimension] = field(default_factory=set)
    consent: set[Sector] = field(default_factory=set)
    "Sectors the guardian currently consents may receive referrals."
    referrals: dict[UUID, Referral] = field(default_factory=dict)
    owed_cancels: dict[UUID, OwedCancels] = field(default_factory=dict)
    """Referrals a consent withdrawal cancels, with the parties not yet told: stated in the withdrawal's
    own append (services/rules/lifecycle.py; docs/decisions/0019-consent-withdrawal-cancels.md)."""
    linked_to: str | None = None
    "The reference this one continues as (child.reference-linked from it), if any."
    linked_from: list[str] = field(default_factory=list)
    "The references linked into this one, in log order: their histories are this child's too."
    chain_pos: int = 0
    "How many events the child's hash chain holds (set by the store's read, not by the fold)."
    chain_hash: bytes = b"\0" * 32
    "The chain hash of the child's newest event: the next event links on it (services/audit/proof.py)."
    chain_seq: int = 0
    """The sequence whose link chain_pos/chain_hash are: a state folded from events alone has none
    for its last_seq, and the store then reads the link before appending."""
    events_folded: int | None = None
    """How many of the log's events this state folds when it folds them all, from the child's first
    (set by the store's read, counted on by `apply`); None for a state made any other way."""
    illegal: dict[int, str] = field(default_factory=dict)
    "Events the log holds that were not legal where it put them: sequence -> the rule (the store's read)."

    def copy(self) -> "ChildState":
        """A copy that shares nothing mutable with this state (`apply` changes states in place)."""
        # Not dataclasses.replace: it re-runs __init__ field by field, and a store copies on every read.
        copied = object.__new__(ChildState)
        copied.__dict__.update(self.__dict__)
        copied.event_ids = set(self.event_ids)
        copied.open_cases = set(self.open_cases)
        copied.vulnerabilities = set(self.vulnerabilities)
        copied.consent = set(self.consent)
        copied.referrals = {rid: r.copy() for rid, r in self.referrals.items()}
        copied.owed_cancels = dict(self.owed_cancels)  # its values are immutable
        copied.linked_from = list(self.linked_from)
        copied.illegal = dict(self.illegal)
        return copied


def apply(state: ChildState, event: Event, seq: int = 0) -> ChildState:
    """Record one (already validated) event in the state, in place, and return it."""
    state.event_ids.add(event.event_id)
    state.last_seq = max(state.last_seq, seq)
    if state.events_folded is not None:
        state.events_folded += 1
    match event:
        case ReferralRequested():
            assert event.to_sector is not None
            state.referrals[event.referral_id] = Referral(
                referral_id=event.referral_id,
                referrer=event.from_sector,
                receiver=event.to_sector,
                service=event.service,
                dimension=event.dimension,
                requested_at=event.occurred_at,
                updated_at=event.occurred_at,
                correlation_id=event.correlation_id,
                legal_basis=event.legal_basis,
                urgency=event.urgency,
                respond_by=event.respond_by,
                request_event_id=event.event_id,
            )
        case ReferralEvent():
            referral = state.referrals.get(event.referral_id)
            if referral is None:  # only possible for foreign writes; `check` refuses them
                return state
            if isinstance(event, DEADLINE_NOTICES):
                # A notice about the referral, not a step of it: no status, no `updated_at` (the
                # policies' delays count from the last step), no step count.
                if isinstance(event, ReferralOverdue):
                    referral.reminded[event.deadline] = event.due_at
                elif isinstance(event, ReferralEscalated):
                    referral.escalated[event.deadline] = event.due_at
                return state
            if state.owed_cancels and is_owed_cancel(state, event):
                _told(state, event)  # type: ignore[arg-type]
            referral.updated_at = event.occurred_at
            if isinstance(event, ReferralReceived):
                referral.received_at = event.occurred_at
            else:
                referral.status = STATUS_AFTER[type(event)]
                if referral.decided_at is None and referral.status in (Status.ACCEPTED, Status.REJECTED):
                    referral.decided_at = event.occurred_at
                if not referral.is_open:
                    referral.closed_at = event.occurred_at
        case CaseOpened():
            state.open_cases.add(event.from_sector)
        case VulnerabilityIdentified():
            state.vulnerabilities.add(event.dimension)
        case ConsentRecorded():
            state.consent.update(event.sectors)
        case ConsentWithdrawn():
            state.consent.difference_update(event.sectors)
            for referral in state.referrals.values():
                if referral.relies_on_consent_for(event.sectors) and referral.referral_id not in state.owed_cancels:
                    parties = frozenset((referral.referrer, referral.receiver))
                    state.owed_cancels[referral.referral_id] = OwedCancels(event, parties)
        case ChildReferenceLinked():
            if event.child == event.linked_from:
                state.linked_to = event.linked_to
            elif event.linked_from not in state.linked_from:
                state.linked_from.append(event.linked_from)
    if isinstance(event, ReferralEvent) and event.referral_id in state.referrals:
        steps = state.referrals[event.referral_id].steps
        tag = type(event).__struct_config__.tag
        steps[tag] = steps.get(tag, 0) + 1
    return state


def _told(state: ChildState, cancel: ReferralCancelled) -> None:
    owed = state.owed_cancels[cancel.referral_id]
    rest = owed.parties - {cancel.to_sector}
    if rest:
        state.owed_cancels[cancel.referral_id] = OwedCancels(owed.withdrawal, rest)
    else:
        del state.owed_cancels[cancel.referral_id]


def fold(child: str, events: Iterable[tuple[int, Event]]) -> ChildState:
    """The child's state after its events, given as (stream sequence, event) in log order."""
    state = ChildState(child=child)
    for seq, event in events:
        apply(state, event, seq)
    return state
