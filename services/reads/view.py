"""What one sector may read of a child's history: pure, no I/O.

A sector reads whole the events it is party to (it sent them, or they are addressed to it) and the
case facts (events addressed to no sector) while the child's consent names it. Of every other event
it gets a stand-in (`withheld`): the same event with what says which service, which finding, which
reason or which people replaced by fixed placeholders that mean nothing, so that its rules fold the
child exactly as they would the whole history (who referred whom, under which legal basis, how far
each referral got, the consent's scope, the chain) without the facts it has no need to know.
docs/decisions/0023-need-to-know-reads.md.
"""

from typing import Any

import msgspec

from refbus.contracts.events import (
    BasicServiceDelivered,
    CaseOpened,
    ChildContentErased,
    ConsentRecorded,
    ConsentWithdrawn,
    Event,
    ReferralCompleted,
    ReferralEnteredInError,
    ReferralFailed,
    ReferralOnHold,
    ReferralRejected,
    ReferralRequested,
    VulnerabilityIdentified,
)
from refbus.contracts.vocabulary import (
    SERVICE_CATALOGUE,
    BasicService,
    Dimension,
    ErrorReason,
    FailReason,
    Guardian,
    HoldReason,
    Outcome,
    RejectReason,
    Sector,
)

PLACEHOLDER_ACTOR = "w00000000"
PLACEHOLDER_HOUSEHOLD = "h" + "0" * 16
PLACEHOLDER_TEXT = "withheld"

# Per event type, the fields a non-party never sees, with the placeholder it gets instead (the first
# of each closed list: a value, so the stand-in still decodes, that `withheld` says to ignore).
_WITHHELD: dict[type[Event], dict[str, Any]] = {
    ReferralRejected: {"reason": next(iter(RejectReason))},
    ReferralOnHold: {"reason": next(iter(HoldReason))},
    ReferralFailed: {"reason": next(iter(FailReason))},
    ReferralCompleted: {"outcome": next(iter(Outcome))},
    ReferralEnteredInError: {"reason": next(iter(ErrorReason))},
    CaseOpened: {"household": PLACEHOLDER_HOUSEHOLD},
    VulnerabilityIdentified: {"dimension": next(iter(Dimension))},
    BasicServiceDelivered: {"service": next(iter(BasicService))},
    ConsentRecorded: {"given_by": next(iter(Guardian))},
    ConsentWithdrawn: {"withdrawn_by": next(iter(Guardian))},
    ChildContentErased: {"reason": PLACEHOLDER_TEXT, "erased_by": PLACEHOLDER_TEXT},
}


def consent_of(events: list[Event]) -> set[Sector]:
    """The sectors the child's consent names after these events (in log order)."""
    consent: set[Sector] = set()
    for event in events:
        if isinstance(event, ConsentRecorded):
            consent.update(event.sectors)
        elif isinstance(event, ConsentWithdrawn):
            consent.difference_update(event.sectors)
    return consent


def may_read(sector: Sector, event: Event, consent: set[Sector]) -> bool:
    """Whether `sector` reads `event` whole, given the sectors the child's consent names now."""
    if event.from_sector is sector or event.to_sector is sector:
        return True
    return event.to_sector is None and sector in consent


def placeholders(event: Event) -> dict[str, Any]:
    """The fields of `event` a non-party never sees, each with the placeholder it gets instead."""
    fields: dict[str, Any] = {"actor": PLACEHOLDER_ACTOR, **_WITHHELD.get(type(event), {})}
    if isinstance(event, ReferralRequested):
        # A service of the receiver's own catalogue, so the stand-in is as legal as the request was.
        fields |= {"service": SERVICE_CATALOGUE[event.to_sector][0], "dimension": next(iter(Dimension)), "sealed": None}
    return fields


def withheld(event: Event) -> Event:
    """The stand-in a non-party gets for `event`: only what the rules need of it stays."""
    return msgspec.structs.replace(event, **placeholders(event))
