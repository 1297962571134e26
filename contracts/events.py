"""Every fact on the bus, as one tagged union of frozen msgspec Structs.

The envelope fields (on `Event`) are on every event; the `type` tag names the fact and
`schema_version` its shape, so a reader can upcast old shapes (see codec.py). Evolution rule, from
msgspec's schema-evolution guide: a new field gets a default, no field is ever retyped or renamed.
"""

from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec

from refbus.contracts.content import SealedContent
from refbus.contracts.vocabulary import (
    BasicService,
    CancelReason,
    Deadline,
    Dimension,
    ErrorReason,
    FailReason,
    Guardian,
    HoldReason,
    LegalBasis,
    Outcome,
    RejectReason,
    Sector,
    Status,
    Urgency,
)

ChildRef = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^c[0-9a-f]{16}$",
        max_length=17,
        description="Pseudonymous child reference issued by the referring system; never a name or national id.",
    ),
]
WorkerRef = Annotated[
    str,
    msgspec.Meta(pattern=r"^w[0-9a-f]{8,16}$", max_length=17, description="Pseudonymous id of the acting worker."),
]
HouseholdRef = Annotated[
    str, msgspec.Meta(pattern=r"^h[0-9a-f]{16}$", max_length=17, description="Pseudonymous household reference.")
]
ServiceCode = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z_]{3,40}$", max_length=40, description="A service from the receiving sector's catalogue."
    ),
]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
Sectors = Annotated[tuple[Sector, ...], msgspec.Meta(max_length=len(Sector))]
# A pattern's `$` also matches before a final newline (in Python's re, which msgspec uses), so
# "c0123456789abcdef\n" would pass as a child: the max_length of each pattern above refuses that.


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False, forbid_unknown_fields=True):
    """The envelope every event carries. Immutable values only, so no event can be part of a
    reference cycle: the garbage collector need not track them (millions pass through a replay).
    A field outside the contract is refused, not ignored (nor stored): personal data cannot ride
    along in one (the JSON Schema says `additionalProperties: false`)."""

    event_id: UUID
    schema_version: int = 1
    child: ChildRef
    from_sector: Sector
    "The sector stating this fact; a server permission pins it to the publisher's own sector."
    to_sector: Sector | None = None
    "The sector this fact is addressed to (its inbox); none for a sector's own case notes."
    occurred_at: UtcTime
    actor: WorkerRef
    correlation_id: UUID
    "The referral chain this event belongs to: shared by all events that one request set off."
    causation_id: UUID | None = None
    "The event that made this one happen."


class ReferralEvent(Event, frozen=True, kw_only=True):
    to_sector: Sector
    "Every referral event is addressed: to the other party, or to the sector itself for a deadline notice."
    referral_id: UUID


# -- referral lifecycle (FHIR Task.status) -----------------------------------------------------


class ReferralRequested(ReferralEvent, frozen=True, kw_only=True, tag="referral.requested"):
    dimension: Dimension
    service: ServiceCode
    urgency: Urgency
    legal_basis: LegalBasis
    respond_by: UtcTime | None = None
    "When the referrer expects a decision; overdue referrals are escalated."
    sealed: SealedContent | None = None
    """What the receiver needs to act (the child's name, birth date, guardian's contact, address, a
    note), encrypted: only the two sectors and the auditors can read it (contracts/content.py)."""


class ReferralReceived(ReferralEvent, frozen=True, kw_only=True, tag="referral.received"):
    """The receiving system got the referral: an automatic delivery receipt, not a decision."""


class ReferralAccepted(ReferralEvent, frozen=True, kw_only=True, tag="referral.accepted"):
    pass


class ReferralRejected(ReferralEvent, frozen=True, kw_only=True, tag="referral.rejected"):
    reason: RejectReason


class ReferralInProgress(ReferralEvent, frozen=True, kw_only=True, tag="referral.in-progress"):
    """Work has started, or resumed after a hold."""


class ReferralOnHold(ReferralEvent, frozen=True, kw_only=True, tag="referral.on-hold"):
    reason: HoldReason


class ReferralCompleted(ReferralEvent, frozen=True, kw_only=True, tag="referral.completed"):
    outcome: Outcome


class ReferralFailed(ReferralEvent, frozen=True, kw_only=True, tag="referral.failed"):
    reason: FailReason


class ReferralCancelled(ReferralEvent, frozen=True, kw_only=True, tag="referral.cancelled"):
    """Either side may cancel; `from_sector` and `actor` say who did. A consent withdrawal cancels the
    open referrals that relied on it (reason `consent_withdrawn`, `causation_id` the withdrawal): stated
    by the sector that recorded it, party or not, once to each party, in the withdrawal's own append."""

    reason: CancelReason


