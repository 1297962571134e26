"""The rules of linking two child references, and the two events of one link. Pure: no I/O.

A link says a random reference (a child without documents) continues as the reference derived from
the child's papers. It is one fact stored twice, on each reference's history, in one atomic write
(EventStore.transact_together), so each rule below is checked against one child's own state under
that child's expected sequence: a concurrent link touching either reference conflicts and is
decided again. The rules keep every link one step long (docs/decisions/0017-child-references.md):
- a reference is linked onward at most once;
- a reference that others are linked into (a derived one) is never linked onward;
- a reference linked onward never has others linked into it (so no chains, and no cycles);
- a reference is not linked to itself.
"""

import hashlib
import hmac
from datetime import datetime
from uuid import UUID

from refbus.contracts.events import ChildReferenceLinked
from refbus.contracts.vocabulary import Sector
from refbus.services.rules.state import ChildState

RULES: tuple[str, ...] = (
    "a reference is not linked to itself",
    "a reference is linked onward at most once",
    "a derived reference (one others are linked into) is never linked onward",
    "a reference already linked onward has nothing linked into it: link to where it leads",
)
"The rules as data, for lifecycle.json."


def refusal(state: ChildState, event: ChildReferenceLinked) -> str | None:
    """Why `event` may not follow `state` (None: it may). `state` is the child the event is stored on."""
    if event.linked_from == event.linked_to:
        return RULES[0]
    if state.child == event.linked_from:
        if state.linked_to is not None and state.linked_to != event.linked_to:
            return f"{state.child} is already linked to {state.linked_to}: {RULES[1]}"
        if state.linked_to == event.linked_to:
            return f"{state.child} is already linked to {state.linked_to}"
        if state.linked_from:
            return (f"{state.child} has {', '.join(state.linked_from)} linked into it: "
                    "a derived reference is never linked onward")
        return None
    if state.child == event.linked_to:
        if state.linked_to is not None:
            return f"{state.child} is itself linked to {state.linked_to}: link to {state.linked_to} instead"
        if event.linked_from in state.linked_from:
            return f"{event.linked_from} is already linked to {state.child}"
        return None
    return "stored on neither of the two references it links"


def _keyed_id(key: bytes, linked_from: str, linked_to: str, label: str) -> UUID:
    message = b"refbus-link\0" + linked_from.encode() + b"\0" + linked_to.encode() + b"\0" + label.encode()
    return UUID(bytes=hmac.new(key, message, hashlib.sha256).digest()[:16], version=4)


def link_events(
    key: bytes, linked_from: str, linked_to: str, sector: Sector, actor: str, now: datetime
) -> tuple[ChildReferenceLinked, ChildReferenceLinked]:
    """The link's two events (on `linked_from`'s history, then on `linked_to`'s), with ids keyed by
    the pair under the deployment's event-id key: stating the same link again stores nothing."""
    correlation = _keyed_id(key, linked_from, linked_to, "correlation")
    return tuple(  # type: ignore[return-value]
        ChildReferenceLinked(
            event_id=_keyed_id(key, linked_from, linked_to, f"event:{side}"),
            child=side,
            from_sector=sector,
            occurred_at=now,
            actor=actor,
            correlation_id=correlation,
            linked_from=linked_from,
            linked_to=linked_to,
        )
        for side in (linked_from, linked_to)
    )
