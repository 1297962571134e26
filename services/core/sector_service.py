"""One sector's service: a durable consumer on the sector's inbox, thin handlers around the policy.

Ack policy is manual and explicit: ack after the resulting events are acknowledged by JetStream,
nak with a growing delay on a transient failure (bounded by max_deliver; exhausted messages are
captured in the dead-letter stream by their advisory), and set aside what cannot be decoded.
"""

import asyncio
import hashlib
import importlib
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import structlog
from faststream import FastStream
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy

from refbus.contracts import codec, subjects
from refbus.contracts.events import (
    AnyEvent,
    ReferralEvent,
    ReferralRequested,
    event_type,
)
from refbus.contracts.vocabulary import Sector, Status
from refbus.services.core.app import service_app
from refbus.services.core.eventlog import ConcurrencyConflict, EventLog
from refbus.services.core.inbox import Inbox, ensure_consumer
from refbus.services.core.logs import configure_logging
from refbus.services.core.settings import Settings
from refbus.services.referral.lifecycle import IllegalEvent, check
from refbus.services.referral.policy import SectorPolicy, Step
from refbus.services.referral.state import ChildState, apply
from refbus.services.referral.work import onward_request, receipt, step_event

log = structlog.get_logger(__name__)

# Deliveries include the scheduled returns of a referral in work (about five): bounded all the same.
MAX_DELIVER = 20
# A referral whose next step is due later goes back to the server (nak with that delay) and holds an
# ack-pending slot until it is closed: the limit bounds the referrals one sector has in work at once.
MAX_ACK_PENDING = 20_000
INLINE_WAIT = 0.05
# Referrals worked on at once. A referral holds its worker through every step due within
# INLINE_WAIT of the last, each an append awaited (a few round trips, ~0.2 s at 500 referrals/s on
# the 2-core machine): 64 were all busy at that load, and deliveries queued behind them for
# hundreds of milliseconds. A worker is a coroutine, so 256 cost little.
WORKERS = 256


class DeadLetter(msgspec.Struct, frozen=True):
    """What operators see of a message set aside: where it is in the log and why, no payload."""

    stream_seq: int
    subject: str
    consumer: str
    reason: str
    sha256: str
    size: int
    set_aside_at: datetime


def inbox_consumer(sector: Sector, ack_wait: float = 30.0) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=f"inbox-{sector.value}",
        filter_subject=subjects.inbox_filter(sector),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=MAX_DELIVER,
        max_ack_pending=MAX_ACK_PENDING,
    )


