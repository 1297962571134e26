"""Synthetic events for tests: fresh pseudonymous ids each time, so tests never need cleaning."""

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from refbus.contracts.events import (
    ConsentRecorded,
    ReferralEvent,
    ReferralRequested,
)
from refbus.contracts.vocabulary import Dimension, Guardian, LegalBasis, Sector, Urgency
from refbus.services.eventstore.store import EventStore


def new_child() -> str:
    return "c" + secrets.token_hex(8)


def new_worker() -> str:
    return "w" + secrets.token_hex(4)


def envelope(child: str, frm: Sector, to: Sector | None, correlation: uuid.UUID | None = None) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "child": child,
        "from_sector": frm,
        "to_sector": to,
        "occurred_at": datetime.now(UTC),
        "actor": new_worker(),
        "correlation_id": correlation or uuid.uuid4(),
    }


def request(
    child: str,
    frm: Sector = Sector.SOCIAL,
    to: Sector = Sector.HEALTH,
    service: str = "family_doctor_registration",
    legal_basis: LegalBasis = LegalBasis.CHILD_PROTECTION_DUTY,
    **fields: Any,
) -> ReferralRequested:
    rid = uuid.uuid4()
    return ReferralRequested(
        **envelope(child, frm, to, correlation=rid),
        referral_id=rid,
        dimension=fields.pop("dimension", Dimension.HEALTH),
        service=service,
        urgency=fields.pop("urgency", Urgency.ROUTINE),
        legal_basis=legal_basis,
        **fields,
    )


def answer(kind: type[ReferralEvent], to: ReferralRequested, by: Sector | None = None, **fields: Any) -> Any:
    """`kind` about the referral `to`, stated by `by` (default: its receiver) to the other party."""
    by = by or to.to_sector
    assert by is not None
    other = to.to_sector if by == to.from_sector else to.from_sector
    return kind(**envelope(to.child, by, other, to.correlation_id), referral_id=to.referral_id, **fields)


def consent(child: str, sectors: tuple[Sector, ...], by: Sector = Sector.SOCIAL) -> ConsentRecorded:
    return ConsentRecorded(**envelope(child, by, None), given_by=Guardian.PARENT, sectors=sectors)


async def record(store: EventStore, event: Any) -> int | None:
    """Check and store one event through the store's one write verb; its sequence, or None when the
    child already had it."""
    stored = (await store.transact(event.child, lambda _state: [event])).stored
    return stored[0] if stored else None
