"""The deadline service's core: open referrals' deadlines in a heap, rebuilt from the log, fired
through `transact` (docs/decisions/0011-deadlines.md).

Fed every stored event in log order (`see`), it folds only what deadlines need: referrals whose
referrer it serves, dropped once closed. Every deadline counts from the request, so a request
pushes all of its referral's deadlines at once and nothing is re-planned later: when one comes due
(`fire_due`, by the injected clock) it is checked against the tracked state and then decided again
against the child's fresh state inside `transact`, which appends the reminder (referral.overdue,
receiver -> receiver) and the escalation (referral.escalated, referrer -> referrer) together, once:
the lifecycle refuses a second notice for the same deadline by state, and the event ids are
derived from the referral and the deadline, so a retry or a second instance appends nothing.
"""

import asyncio
import heapq
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from typing import NamedTuple
from uuid import UUID

import structlog

from refbus.contracts.events import ReferralEscalated, ReferralEvent, ReferralOverdue, ReferralRequested
from refbus.contracts.vocabulary import Deadline, Sector
from refbus.services.eventstore.records import StoredEvent
from refbus.services.eventstore.store import EventStore
from refbus.services.rules.deadlines import DEFAULT_TABLE, DeadlineTable, due_times, is_pending, unnoticed
from refbus.services.rules.decisions import derived_id
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.rules.state import ChildState, Referral, apply
from refbus.services.runtime import metrics

log = structlog.get_logger(__name__)

RETRY_AFTER = timedelta(seconds=30)
"A notice whose append failed (server away, conflicts) is tried again this much later."


def deadlines_actor(sector: Sector) -> str:
    """The pseudonymous actor of a sector's automatic deadline notices (no worker acted)."""
    return "w" + blake2b(f"{sector.value}:deadlines".encode(), digest_size=6).hexdigest()


def notices(key: bytes, child: str, referral: Referral, now: datetime, table: DeadlineTable) -> list[ReferralEvent]:
    """The reminders and escalations `referral` is owed at `now`: none twice (by state)."""
    events: list[ReferralEvent] = []
    for kind, due_at in unnoticed(referral, table, now):
        common = {
            "child": child,
            "occurred_at": now,
            "correlation_id": referral.correlation_id,
            "causation_id": referral.request_event_id,
            "referral_id": referral.referral_id,
            "deadline": kind,
            "due_at": due_at,
        }
        if kind not in referral.reminded:
            event_id = derived_id(key, referral.referral_id, f"referral.overdue:{kind.value}")
            events.append(ReferralOverdue(
                actor=deadlines_actor(referral.receiver),
                event_id=event_id, from_sector=referral.receiver, to_sector=referral.receiver, **common
            ))
        if kind not in referral.escalated:
            event_id = derived_id(key, referral.referral_id, f"referral.escalated:{kind.value}")
            events.append(ReferralEscalated(
                actor=deadlines_actor(referral.referrer),
                event_id=event_id, from_sector=referral.referrer, to_sector=referral.referrer, **common
            ))
    return events


class _Due(NamedTuple):
    """A heap entry (a tuple: a frozen dataclass's __init__ cost more than the rest of `see`)."""

    at: datetime
    child: str
    referral_id: UUID
    kind: Deadline