class SectorService:
    def __init__(
        self,
        sector: Sector,
        policy: SectorPolicy,
        connection: Callable[[], NATS],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sector = sector
        self.policy = policy
        self.clock = clock
        self._connection = connection
        self._eventlog: EventLog | None = None
        # Events of one child are handled one at a time, in delivery order (asyncio locks are FIFO).
        self._child_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def eventlog(self) -> EventLog:
        # Built on first use: the broker connects before it delivers the first message.
        if self._eventlog is None:
            self._eventlog = EventLog(self._connection())
        return self._eventlog

    @property
    def consumer_name(self) -> str:
        return f"inbox-{self.sector.value}"

    async def handle(self, raw: Msg) -> None:
        body = raw.data
        seq = raw.metadata.sequence.stream
        try:
            event = codec.decode(body)
        except codec.UndecodableEvent as exc:
            await self.set_aside(raw.subject, seq, body, exc.reason)
            await raw.ack()
            return
        if event.to_sector != self.sector:
            await self.set_aside(raw.subject, seq, body, f"addressed to {event.to_sector}, not {self.sector.value}")
            await raw.ack()
            return
        lock = self._child_locks[event.child]
        with structlog.contextvars.bound_contextvars(
            child=event.child, correlation_id=str(event.correlation_id), seq=seq, type=event_type(event)
        ):
            try:
                async with lock:
                    wake_in = await self.react(event, seq, first_delivery=raw.metadata.num_delivered == 1)
            except IllegalEvent as exc:
                # Decided on fresh state and still illegal: a retry cannot help. Set it aside.
                await self.set_aside(raw.subject, seq, body, f"handling refused: {exc.reason}")
                await raw.ack()
                return
            except Exception as exc:
                delivered = raw.metadata.num_delivered
                log.warning("handling_failed", error=repr(exc), delivered=delivered)
                await raw.nak(delay=min(30.0, 0.5 * 2 ** min(delivered, 6)))
                return
            finally:
                if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                    self._child_locks.pop(event.child, None)
        if wake_in is None:
            await raw.ack()
        else:
            # The server is our durable timer: the message comes back when the next step is due.
            await raw.nak(delay=wake_in)

    async def react(self, event: AnyEvent, seq: int, first_delivery: bool = False) -> float | None:
        """Handle one event addressed to us; returns seconds until it should come back, if ever."""
        match event:
            case ReferralRequested():
                return await self.work_on(event, seq, first_delivery)
            case ReferralEvent():
                # Closed loop: the receiver tells us, the referrer, how our referral went.
                log.info("referral_update", referral_id=str(event.referral_id), by=event.from_sector.value)
        return None

    async def acknowledge_receipt(self, request: ReferralRequested, seq: int) -> ChildState | None:
        """The delivery receipt at once, before reading the child: appended on condition that the
        request is still the child's newest event, when the receipt is legal knowing only the
        request. Then the child is the index up to the request plus the receipt, and no read has
        to wait for the index to copy the receipt. Returns None if the child had moved on (the
        server refused the receipt): `work_on` then reads and decides as for every later step."""
        just_requested = apply(ChildState(child=request.child), request, seq)
        event = receipt(just_requested.referrals[request.referral_id], request.child, self.clock(), request.event_id)
        try:
            check(just_requested, event)
            receipt_seq = await self.eventlog.append(event, expected_last_seq=seq)
        except (ConcurrencyConflict, IllegalEvent):
            return None
        state = await self.eventlog.load(request.child, min_seq=seq, fresh=False)
        if event.event_id not in state.event_ids:
            apply(state, event, receipt_seq)
        return state

    async def work_on(self, request: ReferralRequested, seq: int, first_delivery: bool = False) -> float | None:
        """One pass over a referral addressed to us: acknowledge receipt, then take every step the
        policy has that is due. Returns the seconds until the next step is due, or None when the
        sector has nothing more to do. Each pass starts from the log, so a redelivery resumes."""
        rid = request.referral_id

        def receive(fresh: ChildState) -> list[ReferralEvent]:
            referral = fresh.referrals[rid]
            if referral.received_at is None and referral.status is Status.REQUESTED:
                return [receipt(referral, request.child, self.clock(), request.event_id)]
            return []

        state = await self.acknowledge_receipt(request, seq) if first_delivery else None
        if state is None:
            state = (await self.eventlog.transact(request.child, receive, min_seq=seq)).state
        while True:
            referral = state.referrals[rid]
            step = await self.policy.next_step(referral, state)
            if step is None:
                if referral.status is Status.COMPLETED:
                    await self.send_onward(request, state)
                return None
            assert referral.updated_at is not None
            wait = (referral.updated_at - self.clock()).total_seconds() + step.delay
            if wait > INLINE_WAIT:
                return wait
            if wait > 0:  # a moment: cheaper to wait here than to send the message round the server
                await asyncio.sleep(wait)

            def decide(fresh: ChildState, planned: Step = step, seen: Status = referral.status) -> list[ReferralEvent]:
                # Re-check against the state at append time: a cancel may have come meanwhile.
                if fresh.referrals[rid].status != seen:
                    return []
                now, cause = self.clock(), request.event_id
                return [step_event(planned, fresh.referrals[rid], request.child, self.sector, now, cause)]

            state = (await self.eventlog.transact(request.child, decide, state=state)).state

    async def send_onward(self, request: ReferralRequested, state: ChildState) -> None:
        referral = state.referrals[request.referral_id]
        onward = await self.policy.onward(referral, state)
        completed_by = request.event_id
        events = [
            onward_request(o, referral, i, request.child, self.clock(), completed_by)
            for i, o in enumerate(onward)
        ]
        if events:
            await self.eventlog.transact(request.child, lambda _fresh: events, state=state)
            log.info("referred_onward", to=[e.to_sector.value for e in events if e.to_sector])

    async def set_aside(self, subject: str, seq: int, body: bytes, reason: str) -> None:
        """Dead-letter a message: its bytes stay in the append-only log; the record says where and why."""
        record = DeadLetter(
            stream_seq=seq,
            subject=subject,
            consumer=self.consumer_name,
            reason=reason,
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
            set_aside_at=self.clock(),
        )
        await self.eventlog.js.publish(
            subjects.dead_letter_subject(self.sector),
            msgspec.json.encode(record),
            headers={"Nats-Msg-Id": f"dead:{self.consumer_name}:{seq}", "Refbus-Reason": reason[:200]},
        )
        log.warning("set_aside", seq=seq, reason=reason)


def build_app(sector: Sector, policy: SectorPolicy, settings: Settings, workers: int = WORKERS) -> FastStream:
    """The composition root of one sector's service."""
    inboxes: list[Inbox] = []
    connections: list[NATS] = []
    service = SectorService(sector, policy, lambda: connections[0])

    async def start_inbox(nc: NATS) -> None:
        # The inbox is ours, not a FastStream subscriber: see services/core/inbox.py.
        connections.append(nc)
        await ensure_consumer(nc.jetstream(), subjects.STREAM, inbox_consumer(sector, settings.ack_wait))
        inboxes.append(Inbox(nc, subjects.STREAM, service.consumer_name, service.handle, workers))
        await inboxes[0].start()
        log.info("sector_service_started", sector=sector.value, consumer=service.consumer_name)

    async def stop_inbox() -> None:
        for inbox in inboxes:
            await inbox.stop(wait=5.0)

    app = service_app(sector.value, settings, start_inbox, stop_inbox)
    app.service = service  # type: ignore[attr-defined]  # for tests and the CLI
    return app


def sector_app_factory(sector: Sector) -> Callable[..., FastStream]:
    """`create_app` for a sector's main.py: its policy comes from services/<sector>/policy.py."""

    def create_app(settings: Settings | None = None) -> FastStream:
        settings = settings or Settings.from_env()
        if not structlog.is_configured():
            configure_logging()
        policy_module = importlib.import_module(f"refbus.services.{sector.value}.policy")
        return build_app(sector, policy_module.build_policy(settings), settings)

    return create_app
