"""One sector's service: a durable consumer on the sector's inbox, thin handlers around the policy.

Ack policy is manual and explicit: ack after the resulting events are acknowledged by JetStream,
nak with a growing delay on a transient failure (bounded by max_deliver; exhausted messages are
captured in the dead-letter stream by their advisory), and set aside what cannot be taken: bytes
that do not decode, a payload whose route is not its subject's, an event the rules refuse.
"""

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy

from refbus.contracts import codec, subjects
from refbus.contracts.events import AnyEvent, ReferralEvent, ReferralRequested, event_type
from refbus.contracts.vocabulary import Sector, Status
from refbus.services.audit import proof
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.records import ConcurrencyConflict, DeadLetter, Delivered, EventIdTaken
from refbus.services.eventstore.store import EventStore
from refbus.services.rules.decisions import onward_request, receipt, step_event
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.rules.policy import SectorPolicy, Step
from refbus.services.rules.state import ChildState, apply
from refbus.services.runtime import logs, metrics

log = structlog.get_logger(__name__)

# Deliveries include the scheduled returns of a referral in work (about five): bounded all the same.
MAX_DELIVER = 20
# A referral whose next step is due later goes back to the server (nak with that delay) and holds an
# ack-pending slot until it is closed: the limit bounds the referrals one sector has in work at once.
MAX_ACK_PENDING = 20_000
INLINE_WAIT = 0.05
# Referrals worked on at once; a worker is a coroutine (docs/decisions/0007-inbox-workers.md).
WORKERS = 256


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
        store: EventStore,
        id_key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sector = sector
        self.policy = policy
        self.store = store
        self.id_key = id_key
        "Keys the derived ids of this sector's steps (rules/decisions.py)."
        self.clock = clock
        # Events of one child are handled one at a time, in delivery order (asyncio locks are FIFO).
        self._child_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def consumer_name(self) -> str:
        return f"inbox-{self.sector.value}"

    async def handle(self, raw: Msg) -> None:
        body = raw.data
        seq, delivered = jetstream.delivery(raw.reply)
        try:
            event = codec.decode_on(raw.subject, body)
        except codec.NewerSchemaVersion as exc:
            # Kept for the upgrade: a redrive after it reads the event.
            await self.set_aside(raw.subject, seq, body, f"newer schema: {exc.reason}")
            await raw.ack()
            return
        except codec.MisroutedEvent as exc:
            await self.set_aside(raw.subject, seq, body, f"misrouted: {exc.reason}")
            await raw.ack()
            return
        except codec.UndecodableEvent as exc:
            await self.set_aside(raw.subject, seq, body, exc.reason)
            await raw.ack()
            return
        if event.to_sector != self.sector:
            await self.set_aside(raw.subject, seq, body, f"addressed to {event.to_sector}, not {self.sector.value}")
            await raw.ack()
            return
        lock = self._child_locks[event.child]
        with logs.bound(
            child=event.child, correlation_id=str(event.correlation_id), seq=seq, type=event_type(event)
        ):
            try:
                async with lock:
                    wake_in = await self.react(
                        event, seq, first_delivery=delivered == 1,
                        link=proof.parse_link((raw.headers or {}).get(proof.CHAIN)), body=body,
                    )
            except IllegalEvent as exc:
                # Decided on fresh state and still illegal: a retry cannot help. Set it aside.
                await self.set_aside(raw.subject, seq, body, f"handling refused: {exc.reason}")
                await raw.ack()
                return
            except EventIdTaken as exc:
                await self.set_aside(raw.subject, seq, body, f"handling refused: {exc}")
                await raw.ack()
                return
            except Exception as exc:
                log.warning("handling_failed", error=repr(exc), delivered=delivered)
                metrics.handler_failed(self.sector)
                if delivered >= MAX_DELIVER:
                    # The last delivery: a dead letter with the subject and the reason, which the
                    # server's advisory lacks, so that an operator can redrive it after the fix.
                    await self.set_aside(raw.subject, seq, body, f"exhausted {delivered} deliveries: {exc!r}"[:200])
                    await raw.ack()
                    return
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

    async def react(
        self, event: AnyEvent, seq: int, first_delivery: bool = False, link: proof.Link | None = None,
        body: bytes = b"",
    ) -> float | None:
        """Handle one event addressed to us; returns seconds until it should come back, if ever.
        `link`: the event's own link in its child's hash chain (its Refbus-Chain header), if known;
        `body`: its bytes as stored."""
        delivered = Delivered(seq, event, body, link)
        match event:
            case ReferralRequested():
                return await self.work_on(event, seq, first_delivery, delivered)
            case ReferralEvent():
                # Closed loop: the receiver tells us, the referrer, how our referral went; whoever
                # wrote it, it must have been legal where the log put it.
                await self.checked_state(delivered)
                log.info("referral_update", referral_id=str(event.referral_id), by=event.from_sector.value)
        return None

    async def checked_state(self, delivered: Delivered, fresh: bool = False) -> ChildState:
        """The child as the log holds it, the delivered event included; raises IllegalEvent if that
        event was not legal where the log put it (a raw writer slipped it past the services).
        `fresh`: read-your-writes, asking the log's leader (a state to decide on needs it: without it,
        recovery from a stream-leader failover broke, tests/faults/test_cluster.py)."""
        return await self.store.load(delivered.event.child, min_seq=delivered.seq, fresh=fresh, legal=delivered)

    async def acknowledge_receipt(
        self, request: ReferralRequested, seq: int, link: proof.Link | None = None, body: bytes = b""
    ) -> ChildState | None:
        """The delivery receipt at once, before reading the child: appended on condition that the
        request is still the child's newest event, when the receipt is legal knowing only the
        request. Then the child is the index up to the request plus the receipt, and no read has
        to wait for the index to copy the receipt. Returns None if the child had moved on (the
        server refused the receipt): `work_on` then reads and decides as for every later step."""
        just_requested = apply(ChildState(child=request.child), request, seq)
        if link is not None:  # the receipt chains on the request without reading it back
            just_requested.chain_pos, just_requested.chain_hash, just_requested.chain_seq = link.pos, link.hash, seq
        event = receipt(
            self.id_key, just_requested.referrals[request.referral_id], request.child, self.clock(), request.event_id
        )
        try:
            done = await self.store.transact(request.child, lambda _state: [event], state=just_requested, attempts=1)
        except ConcurrencyConflict:
            return None
        if not done.stored:
            return None
        # The request itself must have been legal where the log put it (whoever wrote it).
        state = await self.checked_state(Delivered(seq, request, body, link))
        if event.event_id not in state.event_ids:
            apply(state, event, done.stored[0])
        if state.last_seq == done.state.chain_seq:  # the receipt is the newest: its link is known
            state.chain_pos, state.chain_hash, state.chain_seq = (
                done.state.chain_pos, done.state.chain_hash, done.state.chain_seq)
        return state

    async def work_on(
        self, request: ReferralRequested, seq: int, first_delivery: bool = False, delivered: Delivered | None = None
    ) -> float | None:
        """One pass over a referral addressed to us: acknowledge receipt, then take every step the
        policy has that is due. Returns the seconds until the next step is due, or None when the
        sector has nothing more to do. Each pass starts from the log, so a redelivery resumes."""
        rid = request.referral_id

        def receive(fresh: ChildState) -> list[ReferralEvent]:
            referral = fresh.referrals[rid]
            if referral.received_at is None and referral.status is Status.REQUESTED:
                return [receipt(self.id_key, referral, request.child, self.clock(), request.event_id)]
            return []

        delivered = delivered or Delivered(seq, request)
        state = (
            await self.acknowledge_receipt(request, seq, delivered.link, delivered.body) if first_delivery else None
        )
        if state is None:  # one read: the child, the request checked on the way
            state = await self.checked_state(delivered, fresh=True)
            state = (await self.store.transact(request.child, receive, min_seq=seq, state=state)).state
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
                return [step_event(self.id_key, planned, fresh.referrals[rid], request.child, self.sector, now, cause)]

            state = (await self.store.transact(request.child, decide, state=state)).state

    async def send_onward(self, request: ReferralRequested, state: ChildState) -> None:
        referral = state.referrals[request.referral_id]
        onward = await self.policy.onward(referral, state)
        completed_by = request.event_id
        events = [
            onward_request(self.id_key, o, referral, i, request.child, self.clock(), completed_by)
            for i, o in enumerate(onward)
        ]
        if events:
            await self.store.transact(request.child, lambda _fresh: events, state=state)
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
        await self.store.set_aside(self.sector.value, record)
        metrics.set_aside(self.sector, reason)  # refbus_dead_letters_total (and refusals by rule): codes only
        log.warning("set_aside", seq=seq, reason=reason)
