"""The event store's interface, and its one write verb: `transact`.

`transact(child, decide)` reads the child, lets `decide` turn its state into events, checks them
against the lifecycle rules, and appends them as one unit on condition that the child's last
sequence has not moved; on a conflict it reads again and decides again. Services, the CLI, delivery
receipts and bulk import all write through it. Two stores implement the rest: `JetStreamEventStore`
(the real one) and `InMemoryEventStore` (for unit tests of handlers, in milliseconds).
"""

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence

import structlog

from refbus.contracts import codec
from refbus.contracts.events import Event
from refbus.services.audit import proof
from refbus.services.eventstore.records import ConcurrencyConflict, DeadLetter, Decide, StoredEvent, Transacted
from refbus.services.rules import lifecycle
from refbus.services.rules.state import ChildState, apply

log = structlog.get_logger(__name__)


class EventStore(ABC):
    # -- the one write verb ----------------------------------------------------------------------

    async def transact(
        self,
        child: str,
        decide: Decide,
        *,
        min_seq: int = 0,
        state: ChildState | None = None,
        attempts: int = 10,
    ) -> Transacted:
        """Decide against the child's current state and append the result, all of it or none.

        `state`: the caller's current view of the child, used for the first attempt instead of a read
        (a stale one only costs a conflict and a re-read; it is changed in place). `min_seq`: a
        sequence of this child known to be stored (the message being handled). Events the child
        already has are skipped (idempotent retries, beyond any dedup window). Raises IllegalEvent
        when a rule refuses an event (nothing of this call is stored), EventIdTaken, LogFull."""
        for attempt in range(attempts):
            if state is None:
                state = await self.load(child, min_seq=min_seq)
            expected = state.last_seq
            events: list[Event] = []
            duplicates = 0
            for event in decide(state):
                if lifecycle.is_duplicate(state, event):
                    duplicates += 1
                    continue
                lifecycle.check(state, event)
                apply(state, event)  # tentatively: the next event is checked against it
                events.append(event)
            if not events:
                return Transacted([], state, duplicates)
            try:
                known = state.chain_seq == expected
                prev = proof.Link(state.chain_pos, state.chain_hash) if known else None
                prev = await self._prev_link(child, expected, prev)
                stored = await self.append(child, expected, events, prev)
            except ConcurrencyConflict as conflict:
                log.info("append_conflict", child=child, attempt=attempt, expected=conflict.expected)
                min_seq = max(min_seq, conflict.actual)
                state = None
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(0.5, 0.002 * 2**attempt))
                continue
            state.last_seq = max(state.last_seq, stored[-1])
            link = prev
            for event in events:
                link = proof.next_link(link, codec.encode(event))
            state.chain_pos, state.chain_hash, state.chain_seq = link.pos, link.hash, stored[-1]
            return Transacted(stored, state, duplicates)
        raise ConcurrencyConflict(child, -1, f"still conflicting after {attempts} attempts")

    # -- what each store provides ----------------------------------------------------------------

    @abstractmethod
    async def append(
        self, child: str, expected_last_seq: int, events: Sequence[Event], prev: proof.Link | None = None
    ) -> list[int]:
        """Store one child's events together if its last sequence is still `expected_last_seq`;
        their sequences. `prev`: the child's newest link in its hash chain (read when not given).
        No rules checked here: write through `transact`."""

    async def _prev_link(self, child: str, expected_last_seq: int, prev: proof.Link | None) -> proof.Link:
        if prev is not None:
            return prev
        if expected_last_seq == 0:
            return proof.START
        # The link of the child's event at `expected_last_seq` (the append fails unless it is the last).
        history = await self.history(child, min_seq=expected_last_seq, fresh=False, paged=False)
        upto = [h for h in history if h.seq <= expected_last_seq]
        link = proof.parse_link(upto[-1].chain) if upto and upto[-1].seq == expected_last_seq else None
        return link or proof.Link(len(upto), proof.GENESIS)  # an event from before chains: no link to take

    @abstractmethod
    async def history(
        self, child: str, *, min_seq: int = 0, upto_seq: int | None = None, fresh: bool = True, paged: bool = True
    ) -> list[StoredEvent]:
        """One child's events in log order, including every write acknowledged before the call."""

    @abstractmethod
    def replay(self, from_seq: int = 1) -> AsyncIterator[StoredEvent]:
        """Every event of the log in order, from `from_seq` to the end as it is when called."""

    @abstractmethod
    async def children(self) -> dict[str, int]:
        """Every child reference in the log, with its number of events."""

    @abstractmethod
    async def set_aside(self, by: str, record: DeadLetter) -> None:
        """Keep a dead letter for operators, filed under `by` (a sector); idempotent per consumer
        and sequence."""

    async def load(
        self, child: str, *, min_seq: int = 0, fresh: bool = True, legal: tuple[int, Event] | None = None
    ) -> ChildState:
        """The child's state as of every acknowledged write (and at least `min_seq`). `fresh=False`
        skips read-your-writes: for writers whose appends the sequence check protects anyway.
        `legal=(seq, event)`: on the way, check that `event`, stored at `seq`, was legal where the log
        put it (IllegalEvent otherwise): a reader's check of what a raw writer may have slipped in."""
        state = ChildState(child=child)
        for stored in await self.history(child, min_seq=min_seq, fresh=fresh, paged=False):
            if legal is not None and stored.seq == legal[0]:
                lifecycle.check(state, legal[1])
            if stored.event is not None:
                apply(state, stored.event, stored.seq)
            else:
                state.last_seq = stored.seq  # unreadable, but the next append must still expect it
            link = proof.parse_link(stored.chain)
            if link is not None and link.pos > state.chain_pos:
                state.chain_pos, state.chain_hash, state.chain_seq = link.pos, link.hash, stored.seq
        return state