class ReferralEnteredInError(ReferralEvent, frozen=True, kw_only=True, tag="referral.entered-in-error"):
    reason: ErrorReason


# -- follow-up deadlines (issue 18) --------------------------------------------------------------


class ReferralOverdue(ReferralEvent, frozen=True, kw_only=True, tag="referral.overdue"):
    """A follow-up deadline passed: a reminder in the receiver's inbox, written as a note of the
    receiver's own system to itself (from and to the receiver: `refbus.ev.<child>.<r>.<r>`, subjects
    no other event uses but a consent withdrawal's cancellation to its recorder, legal only in the
    withdrawal's own append: the deadline service's permission reaches nothing else). Once per
    deadline and referral; no status change."""

    deadline: Deadline
    due_at: UtcTime


class ReferralEscalated(ReferralEvent, frozen=True, kw_only=True, tag="referral.escalated"):
    """The same passed deadline, escalated to the referrer: a note in the referrer's own inbox (from
    and to the referrer), for its supervisors' queue: the loop closes. Once per deadline and referral."""

    deadline: Deadline
    due_at: UtcTime


# -- case ---------------------------------------------------------------------------------------


class CaseOpened(Event, frozen=True, kw_only=True, tag="case.opened"):
    household: HouseholdRef


class VulnerabilityIdentified(Event, frozen=True, kw_only=True, tag="case.vulnerability-identified"):
    dimension: Dimension


class BasicServiceDelivered(Event, frozen=True, kw_only=True, tag="case.service-delivered"):
    """A basic service the sector delivered to the child or family itself (no referral needed)."""

    service: BasicService


class ConsentRecorded(Event, frozen=True, kw_only=True, tag="case.consent-recorded"):
    given_by: Guardian
    sectors: Sectors
    "The sectors the guardian agreed may receive this child's referrals."


class ConsentWithdrawn(Event, frozen=True, kw_only=True, tag="case.consent-withdrawn"):
    """Stored together with a `referral.cancelled` (consent_withdrawn) to each party of every open
    referral that relied on this consent: guardian_consent, sent to one of `sectors`."""

    withdrawn_by: Guardian
    sectors: Sectors


# -- child references (issue 17) ---------------------------------------------------------------


class ChildReferenceLinked(Event, frozen=True, kw_only=True, tag="child.reference-linked"):
    """Two references name one child: `linked_from` (a random reference, given while the child had no
    documents) continues as `linked_to` (the reference derived from the papers, usually once justice
    issued them). Stated by the sector that learned the identifier, stored on both references'
    histories in one atomic write (`child` is one of the two); a read of `linked_to` includes the
    history of `linked_from`. Addressed to no sector. No identifier: only the two references."""

    linked_from: ChildRef
    linked_to: ChildRef


class ChildContentErased(Event, frozen=True, kw_only=True, tag="child.content-erased"):
    """Every data key of the child was destroyed (`refbus erase`): the sealed content of its earlier
    referrals can no longer be read anywhere, copies of the log included; the events themselves stay,
    and still verify. Addressed to no sector. `erased_by`: the identity that ran the erasure."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    erased_by: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    keys_destroyed: Annotated[int, msgspec.Meta(ge=0)]


AnyEvent = (
    ReferralRequested
    | ReferralReceived
    | ReferralAccepted
    | ReferralRejected
    | ReferralInProgress
    | ReferralOnHold
    | ReferralCompleted
    | ReferralFailed
    | ReferralCancelled
    | ReferralEnteredInError
    | ReferralOverdue
    | ReferralEscalated
    | CaseOpened
    | VulnerabilityIdentified
    | BasicServiceDelivered
    | ConsentRecorded
    | ConsentWithdrawn
    | ChildReferenceLinked
    | ChildContentErased
)

ALL_EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]

# The business status each referral event moves its referral to; `received` and the deadline
# notices move none.
STATUS_AFTER: dict[type[ReferralEvent], Status] = {
    ReferralRequested: Status.REQUESTED,
    ReferralAccepted: Status.ACCEPTED,
    ReferralRejected: Status.REJECTED,
    ReferralInProgress: Status.IN_PROGRESS,
    ReferralOnHold: Status.ON_HOLD,
    ReferralCompleted: Status.COMPLETED,
    ReferralFailed: Status.FAILED,
    ReferralCancelled: Status.CANCELLED,
    ReferralEnteredInError: Status.ENTERED_IN_ERROR,
}


DEADLINE_NOTICES: tuple[type[ReferralEvent], ...] = (ReferralOverdue, ReferralEscalated)
"Events about a passed deadline: no business status, no step of the referral's work."


def event_type(event: Event) -> str:
    """The wire tag of an event, e.g. ``referral.accepted``."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]
