"""The deadline service: rebuilds open referrals' deadlines from the log on start, follows the log,
and appends the notices of passed deadlines through `transact` (docs/decisions/0008-deadlines.md).

It follows by replay passes: each `step` replays the log from the tracker's position to the end as
it is then (an ordered consumer per pass, services/eventstore/replay.py) and fires what is due. A
pass that finds nothing new costs one stream-info request; a pass made after a server restart or a
reconnect starts afresh, so there is no long-lived consumer to lose. The tracker's memory is the
open referrals of the sectors it serves, and the timer is the clock compared with the heap's top
each `tick`: deadlines are minutes to days, a second's lateness is nothing.
"""

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import structlog

from refbus.contracts.vocabulary import Sector
from refbus.services.deadlines.tracker import DeadlineTracker
from refbus.services.eventstore.store import EventStore
from refbus.services.rules.deadlines import DEFAULT_TABLE, DeadlineTable

log = structlog.get_logger(__name__)

TICK_S = 1.0


class DeadlineService:
    def __init__(
        self,
        store: EventStore,
        id_key: bytes,
        table: DeadlineTable = DEFAULT_TABLE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sectors: Iterable[Sector] = tuple(Sector),
        tick: float = TICK_S,
    ) -> None:
        self.store = store
        self.tracker = DeadlineTracker(store, id_key, table, clock, sectors)
        self.tick = tick
        self.ready = asyncio.Event()
        "Set once the deadlines have been rebuilt from the whole log as it was at start."
        self._task: asyncio.Task[None] | None = None

    async def catch_up(self) -> int:
        """Read the log from the tracker's position to its end; the number of events read."""
        read = 0
        async for stored in self.store.replay(self.tracker.position + 1):
            self.tracker.see(stored)
            read += 1
        return read

    async def step(self) -> int:
        """One pass: catch up with the log, then fire what is due. The notices appended."""
        await self.catch_up()
        self.ready.set()
        return await self.tracker.fire_due()

    async def start(self) -> None:
        started = asyncio.get_running_loop().time()
        await self.catch_up()
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

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server away, a replay stalled: the next pass resumes
                log.warning("deadline_pass_failed", error=repr(exc))
            await asyncio.sleep(self.tick)
