"""The gateway's contract files, generated (contracts/documents.py writes them with the others):

- openapi.json: the HTTP gateway (OpenAPI 3.1, from the Litestar app and the command Structs)
- lifecycle.json: the rules as data, so a system in another language can check a command before
  sending it: the transition table, who may send what, consent, the service catalogue, and the
  answers to the questions a client otherwise has to ask (times, correlation, the inbox consumer,
  the newest sequence of a child, headers, the 10071 retry trap).
"""

from typing import Any

from refbus.contracts import commands as c
from refbus.contracts import subjects
from refbus.contracts.vocabulary import SERVICE_CATALOGUE, TERMINAL_STATUSES, LegalBasis, Sector, Status
from refbus.services.gateway import core
from refbus.services.gateway.webhooks import IN_FLIGHT as WEBHOOKS_IN_FLIGHT
from refbus.services.rules import child_links
from refbus.services.rules import lifecycle as rules
from refbus.services.sector.service import MAX_ACK_PENDING, MAX_DELIVER, inbox_consumer


def openapi() -> dict[str, Any]:
    from refbus.services.gateway.http import openapi_document

    return openapi_document()


def _tag(kind: type) -> str:
    return kind.__struct_config__.tag  # type: ignore[attr-defined, no-any-return]


def _commands() -> dict[str, Any]:
    table: dict[str, Any] = {}
    case_events = {
        "open-case": "case.opened",
        "record-vulnerability": "case.vulnerability-identified",
        "record-basic-service": "case.service-delivered",
        "record-consent": "case.consent-recorded",
        "withdraw-consent": "case.consent-withdrawn",
    }
    for kind, event in case_events.items():
        table[kind] = {"event": event, "who": "any sector, about its own work", "from_status": None}
    table["open-case"]["rule"] = "a sector may have one case open per child"
    table["withdraw-consent"]["rule"] = (
        "stored with the cancellations of what relied on the consent (consent.withdrawal_cancels)"
    )
    table["refer"] = {
        "event": "referral.requested",
        "who": "any sector, to another sector",
        "from_status": None,
        "rule": "to_sector differs from the caller; service is in to_sector's catalogue; guardian_consent needs "
        "consent naming to_sector; the referral id is new",
    }
    cancellable = sorted(s.value for s in rules._CANCELLABLE)
    for kind, command_type in c.COMMANDS.items():
        if not issubclass(command_type, c.ReferralCommand):
            continue
        event_type = core._REFERRAL_EVENTS[command_type]
        if command_type is c.Cancel:
            allowed, who = cancellable, "either party"
        elif command_type is c.MarkEnteredInError:
            allowed, who = sorted(s.value for s in Status if s is not Status.ENTERED_IN_ERROR), "either party"
        else:
            allowed, who = sorted(s.value for s in rules._RECEIVER_MOVES[event_type]), "the receiving sector"
        only = core._ONLY_FROM.get(command_type)
        if only is not None:
            allowed = [only.value]
        table[kind] = {"event": _tag(event_type), "who": who, "from_status": allowed}
    table["cancel"]["rule"] = (
        "and, in a consent withdrawal's own append, the sector recording it (consent.withdrawal_cancels)"
    )
    return table


