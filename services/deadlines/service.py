"""The deadline service: rebuilds open referrals' deadlines from the log on start, follows the log,
and appends the notices of passed deadlines through `transact` (docs/decisions/0011-deadlines.md).

How it reads the log is a follower's business: on NATS a consumer of its own (follow.py); on any
store, replay passes from the tracker's position. The timer is the clock compared with the heap's
top every `tick`: deadlines are minutes to days, a second's lateness is nothing, and a test moves
its clock and calls `step` without sleeping.
"""

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Protocol

import structlog

from refbus.contracts.vocabulary import Sector
from refbus.services.deadlines.tracker import DeadlineTracker
from refbus.services.eventstore.store import EventStore
from refbus.services.rules.deadlines import DEFAULT_TABLE, DeadlineTable

log = structlog.get_logger(__name__)

TICK_S = 1.0


class Follower(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def caught_up(self) -> None:
        """Return once the tracker has seen the log up to its end as it is now."""


class ReplayFollower:
    """Replay passes from the tracker's position (the in-memory store; any store)."""

    def __init__(self, store: EventStore, tracker: DeadlineTracker) -> None:
        self.store = store
        self.tracker = tracker

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def caught_up(self) -> None:
        async for stored in self.store.replay(self.tracker.position + 1):
            self.tracker.see(stored)


class DeadlineService:
    def __init__(
        self,
        store: EventStore,
        id_key: bytes,
        table: DeadlineTable = DEFAULT_TABLE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sectors: Iterable[Sector] = tuple(Sector),
        tick: float = TICK_S,
        follower: Callable[[DeadlineTracker], Follower] | None = None,
    ) -> None:
        self.store = store
        self.tracker = DeadlineTracker(store, id_key, table, clock, sectors)
        self.follower = follower(self.tracker) if follower else ReplayFollower(store, self.tracker)
        self.tick = tick
        self.ready = asyncio.Event()
        "Set once the deadlines have been rebuilt from the whole log as it was at start."
        self._task: asyncio.Task[None] | None = None

    async def step(self) -> int:
        """One pass: catch up with the log, then fire what is due. The notices appended."""
        await self.follower.caught_up()
        self.ready.set()
        return await self.tracker.fire_due()

    async def start(self) -> None:
        started = asyncio.get_running_loop().time()
        await self.follower.start()
        await self.follower.caught_up()
        self.ready.set()
        log.info(
            "deadlines_rebuilt",
            position=self.tracker.position,
            open_referrals=self.tracker.open_referrals,
            deadlines=self.tracker.pending,
            seconds=round(asyncio.get_running_loop().time() - started, 3),
        )
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.follower.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self.tracker.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server away: the next tick tries again
                log.warning("deadline_pass_failed", error=repr(exc))
            await asyncio.sleep(self.tick)
