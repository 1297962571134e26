"""A sector's gateway, transport-free: a command in, the stored event or a refusal out.

HTTP (http.py) and NATS request/reply (requests.py) both call `Gateway.execute`, so both transports
share one semantics and one set of refusals (contracts/commands.py ERRORS).

Idempotency: the event id is an HMAC of (sector, idempotency key) under the deployment's event-id
key, so a retried command builds an event the child already has; `transact` then stores nothing and
the first answer is read back from the child's history.
"""

import asyncio
import hashlib
import hmac
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import msgspec
import structlog

from refbus.contracts import commands as c
from refbus.contracts.content import ContentView, SealedContent
from refbus.contracts.events import (
    BasicServiceDelivered,
    CaseOpened,
    ConsentRecorded,
    ConsentWithdrawn,
    Event,
    ReferralAccepted,
    ReferralCancelled,
    ReferralCompleted,
    ReferralEnteredInError,
    ReferralEvent,
    ReferralFailed,
    ReferralInProgress,
    ReferralOnHold,
    ReferralRejected,
    ReferralRequested,
    VulnerabilityIdentified,
)
from refbus.contracts.vocabulary import Sector, Status
from refbus.services.eventstore.records import ConcurrencyConflict, EventIdTaken, LogFull
from refbus.services.eventstore.store import EventStore
from refbus.services.privacy.content import ContentKeys, KeysUnavailable, NoContentKey
from refbus.services.rules.decisions import consent_withdrawal
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.rules.state import ChildState

log = structlog.get_logger(__name__)

_REFERRAL_EVENTS: dict[type[c.ReferralCommand], type[ReferralEvent]] = {
    c.Accept: ReferralAccepted,
    c.Reject: ReferralRejected,
    c.Start: ReferralInProgress,
    c.Hold: ReferralOnHold,
    c.Resume: ReferralInProgress,
    c.Complete: ReferralCompleted,
    c.Fail: ReferralFailed,
    c.Cancel: ReferralCancelled,
    c.MarkEnteredInError: ReferralEnteredInError,
}
# start and resume both state `referral.in-progress`; the command names which move is meant.
_ONLY_FROM: dict[type[c.ReferralCommand], Status] = {c.Start: Status.ACCEPTED, c.Resume: Status.ON_HOLD}
_FIELDS = ("reason", "outcome")


class _AlreadyStored(Exception):
    def __init__(self, event_id: UUID) -> None:
        self.event_id = event_id


class _Refused(Exception):
    def __init__(self, refusal: c.Refusal) -> None:
        self.refusal = refusal


def command_id(key: bytes, sector: Sector, idempotency_key: str, label: str) -> UUID:
    """The id of what one command of one sector makes (`label`: "event" or "referral")."""
    message = b"refbus-command\0" + sector.value.encode() + b"\0" + idempotency_key.encode() + b"\0" + label.encode()
    return UUID(bytes=hmac.new(key, message, hashlib.sha256).digest()[:16], version=4)


def refusal(status: int, code: str, detail: str, *, rule: str | None = None, field: str | None = None) -> c.Refusal:
    return c.Refusal(status=status, code=code, detail=detail, rule=rule, field=field)


def invalid(error: msgspec.ValidationError | msgspec.DecodeError | str) -> c.Refusal:
    """A 422 from msgspec's message (`... - at `$.field``), naming the field."""
    text = str(error)
    field = None
    if " - at `$." in text:
        text, _, where = text.rpartition(" - at `$.")
        field = where.rstrip("`").split("[")[0].split(".")[0]
    return refusal(422, "invalid", text, field=field)