def lifecycle() -> dict[str, Any]:
    consumer = inbox_consumer(Sector.SOCIAL)
    return {
        "description": "The referral lifecycle (HL7 FHIR Task.status) and the rules the gateways enforce, as data.",
        "statuses": [s.value for s in Status],
        "terminal_statuses": sorted(s.value for s in TERMINAL_STATUSES),
        "status_after": {
            "referral.requested": "requested",
            **{_tag(k): v.value for k, v in _status_after().items()},
            "referral.received": None,
        },
        "commands": _commands(),
        "referral_needs_open_case": False,
        "consent": {
            "legal_bases_needing_consent": [LegalBasis.GUARDIAN_CONSENT.value],
            "legal_bases_without_consent": [b.value for b in LegalBasis if b is not LegalBasis.GUARDIAN_CONSENT],
            "consent_must_name": "the referral's to_sector (record-consent with it in `sectors`, not withdrawn since)",
            "withdrawal_cancels": {
                "which": "every open referral of the child with legal_basis guardian_consent whose to_sector the "
                "withdrawal names (referrals from those sectors rely on their own receivers' consent)",
                "event": "referral.cancelled, reason consent_withdrawn, causation_id = the withdrawal's event_id",
                "from_sector": "the sector recording the withdrawal, a party of the referral or not",
                "to_sector": "one to the receiver and one to the referrer (the recorder's own copy is a note to "
                "itself), so that both inboxes hold it",
                "when": "in the withdrawal's own atomic append, after it; a withdrawal without them is refused, and "
                "meanwhile the referral takes no other event",
                "how": "the withdraw-consent command adds them; a system publishing to the log itself must too",
            },
        },
        "service_catalogue": {s.value: list(services) for s, services in SERVICE_CATALOGUE.items()},
        "child_reference_links": {
            "event": "child.reference-linked",
            "stored_on": "both references' histories (child = linked_from, then child = linked_to), in one atomic "
            "batch, each under its own expected last sequence",
            "rules": list(child_links.RULES),
            "reads": "a history of linked_to includes the events recorded under every linked_from",
            "how": "`refbus link-child`; no gateway command yet",
        },
        "errors": [{"status": s, "code": code, "when": when} for s, code, when in c.ERRORS],
        "answers": {
            "times": "RFC 3339 with an offset; the services write UTC (+00:00). A time without an offset is refused.",
            "correlation_id": "The referral chain: every event one request set off (the referral, its steps, any "
            "onward referral) shares the correlation_id of the first referral.requested.",
            "inbox_consumer": {
                "name": "inbox-<sector>",
                "stream": subjects.STREAM,
                "filter_subject": subjects.inbox_filter(Sector.SOCIAL).replace("social", "<sector>"),
                "ack_policy": "explicit",
                "deliver_policy": "all",
                "ack_wait_s": consumer.ack_wait,
                "max_deliver": MAX_DELIVER,
                "max_ack_pending": MAX_ACK_PENDING,
            },
            "webhook_consumer": {
                "name": subjects.webhook_consumer(Sector.SOCIAL).replace("social", "<sector>"),
                "filter_subject": subjects.inbox_filter(Sector.SOCIAL).replace("social", "<sector>"),
                "deliver_policy": "all",
                "max_ack_pending": WEBHOOKS_IN_FLIGHT,
                "note": "acked only after the sector system answered 2xx; created when a webhook URL is first "
                "configured, it starts from the beginning of the log (at least once: drop repeats by webhook-id); "
                "deliveries of one child in log order, of different children concurrently",
            },
            "newest_sequence_of_a_child": (
                f"Direct get on stream {subjects.CHILD_INDEX_STREAM} with last_by_subj "
                f"{subjects.child_index_subject('<child>')}: its Nats-Stream-Source header names the REFBUS "
                f"sequence. Gateway clients need not: `seq` of every Applied answer is the log sequence."
            ),
            "headers": "Refbus-Event-Type and Refbus-Correlation-Id are optional, for operators; Nats-Msg-Id "
            "(the event_id) and the two expected-sequence headers are required on every append.",
            "refused_commands": "A refused command stores nothing; sent again with the same idempotency_key it is "
            "decided again (and may then pass). A stored one is answered the same way for good (200).",
            "retried_publish": (
                "A retried publish whose first copy was stored comes back as a conflict (JetStream error 10071), not "
                "as a duplicate: the sequence check runs before dedup. Look for your own event_id in the child's "
                "history before deciding again. Through a gateway, retry with the same idempotency_key instead."
            ),
            "nats_request_reply": {
                "subject": subjects.command_subject(Sector.SOCIAL, "<command>").replace("social", "<sector>"),
                "reply": "Applied or Refusal as JSON, with the HTTP status in `status`",
                "user": "<sector>-system may publish only there (and subscribe to _INBOX.<sector>-system.>)",
            },
        },
    }


def _status_after() -> dict[type, Status]:
    from refbus.contracts.events import STATUS_AFTER, ReferralRequested

    return {k: v for k, v in STATUS_AFTER.items() if k is not ReferralRequested}
