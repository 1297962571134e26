"""The event store's interface, and its one write verb: `transact`.

`transact(child, decide)` reads the child, lets `decide` turn its state into events, checks them
against the lifecycle rules, and appends them as one unit on condition that the child's last
sequence has not moved; on a conflict it reads again and decides again. Services, the CLI, delivery
receipts and bulk import all write through it. Two stores implement the rest: `JetStreamEventStore`
(the real one) and `InMemoryEventStore` (for unit tests of handlers, in milliseconds).
"""

import asyncio
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence

import structlog

from refbus.contracts import codec
from refbus.contracts.events import Event
from refbus.services.audit import proof
from refbus.services.eventstore.records import (
    ConcurrencyConflict,
    DeadLetter,
    Decide,
    DecideTogether,
    Delivered,
    StoredEvent,
    Transacted,
)
from refbus.services.rules import lifecycle
from refbus.services.rules.state import ChildState, apply

log = structlog.get_logger(__name__)

# Children whose state a store keeps after reading or writing them, so that the next read of one is
# a count, or nothing (docs/decisions/0014-recent-children.md).
RECENT_CHILDREN = 8192

Unit = tuple[str, int, Sequence[Event], proof.Link]
"One child's part of an atomic write: (child, expected last sequence, events, its newest chain link)."


class EventStore(ABC):
    def __init__(self) -> None:
        self._recent: OrderedDict[str, ChildState] = OrderedDict()

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
            events, duplicates = _checked(state, decide(state))
            if not events:
                return Transacted([], state, duplicates)
            try:
                prev = await self._link_before(child, state, expected)
                stored, link = await self.append_linked(child, expected, events, prev)
            except ConcurrencyConflict as conflict:
                log.info("append_conflict", child=child, attempt=attempt, expected=conflict.expected)
                min_seq = max(min_seq, conflict.actual)
                state = None
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(0.5, 0.002 * 2**attempt))
                continue
            self._appended(state, link, stored)
            return Transacted(stored, state, duplicates)
        raise ConcurrencyConflict(child, -1, f"still conflicting after {attempts} attempts")

    async def transact_together(
        self, children: Sequence[str], decide: DecideTogether, *, attempts: int = 10
    ) -> list[Transacted]:
        """`transact` for one fact that belongs to several children's histories (a link between two
        references): `decide` sees each child's current state and gives events of those children;
        each is checked against its own child's state, and all are appended together or not at all,
        each child's under its own expected last sequence (one atomic batch). One Transacted per child,
        in the order given. Everything that belongs to one child goes through `transact`."""
        if len(set(children)) != len(children) or not children:
            raise ValueError(f"distinct children expected, got {list(children)}")
        for attempt in range(attempts):
            states = {child: await self.load(child) for child in children}
            expected = {child: state.last_seq for child, state in states.items()}
            by_child: dict[str, list[Event]] = {child: [] for child in children}
            for event in decide(states):
                if event.child not in by_child:
                    raise ValueError(f"decide gave an event of {event.child}, not of {list(children)}")
                by_child[event.child].append(event)
            checked = {child: _checked(states[child], by_child[child]) for child in children}
            parts = [(child, events) for child, (events, _) in checked.items() if events]
            if not parts:
                return [Transacted([], states[child], checked[child][1]) for child in children]
            try:
                units: list[Unit] = [
                    (child, expected[child], events, await self._link_before(child, states[child], expected[child]))
                    for child, events in parts
                ]
                stored = await self.append_together(units)
            except ConcurrencyConflict as conflict:
                log.info("append_conflict", children=list(children), attempt=attempt, expected=conflict.expected)
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(0.5, 0.002 * 2**attempt))
                continue
            results = {child: Transacted([], states[child], checked[child][1]) for child in children}
            for (child, _, events, prev), seqs in zip(units, stored, strict=True):
                self._appended(states[child], _chained(prev, events), seqs)
                results[child] = Transacted(seqs, states[child], checked[child][1])
            return [results[child] for child in children]
        raise ConcurrencyConflict(",".join(children), -1, f"still conflicting after {attempts} attempts")

    async def _link_before(self, child: str, state: ChildState, expected: int) -> proof.Link:
        """The child's newest chain link, which the next append links on: the state's own when it
        is the link of `expected`, else read."""
        known = proof.Link(state.chain_pos, state.chain_hash) if state.chain_seq == expected else None
        return await self._prev_link(child, expected, known)

    def _appended(self, state: ChildState, link: proof.Link, seqs: list[int]) -> None:
        """`state` (which the appended events were applied to) moved to their stored sequences and
        chain link (`link`: the newest's), and kept: the expected-sequence check proved nothing came
        between."""
        state.last_seq = max(state.last_seq, seqs[-1])
        state.chain_pos, state.chain_hash, state.chain_seq = link.pos, link.hash, seqs[-1]
        self._remember(state.copy())

    # -- what each store provides ----------------------------------------------------------------

    @abstractmethod
    async def append(
        self, child: str, expected_last_seq: int, events: Sequence[Event], prev: proof.Link | None = None
    ) -> list[int]:
        """Store one child's events together if its last sequence is still `expected_last_seq`;
        their sequences. `prev`: the child's newest link in its hash chain (read when not given).
        No rules checked here: write through `transact`."""

    @abstractmethod
    async def append_together(self, units: Sequence[Unit]) -> list[list[int]]:
        """Several children's events stored all together or none, each (child, expected last
        sequence, events, the child's newest chain link) checked as `append` checks one; their
        sequences, per unit. No rules checked here: write through `transact_together`."""

    async def append_linked(
        self, child: str, expected_last_seq: int, events: Sequence[Event], prev: proof.Link | None = None
    ) -> tuple[list[int], proof.Link]:
        """`append`, and the child's chain link after the events (a store that builds the links as it
        writes hands back its own: the JetStream store's writer, so nothing is encoded twice)."""
        stored = await self.append(child, expected_last_seq, events, prev)
        return stored, _chained(await self._prev_link(child, expected_last_seq, prev), events)

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

    @abstractmethod
    async def event_count(self, child: str) -> int:
        """How many events the log holds for the child, every acknowledged write counted."""

    async def load(
        self, child: str, *, min_seq: int = 0, fresh: bool = True, legal: Delivered | None = None
    ) -> ChildState:
        """The child's state as of every acknowledged write (and at least `min_seq`). `fresh=False`
        skips read-your-writes: for writers whose appends the sequence check protects anyway.
        `legal`: an event as delivered; IllegalEvent if it was not legal where the log put it (a
        reader's check of what a raw writer may have slipped in). A child read or written lately
        is not read again (docs/decisions/0014-recent-children.md)."""
        known = self._recent.get(child)
        if known is None and legal is not None and not fresh:
            known = ChildState(child=child, events_folded=0)  # the delivered event may be its first
        state = await self._from_known(known, min_seq, fresh, legal) if known is not None else None
        if state is None:
            state = ChildState(child=child, events_folded=0)
            for stored in await self.history(child, min_seq=min_seq, fresh=fresh, paged=False):
                _fold(state, stored.seq, stored.event, proof.parse_link(stored.chain))
        if state is not known:
            self._remember(state)
        if legal is not None and legal.seq in state.illegal:
            raise lifecycle.IllegalEvent(legal.event, state.illegal[legal.seq])
        return state.copy()

    async def _from_known(
        self, known: ChildState, min_seq: int, fresh: bool, legal: Delivered | None
    ) -> ChildState | None:
        """The child from the state kept of it, if that is still all there is; None to read it."""
        if legal is not None and legal.seq > known.last_seq:
            # The delivered event chains on the newest one known: the child has nothing between.
            if fresh or legal.link is None or known.chain_seq != known.last_seq:
                return None
            if legal.link != proof.next_link(proof.Link(known.chain_pos, known.chain_hash), legal.body):
                return None
            _fold(known, legal.seq, legal.event, legal.link)  # the kept state moves on, in place
            return known
        if fresh:
            return known if await self.event_count(known.child) == known.events_folded else None
        return known if known.last_seq >= min_seq else None

    def kept(self, child: str) -> ChildState | None:
        """A copy of the state kept of the child, if any: a writer's best guess, possibly behind the
        log (`transact(state=...)` takes it; the append's sequence check catches a stale one)."""
        known = self._recent.get(child)
        return known.copy() if known is not None else None

    def _remember(self, state: ChildState) -> None:
        """Keep a state that folds all the child's events (this very object: nobody else may hold
        it); a newer one never gives way."""
        if state.events_folded is None:
            return
        kept = self._recent.get(state.child)
        if kept is not None and kept.last_seq > state.last_seq:
            return
        self._recent[state.child] = state
        self._recent.move_to_end(state.child)
        if len(self._recent) > RECENT_CHILDREN:
            self._recent.popitem(last=False)


