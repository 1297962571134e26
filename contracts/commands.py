"""Commands a sector system sends to its sector's gateway, and the gateway's answers.

A command asks the gateway to state one fact as the caller's sector; the gateway decides it against
the child's current state (the lifecycle rules), stores the event, and answers with it (`Applied`),
or refuses (`Refusal`, naming the rule or the field). The same payloads travel over HTTP
(contracts/schema/openapi.json) and NATS request/reply (contracts/schema/asyncapi.json).

Every command carries an `idempotency_key` chosen by the caller: the gateway derives the event's id
from (sector, key), so a retried command is answered with the first answer and nothing is stored
twice, for as long as the log lasts (not only within a dedup window). The same key with a different
command is refused (409 `idempotency_key_reused`).
"""

from typing import Annotated
from uuid import UUID

import msgspec

from refbus.contracts.content import ContentView, ReferralContent
from refbus.contracts.events import (
    AnyEvent,
    ChildRef,
    HouseholdRef,
    Sectors,
    ServiceCode,
    UtcTime,
    WorkerRef,
)
from refbus.contracts.vocabulary import (
    BasicService,
    CancelReason,
    Dimension,
    ErrorReason,
    FailReason,
    Guardian,
    HoldReason,
    LegalBasis,
    Outcome,
    RejectReason,
    Sector,
    Urgency,
)

IdempotencyKey = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9._:-]{8,64}$",
        min_length=8,
        max_length=64,
        description=(
            "Chosen by the caller, unique per intended command (a UUID will do). A retry with the same key is "
            "answered with the first answer and stores nothing; the same key with another command is refused."
        ),
    ),
]


class Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every command carries. The sector is the caller's (its credentials), never a field."""

    idempotency_key: IdempotencyKey
    child: ChildRef
    actor: WorkerRef
    occurred_at: UtcTime | None = None
    "When it happened in the sector's system (UTC offset required); default: when the gateway takes it."


class OpenCase(Command, frozen=True, kw_only=True):
    household: HouseholdRef


class RecordVulnerability(Command, frozen=True, kw_only=True):
    dimension: Dimension


class RecordBasicService(Command, frozen=True, kw_only=True):
    service: BasicService


class RecordConsent(Command, frozen=True, kw_only=True):
    given_by: Guardian
    sectors: Sectors


class WithdrawConsent(Command, frozen=True, kw_only=True):
    withdrawn_by: Guardian
    sectors: Sectors


class Refer(Command, frozen=True, kw_only=True):
    """A referral to another sector. No open case is needed first. `guardian_consent` needs the
    guardian's consent on record naming `to_sector`; the statutory bases need none."""

    to_sector: Sector
    dimension: Dimension
    service: ServiceCode
    urgency: Urgency
    legal_basis: LegalBasis
    respond_by: UtcTime | None = None
    correlation_id: UUID | None = None
    "The referral chain to join (a referral this one follows from); default: a new chain."
    content: ReferralContent | None = None
    """What the receiver needs to act, in clear here: the gateway seals it before anything is stored,
    and only the receiver's gateway (and the auditors) can open it again."""


class ReferralCommand(Command, frozen=True, kw_only=True):
    referral_id: UUID


class Accept(ReferralCommand, frozen=True, kw_only=True):
    pass


class Reject(ReferralCommand, frozen=True, kw_only=True):
    reason: RejectReason


class Start(ReferralCommand, frozen=True, kw_only=True):
    """Work starts on an accepted referral."""


class Hold(ReferralCommand, frozen=True, kw_only=True):
    reason: HoldReason


class Resume(ReferralCommand, frozen=True, kw_only=True):
    """Work resumes on a referral on hold."""


class Complete(ReferralCommand, frozen=True, kw_only=True):
    outcome: Outcome


class Fail(ReferralCommand, frozen=True, kw_only=True):
    reason: FailReason


class Cancel(ReferralCommand, frozen=True, kw_only=True):
    """Either party may cancel an open referral."""

    reason: CancelReason


class MarkEnteredInError(ReferralCommand, frozen=True, kw_only=True):
    reason: ErrorReason


