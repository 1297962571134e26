"""Turns a sector's decisions into events, with ids derived from the referral and its step.

Deterministic ids make a retried handler idempotent: the same step of the same referral always has
the same event id, so the log stores it once. The derivation is keyed with the deployment's event-id
key (HMAC-SHA256), so no writer without the key can compute a future id and squat it
(docs/decisions/0006-keyed-event-ids.md).
"""

import hashlib
import hmac
from datetime import datetime
from hashlib import blake2b
from uuid import UUID

from refbus.contracts.events import (
    ConsentWithdrawn,
    Event,
    ReferralCancelled,
    ReferralEvent,
    ReferralReceived,
    ReferralRequested,
)
from refbus.contracts.vocabulary import CancelReason, LegalBasis, Sector
from refbus.services.rules.policy import OnwardReferral, Step
from refbus.services.rules.state import ChildState, Referral


def worker_for(sector: Sector, referral_id: UUID, team_size: int = 12) -> str:
    """A pseudonymous worker id: one of the sector's team, stable per referral."""
    member = int.from_bytes(blake2b(referral_id.bytes, digest_size=2).digest()) % team_size
    return "w" + blake2b(f"{sector.value}:{member}".encode(), digest_size=5).hexdigest()


def derived_id(key: bytes, referral_id: UUID, label: str) -> UUID:
    """The id of one step of one referral: the same every time for the same key, unpredictable
    without it."""
    digest = hmac.new(key, referral_id.bytes + label.encode(), hashlib.sha256).digest()
    return UUID(bytes=digest[:16], version=4)


def step_event(
    key: bytes, step: Step, referral: Referral, child: str, sector: Sector, now: datetime, causation_id: UUID | None
) -> ReferralEvent:
    tag = step.kind.__struct_config__.tag
    occurrence = referral.steps.get(tag, 0) + 1
    return step.kind(
        event_id=derived_id(key, referral.referral_id, f"{tag}#{occurrence}"),
        child=child,
        from_sector=sector,
        to_sector=referral.counterpart(sector),
        occurred_at=now,
        actor=worker_for(sector, referral.referral_id),
        correlation_id=referral.correlation_id,
        causation_id=causation_id,
        referral_id=referral.referral_id,
        **step.fields,
    )


def receipt(key: bytes, referral: Referral, child: str, now: datetime, causation_id: UUID) -> ReferralReceived:
    """The automatic delivery acknowledgement the receiving system sends as soon as it has a referral."""
    return step_event(key, Step(ReferralReceived), referral, child, referral.receiver, now, causation_id)  # type: ignore[return-value]


def onward_request(
    key: bytes, onward: OnwardReferral, source: Referral, index: int, child: str, now: datetime, causation_id: UUID
) -> ReferralRequested:
    """A new referral that `source`'s receiver sends on; same correlation chain as `source`."""
    return ReferralRequested(
        event_id=derived_id(key, source.referral_id, f"onward-event#{index}"),
        referral_id=derived_id(key, source.referral_id, f"onward-referral#{index}"),
        child=child,
        from_sector=source.receiver,
        to_sector=onward.to_sector,
        occurred_at=now,
        actor=worker_for(source.receiver, source.referral_id),
        correlation_id=source.correlation_id,
        causation_id=causation_id,
        dimension=onward.dimension,
        service=onward.service,
        urgency=onward.urgency,
        legal_basis=LegalBasis.CHILD_PROTECTION_DUTY,
    )


def consent_withdrawal(key: bytes, state: ChildState, withdrawal: ConsentWithdrawn) -> list[Event]:
    """The withdrawal and what it ends, to append together: every open referral of the child that
    relied on the withdrawn consent (guardian consent, sent to a withdrawn sector) is cancelled with
    reason consent_withdrawn, once to its receiver and once to its referrer, so that each party's inbox
    holds it (the recording sector's own copy is a note to itself). Stated by the recording sector,
    party or not, as caused by the withdrawal; ids derived from it, so a retry stores nothing twice.
    Cancellations this sector still owes for an earlier withdrawal it published alone go too.
    `state`: the child before the withdrawal (services/rules/lifecycle.py `check_append` requires it)."""
    events: list[Event] = [withdrawal]
    for referral in state.referrals.values():
        if referral.relies_on_consent_for(withdrawal.sectors) and referral.referral_id not in state.owed_cancels:
            events.extend(_cancellation(key, referral, withdrawal, p) for p in (referral.receiver, referral.referrer))
    for referral_id, owed in state.owed_cancels.items():
        if owed.withdrawal.from_sector == withdrawal.from_sector:
            referral = state.referrals[referral_id]
            parties = [p for p in (referral.receiver, referral.referrer) if p in owed.parties]
            events.extend(_cancellation(key, referral, owed.withdrawal, p) for p in parties)
    return events


def _cancellation(key: bytes, referral: Referral, withdrawal: ConsentWithdrawn, party: Sector) -> ReferralCancelled:
    return ReferralCancelled(
        event_id=derived_id(key, referral.referral_id, f"consent-withdrawn:{withdrawal.event_id}:{party.value}"),
        child=withdrawal.child,
        from_sector=withdrawal.from_sector,
        to_sector=party,
        occurred_at=withdrawal.occurred_at,
        actor=withdrawal.actor,
        correlation_id=referral.correlation_id,
        causation_id=withdrawal.event_id,
        referral_id=referral.referral_id,
        reason=CancelReason.CONSENT_WITHDRAWN,
    )