def _chained(prev: proof.Link, events: Sequence[Event]) -> proof.Link:
    """The chain link after `events`, from `prev`."""
    link = prev
    for event in events:
        link = proof.next_link(link, codec.encode(event))
    return link


def _checked(state: ChildState, decided: Iterable[Event]) -> tuple[list[Event], int]:
    """The events of `decided` the child does not have yet, each checked against the rules and
    applied to `state` (tentatively: the next is checked against it), and how many it had."""
    events: list[Event] = []
    duplicates = 0
    for event in decided:
        if lifecycle.is_duplicate(state, event):
            duplicates += 1
            continue
        lifecycle.check(state, event)
        apply(state, event)
        events.append(event)
    lifecycle.check_append(state, events)  # a consent withdrawal cancels what relied on it, here
    return events, duplicates


def _fold(state: ChildState, seq: int, event: Event | None, link: proof.Link | None) -> None:
    """One stored event into a state folded from the log: checked against the rules on the way. An
    event a raw writer slipped in (illegal there, or a replay of one the child has) is noted, not
    refused (the log holds it), and not folded: the services decide on the legal history alone
    (docs/decisions/0022-fold-only-legal-events.md)."""
    if event is not None:
        try:
            if lifecycle.is_duplicate(state, event):
                raise lifecycle.IllegalEvent(event, f"event {event.event_id} is already in the log")
            lifecycle.check(state, event)
        except lifecycle.IllegalEvent as exc:
            state.illegal[seq] = exc.reason
            event = None
    if event is not None:
        apply(state, event, seq)
    else:
        state.last_seq = seq  # unreadable or not folded, but the next append must still expect it
        if state.events_folded is not None:
            state.events_folded += 1
    if link is not None and link.pos > state.chain_pos:
        state.chain_pos, state.chain_hash, state.chain_seq = link.pos, link.hash, seq
