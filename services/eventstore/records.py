"""What the event store hands out and the ways it refuses: shared by every store (JetStream, in memory)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import msgspec

from refbus.contracts.events import AnyEvent, Event
from refbus.services.audit.proof import Link
from refbus.services.rules.state import ChildState


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as the log holds it. (A Struct, not a dataclass: a replay makes a million of them.)"""

    seq: int
    "Sequence in REFBUS: the log's total order."
    stored_at: datetime
    event: AnyEvent | None
    error: str | None = None
    "Why the stored message is not taken as an event (undecodable, or its payload and subject disagree)."
    chain: str | None = None
    "Its Refbus-Chain header: place and hash in the child's chain (services/audit/proof.py)."
    key: str | None = None
    "Its Refbus-Key header: the key that signs it."
    sig: str | None = None
    "Its Refbus-Sig header, on the last event of a signing group."
    withheld: bool = False
    """A stand-in for an event the reading sector is not party to (services/reads/view.py): for its
    rules to fold, never to show."""


class Delivered(NamedTuple):
    """An event as a consumer got it from the log: where it is, its bytes and its chain link."""

    seq: int
    event: Event
    body: bytes = b""
    link: Link | None = None


class DeadLetter(msgspec.Struct, frozen=True):
    """What operators see of a message set aside: where it is in the log and why, no payload."""

    stream_seq: int
    subject: str
    consumer: str
    reason: str
    sha256: str
    size: int
    set_aside_at: datetime


class RedriveRequest(msgspec.Struct, frozen=True):
    """An operator's request that a sector handle log message `stream_seq` again (after a fix): kept
    in REFBUS_DEAD_LETTERS on `refbus.dead.<sector>.redrive` under Nats-Msg-Id
    `redrive:<consumer>:<stream_seq>`. No payload: the log holds the bytes."""

    dead_letter: int
    "The dead letter's sequence in REFBUS_DEAD_LETTERS (its ID in `refbus dead`)."
    stream_seq: int
    subject: str
    consumer: str
    requested_at: datetime


class ConcurrencyConflict(Exception):
    """Another write reached the child first; re-read its history and decide again."""

    def __init__(self, child: str, expected: int, detail: str, actual: int = 0) -> None:
        super().__init__(f"child {child}: expected last sequence {expected}, server says {detail}")
        self.child = child
        self.expected = expected
        self.actual = actual
        "The child's last sequence when the server names it (0 when unknown): the re-read waits for it."


class EventIdTaken(Exception):
    """The log already holds another message under this event's id: the event was not stored.
    Never taken for a duplicate of our own write (issue 12: a squatted id dropped an event)."""

    def __init__(self, event: Event, seq: int) -> None:
        super().__init__(f"event id {event.event_id} is already used by another message (seq {seq})")
        self.event = event
        self.seq = seq


class LogFull(Exception):
    """The stream is at its configured limit and refuses new events (discard=new): nothing was
    stored, nothing old was dropped. An operator must raise the limit."""


class IndexBehind(Exception):
    """Neither the child index nor the log shows yet an event the caller knows is stored."""


Decide = Callable[[ChildState], Sequence[Event]]
"Turns a child's current state into the events to append (none: nothing to do)."

DecideTogether = Callable[[dict[str, ChildState]], Sequence[Event]]
"Turns several children's current states (by reference) into events of those children."


@dataclass(frozen=True, slots=True)
class Transacted:
    stored: list[int]
    "Sequences of the events this call stored."
    state: ChildState
    "The child after them: current as far as this writer knows."
    duplicates: int = 0
    "Events `decide` gave that the child already had (a retry): skipped."