class DeadlineTracker:
    def __init__(
        self,
        store: EventStore,
        id_key: bytes,
        table: DeadlineTable = DEFAULT_TABLE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sectors: Iterable[Sector] = tuple(Sector),
    ) -> None:
        self.store = store
        self.id_key = id_key
        self.table = table
        self.clock = clock
        self.sectors = frozenset(sectors)
        "Referrers served: a per-sector deployment publishes as that sector only."
        self.position = 0
        "The last log sequence seen."
        self.fired = 0
        "Notices this tracker appended."
        self._children: dict[str, ChildState] = {}
        self._heap: list[_Due] = []
        self._firing = asyncio.Lock()
        "One firing pass at a time: a second waits for the first's appends, then finds nothing due."

    # -- following the log ---------------------------------------------------------------------------

    def see(self, stored: StoredEvent) -> None:
        """One stored event, in log order."""
        self.position = max(self.position, stored.seq)
        event = stored.event
        if not isinstance(event, ReferralEvent):
            return
        state = self._children.get(event.child)
        if isinstance(event, ReferralRequested):
            if event.from_sector not in self.sectors:
                return
            state = self._children.setdefault(event.child, ChildState(child=event.child))
        elif state is None or event.referral_id not in state.referrals:
            return
        apply(state, event, stored.seq)
        state.event_ids.clear()  # ids are not needed here; the store's transact reads its own
        referral = state.referrals.get(event.referral_id)
        if referral is None:  # a repeated request id: the lifecycle refuses it; nothing tracked
            return
        if isinstance(event, ReferralRequested):
            for kind, at in due_times(referral, self.table):
                heapq.heappush(self._heap, _Due(at, event.child, referral.referral_id, kind))
        if not referral.is_open:
            del state.referrals[referral.referral_id]
            if not state.referrals:
                del self._children[event.child]

    @property
    def open_referrals(self) -> int:
        return sum(len(s.referrals) for s in self._children.values())

    @property
    def pending(self) -> int:
        "Deadlines in the heap (some may be met already: checked when they come due)."
        return len(self._heap)

    def next_due(self) -> datetime | None:
        return self._heap[0].at if self._heap else None

    # -- acting ----------------------------------------------------------------------------------------

    def _owed(self, due: _Due) -> bool:
        state = self._children.get(due.child)
        referral = state.referrals.get(due.referral_id) if state else None
        if referral is None or not is_pending(referral, due.kind):
            return False
        return due.kind not in referral.reminded or due.kind not in referral.escalated

    async def fire_due(self) -> int:
        """Append the notices of every deadline due by the clock; the number of events appended."""
        async with self._firing:
            return await self._fire_due()

    def compact(self) -> None:
        """Drop the heap entries of closed referrals (they wait there until their due time, checked
        and skipped): rebuilt from the open referrals when they are most of it."""
        if len(self._heap) <= 4 * self.open_referrals + 1024:
            return
        self._heap = [
            _Due(at, child, rid, kind)
            for child, state in self._children.items()
            for rid, referral in state.referrals.items()
            for kind, at in due_times(referral, self.table)
            if self._owed(_Due(at, child, rid, kind))
        ]
        heapq.heapify(self._heap)

    async def _fire_due(self) -> int:
        self.compact()
        now = self.clock()
        owed: dict[tuple[str, UUID], None] = {}
        while self._heap and self._heap[0].at <= now:
            due = heapq.heappop(self._heap)
            if self._owed(due):
                owed[(due.child, due.referral_id)] = None
        appended = 0
        for child, referral_id in owed:
            appended += await self.fire(child, referral_id, now)
        return appended

    async def fire(self, child: str, referral_id: UUID, now: datetime) -> int:
        decided: list[ReferralEvent] = []

        def decide(fresh: ChildState) -> list[ReferralEvent]:
            referral = fresh.referrals.get(referral_id)
            due = notices(self.id_key, child, referral, now, self.table) if referral else []
            decided[:] = [event for event in due if event.event_id not in fresh.event_ids]  # new ones only
            return list(decided)

        try:
            done = await self.store.transact(child, decide)
        except IllegalEvent as exc:  # decided on fresh state: only a rule change could do this
            log.error("deadline_notice_refused", child=child, referral_id=str(referral_id), reason=exc.reason)
            return 0
        except Exception as exc:
            log.warning("deadline_notice_failed", child=child, referral_id=str(referral_id), error=repr(exc))
            state = self._children.get(child)
            referral = state.referrals.get(referral_id) if state else None
            if referral is not None:  # come back for whichever deadline is owed
                for kind, _ in unnoticed(referral, self.table, now):
                    heapq.heappush(self._heap, _Due(now + RETRY_AFTER, child, referral_id, kind))
            return 0
        if done.stored:
            log.info("deadline_passed", child=child, referral_id=str(referral_id), events=len(done.stored))
            for event in decided:  # a reminder is the receiver's note to itself: its move is due
                if isinstance(event, ReferralOverdue):
                    metrics.overdue(event.from_sector)
        self.fired += len(done.stored)
        return len(done.stored)