COMMANDS: dict[str, type[Command]] = {
    "open-case": OpenCase,
    "record-vulnerability": RecordVulnerability,
    "record-basic-service": RecordBasicService,
    "record-consent": RecordConsent,
    "withdraw-consent": WithdrawConsent,
    "refer": Refer,
    "accept": Accept,
    "reject": Reject,
    "start": Start,
    "hold": Hold,
    "resume": Resume,
    "complete": Complete,
    "fail": Fail,
    "cancel": Cancel,
    "mark-entered-in-error": MarkEnteredInError,
}
"Command kind (the HTTP path's and the NATS subject's last token) -> its payload."


class Applied(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The command's event, as stored."""

    status: int
    "201 when this call stored it, 200 when an earlier call with the same idempotency key did."
    seq: int
    "Its sequence in the log (stream REFBUS): the total order; a cursor for the events feed."
    event_id: UUID
    referral_id: UUID | None = None
    "For referral commands: the referral (for `refer`, the new referral's id)."
    event: AnyEvent
    content: ContentView | None = None
    "A referral's content in clear, as the caller's sector reads it (its event holds it sealed)."


class Refusal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why nothing was stored. `code` is stable and machine-readable; `rule` names the lifecycle
    rule that refused (409), `field` the offending input (422)."""

    status: int
    code: str
    detail: str
    rule: str | None = None
    field: str | None = None


class Delivered(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One event of the events feed (and the body of a webhook delivery is `event` alone)."""

    seq: int
    event: AnyEvent
    content: ContentView | None = None
    "A referral's content, opened for this sector: `clear`, or `erased` once the child's keys are gone."


class Feed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    events: list[Delivered]
    next_after: int
    "Pass as `after` to resume: the newest sequence this page holds (or the one asked for)."


# -- where a sector's webhook deliveries go (PUT/GET/DELETE /v1/{sector}/webhook) ------------------


# http(s), an ASCII host name or IPv4 address (punycode for others), a port in range, then printable ASCII.
_HOST = r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?"
_PORT = r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
WEBHOOK_URL_PATTERN = rf"^[Hh][Tt][Tt][Pp][Ss]?://{_HOST}{_PORT}([/?#][!-~]*)?$"


class WebhookRegistration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Deliver what is addressed to this sector to `url` (http or https), from where deliveries stopped."""

    url: Annotated[str, msgspec.Meta(min_length=8, max_length=2048, pattern=WEBHOOK_URL_PATTERN)]
    rotate_secret: bool = False
    "Replace the signing secret (answered once, here); otherwise the secret stays as it is."


class WebhookRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A sector's registration as the bus keeps it (KV bucket REFBUS_WEBHOOKS, key = the sector):
    `url` None means its system unregistered (deliveries stay stopped, whatever the default)."""

    url: str | None
    updated_at: UtcTime


class WebhookState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A sector's webhook as its gateway applies it. `source`: registered (by the sector system),
    unregistered (it asked for no deliveries), environment (REFBUS_WEBHOOK_<SECTOR>, the default
    until a system registers), none."""

    url: str | None
    source: str
    delivering: bool
    updated_at: UtcTime | None = None
    secret: str | None = None
    "The `whsec_` signing secret: in the answer to PUT only."


# The refusals, for documents and clients: (status, code, when).
ERRORS: tuple[tuple[int, str, str], ...] = (
    (401, "unauthenticated", "no bearer token, or not one of this deployment's sector tokens"),
    (403, "wrong_sector", "the token belongs to another sector than the one in the path"),
    (404, "not_found", "no such command kind, or this gateway does not serve that sector"),
    (409, "illegal_transition", "a lifecycle rule refuses the event (`rule` names it)"),
    (409, "idempotency_key_reused", "the key was used before for a different command"),
    (409, "conflict", "the child kept changing under concurrent writers; retry with the same key"),
    (409, "secret_managed_elsewhere", "rotate_secret asked, but the deployment sets the webhook secret"),
    (422, "invalid", "the body is not the command's schema (`field` names the offending field)"),
    (503, "unavailable", "the log refused or could not be reached; retry with the same key"),
)