class Gateway:
    def __init__(
        self,
        sector: Sector,
        store: EventStore,
        id_key: bytes,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        content: ContentKeys | None = None,
    ) -> None:
        """`content`: this sector's content keys, to seal a referral's content and open what it is
        given (services/privacy); without them a referral with content is refused."""
        self.sector = sector
        self.store = store
        self.id_key = id_key
        self.clock = clock
        self.content = content
        # The children this gateway wrote last, as it left them: the first attempt of the next command
        # decides on that state instead of reading the child (a stale one costs a conflict and a read:
        # the append's expected sequence protects it). A child it does not know is tried as new.
        # One command per child at a time in this gateway (asyncio locks are FIFO).
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def decode(self, kind: str, body: bytes) -> c.Command | c.Refusal:
        command_type = c.COMMANDS.get(kind)
        if command_type is None:
            return refusal(404, "not_found", f"no command {kind!r}")
        try:
            return msgspec.json.decode(body, type=command_type)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return invalid(exc)

    async def execute(self, command: c.Command) -> c.Applied | c.Refusal:
        lock = self._locks[command.child]
        try:
            async with lock:
                return await self._answer(command)
        finally:
            if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                self._locks.pop(command.child, None)

    async def _answer(self, command: c.Command) -> c.Applied | c.Refusal:
        try:
            return await self._execute(command)
        except _Refused as exc:
            return exc.refusal
        except IllegalEvent as exc:
            return refusal(409, "illegal_transition", f"refused: {exc.reason}", rule=exc.reason)
        except EventIdTaken:
            # The key makes the event id, and the log holds another event under it (another child's):
            # a retry with this key can never succeed.
            return refusal(409, "idempotency_key_reused", "this idempotency key was used for another command")
        except ConcurrencyConflict as exc:
            log.info("command_conflict", error=str(exc))
            return refusal(409, "conflict", "the child changed under concurrent writers; retry with the same key")
        except LogFull:
            return refusal(503, "unavailable", "the log is full; an operator must raise its limit")
        except (KeysUnavailable, NoContentKey) as exc:
            log.warning("content_keys_unavailable", error=str(exc))
            return refusal(503, "unavailable", "the content could not be sealed; retry with the same key")
        except (TimeoutError, OSError) as exc:
            log.warning("command_unavailable", error=repr(exc))
            return refusal(503, "unavailable", "the log could not be reached; retry with the same key")

    async def _execute(self, command: c.Command) -> c.Applied | c.Refusal:
        event_id = command_id(self.id_key, self.sector, command.idempotency_key, "event")
        built: list[Event] = []
        # The store's kept state, or a guess that the child is new: either may be behind the log,
        # which the append's sequence check catches (a conflict, then a fresh read).
        remembered: ChildState | None = (
            self.store.kept(command.child) or ChildState(child=command.child, events_folded=0)
        )
        sealed = None
        if isinstance(command, c.Refer) and command.content is not None and event_id not in remembered.event_ids:
            sealed = await self._seal(command, event_id)

        def decide(state: ChildState) -> list[Event]:
            built.clear()
            if event_id in state.event_ids:
                raise _AlreadyStored(event_id)
            built.append(self.event_for(command, event_id, state, sealed=sealed))
            if isinstance(built[0], ConsentWithdrawn):  # with the cancellations of what relied on it
                return consent_withdrawal(self.id_key, state, built[0])
            return list(built)

        while True:
            try:
                done = await self.store.transact(command.child, decide, state=remembered)
                break
            except _AlreadyStored:
                return await self._first_answer(command, event_id)
            except (IllegalEvent, _Refused):
                if remembered is None:
                    raise
                # Decided on what this gateway remembered (or guessed): refuse only on the log as it is.
                remembered = None
        if not done.stored:  # the event was in the state given to decide after all
            return await self._first_answer(command, event_id)
        event = built[0]
        content = ContentView(state="clear", content=command.content) if sealed is not None else None
        return c.Applied(
            status=201, seq=done.stored[0], event_id=event.event_id, referral_id=_referral_of(event), event=event,
            content=content,
        )

    async def _seal(self, command: c.Refer, event_id: UUID) -> SealedContent:
        if self.content is None:
            raise NoContentKey(f"the {self.sector.value} gateway has no content keys")
        if command.to_sector == self.sector:
            raise _Refused(refusal(409, "illegal_transition", "refused: a referral goes to another sector",
                                   rule="a referral goes to another sector"))
        assert command.content is not None
        referral_id = command_id(self.id_key, self.sector, command.idempotency_key, "referral")
        return await self.content.seal(command.content, child=command.child, referral_id=referral_id,
                                       event_id=event_id, from_sector=self.sector, to_sector=command.to_sector)

    async def view(self, event: Event) -> ContentView | None:
        """`event`'s content as this sector reads it (None: no content, or no content keys here)."""
        return None if self.content is None else await self.content.open(event)

    async def _first_answer(self, command: c.Command, event_id: UUID) -> c.Applied | c.Refusal:
        for stored in reversed(await self.store.history(command.child, paged=False)):
            event = stored.event
            if event is None or event.event_id != event_id:
                continue
            view = await self.view(event)
            if not self._same_command(command, event) or not _same_content(command, event, view):
                return refusal(409, "idempotency_key_reused", "this idempotency key was used for another command")
            return c.Applied(
                status=200, seq=stored.seq, event_id=event_id, referral_id=_referral_of(event), event=event,  # type: ignore[arg-type]
                content=view,
            )
        return refusal(409, "conflict", "the first attempt's event is not readable yet; retry with the same key")

    def _same_command(self, command: c.Command, stored: Event) -> bool:
        """Would this command make the stored event (its time and state-derived fields aside)?"""
        state = ChildState(child=command.child)
        if isinstance(stored, ReferralEvent) and not isinstance(stored, ReferralRequested):
            # Rebuild against a referral that looks as the stored one's counterpart expects.
            return (
                isinstance(command, c.ReferralCommand)
                and type(stored) is _REFERRAL_EVENTS.get(type(command))
                and stored.referral_id == command.referral_id
                and stored.actor == command.actor
                and all(getattr(stored, f, None) == getattr(command, f, None) for f in _FIELDS)
            )
        try:
            again = self.event_for(command, stored.event_id, state, check_state=False)
        except (_Refused, IllegalEvent):
            return False
        again = msgspec.structs.replace(again, occurred_at=stored.occurred_at, correlation_id=stored.correlation_id)
        if isinstance(again, ReferralRequested) and isinstance(stored, ReferralRequested):
            again = msgspec.structs.replace(again, sealed=stored.sealed)  # compared opened (_same_content)
        return again == stored

    def event_for(self, command: c.Command, event_id: UUID, state: ChildState, check_state: bool = True,
                  sealed: SealedContent | None = None) -> Event:
        """The event `command` states, as this sector, given the child's state (`sealed`: a
        referral's content, sealed for this event)."""
        now = command.occurred_at or self.clock()
        key = command.idempotency_key
        base = {
            "event_id": event_id,
            "child": command.child,
            "from_sector": self.sector,
            "occurred_at": now,
            "actor": command.actor,
        }
        chain = command_id(self.id_key, self.sector, key, "correlation")
        match command:
            case c.OpenCase():
                return CaseOpened(**base, correlation_id=chain, household=command.household)
            case c.RecordVulnerability():
                return VulnerabilityIdentified(**base, correlation_id=chain, dimension=command.dimension)
            case c.RecordBasicService():
                return BasicServiceDelivered(**base, correlation_id=chain, service=command.service)
            case c.RecordConsent():
                return ConsentRecorded(**base, correlation_id=chain, given_by=command.given_by, sectors=command.sectors)
            case c.WithdrawConsent():
                return ConsentWithdrawn(
                    **base, correlation_id=chain, withdrawn_by=command.withdrawn_by, sectors=command.sectors
                )
            case c.Refer():
                return ReferralRequested(
                    **base,
                    to_sector=command.to_sector,
                    correlation_id=command.correlation_id or chain,
                    referral_id=command_id(self.id_key, self.sector, key, "referral"),
                    dimension=command.dimension,
                    service=command.service,
                    urgency=command.urgency,
                    legal_basis=command.legal_basis,
                    respond_by=command.respond_by,
                    sealed=sealed,
                )
            case c.ReferralCommand():
                referral = state.referrals.get(command.referral_id)
                kind = _REFERRAL_EVENTS[type(command)]
                if referral is None:
                    raise _Refused(
                        refusal(409, "illegal_transition", "no such referral for this child",
                                rule="no such referral for this child", field="referral_id")
                    )
                wanted = _ONLY_FROM.get(type(command))
                if check_state and wanted is not None and referral.status is not wanted:
                    rule = f"{_kind_name(command)} is allowed only from status {wanted.value}"
                    raise _Refused(refusal(409, "illegal_transition", f"refused: {rule}", rule=rule))
                extra = {f: getattr(command, f) for f in _FIELDS if hasattr(command, f)}
                return kind(
                    **base,
                    to_sector=referral.counterpart(self.sector),
                    correlation_id=referral.correlation_id,
                    causation_id=None,
                    referral_id=referral.referral_id,
                    **extra,
                )
        raise TypeError(f"not a command: {type(command).__name__}")


def _kind_name(command: c.Command) -> str:
    return next(k for k, t in c.COMMANDS.items() if t is type(command))


def _same_content(command: c.Command, stored: Event, view: ContentView | None) -> bool:
    """Does a retried refer carry the content the stored referral sealed? (Erased or unreadable
    content cannot be compared: the retry is answered with what the log holds.)"""
    if not isinstance(command, c.Refer) or not isinstance(stored, ReferralRequested):
        return True
    if (command.content is None) != (stored.sealed is None):
        return False
    return view is None or view.state != "clear" or view.content == command.content


def _referral_of(event: Event) -> UUID | None:
    return event.referral_id if isinstance(event, ReferralEvent) else None
