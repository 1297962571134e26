"""Bulk writes (import, the demo's community): many children's events through the one write verb,
`EventStore.transact`, many children at once so that group commit fills its atomic batches.

Each child's events go in order, a slice at a time, each slice one `transact` (checked by the rules,
appended all or nothing). A child the log does not know starts from an empty state without a read;
one it knows is read once. A refusal judged on a stale state is retried from a fresh read.
"""

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from refbus.contracts.events import ConsentWithdrawn, Event, ReferralCancelled
from refbus.contracts.vocabulary import CancelReason
from refbus.services.eventstore.records import EventIdTaken
from refbus.services.eventstore.store import EventStore
from refbus.services.rules import lifecycle
from refbus.services.rules.state import ChildState

CHILDREN_AT_ONCE = 2048
SLICE = 100
"Events of one child per transact: bounded so that one busy child does not fill a batch alone."
LISTING_FROM = 256
"With more children than this, one listing of the log tells which are new (no read for those)."


@dataclass
class WriteReport:
    stored: int = 0
    duplicates: int = 0
    "Already in the log (a retry or a resumed import): skipped, not stored again."
    refused: list[lifecycle.IllegalEvent] = field(default_factory=list)


class BulkWriter:
    """Writes many children's events; keeps each child's state between calls, so that an import in
    chunks reads a child at most once."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._states: dict[str, ChildState] = {}

    async def write(self, events: Iterable[Event]) -> WriteReport:
        """Append `events` (each child's in order; children may interleave). Raises LogFull when the
        stream is at its limit."""
        report = WriteReport()
        per_child: dict[str, list[Event]] = {}
        for event in events:
            per_child.setdefault(event.child, []).append(event)
        unknown = [child for child in per_child if child not in self._states]
        known = await self.store.children() if len(unknown) > LISTING_FROM else None
        for child in unknown:
            if known is not None and child not in known:
                self._states[child] = ChildState(child=child)
        gate = asyncio.Semaphore(CHILDREN_AT_ONCE)

        async def write_child(child: str, todo: list[Event]) -> None:
            async with gate:
                state = self._states.pop(child, None)
                for part in slices(todo):
                    state = await _write_slice(self.store, child, part, state, report)
                if state is not None:
                    self._states[child] = state

        await asyncio.gather(*(write_child(child, todo) for child, todo in per_child.items()))
        return report


def slices(todo: list[Event], size: int = SLICE) -> Iterator[list[Event]]:
    """One child's events `size` at a time, a consent withdrawal never apart from the cancellations
    that follow it: the rules want them in its own append (services/rules/lifecycle.py)."""
    start = 0
    while start < len(todo):
        end = min(start + size, len(todo))
        withdrawals = {e.event_id for e in todo[start:end] if isinstance(e, ConsentWithdrawn)}
        while end < len(todo) and withdrawals and _caused_by(todo[end], withdrawals):
            end += 1
        yield todo[start:end]
        start = end


def _caused_by(event: Event, withdrawals: set[object]) -> bool:
    return (
        isinstance(event, ReferralCancelled)
        and event.reason is CancelReason.CONSENT_WITHDRAWN
        and event.causation_id in withdrawals
    )


async def write_all(store: EventStore, events: Iterable[Event]) -> WriteReport:
    """Append `events` once (see BulkWriter)."""
    return await BulkWriter(store).write(events)


async def _write_slice(
    store: EventStore, child: str, events: list[Event], state: ChildState | None, report: WriteReport
) -> ChildState | None:
    """One slice; an event the rules refuse is reported and left out, the rest written."""
    remaining = list(events)
    while remaining:
        try:
            done = await store.transact(child, lambda _state, todo=remaining: todo, state=state)
        except lifecycle.IllegalEvent as refused:
            if state is not None:
                # Judged on a guessed or tentatively advanced state: only final on a fresh read.
                state = None
                continue
            report.refused.append(refused)
            remaining = [e for e in remaining if e.event_id != refused.event.event_id]
            continue
        except EventIdTaken as taken:
            report.refused.append(lifecycle.IllegalEvent(taken.event, str(taken)))
            remaining = [e for e in remaining if e.event_id != taken.event.event_id]
            state = None
            continue
        report.stored += len(done.stored)
        report.duplicates += done.duplicates
        return done.state
    return state
