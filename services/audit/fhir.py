"""A child's referrals as an HL7 FHIR R4 Bundle: per referral a ServiceRequest (what was asked) and
a Task (its status, statusReason, businessStatus, requester and owner as the sectors'
Organizations, output for the outcome), a Provenance per event carrying who signed it. The child
appears only as its pseudonymous identifier: no Patient resource, no name."""

import base64
from datetime import UTC, datetime
from uuid import UUID

from refbus.contracts.events import (
    ReferralEvent,
    ReferralReceived,
    ReferralRequested,
    event_type,
)
from refbus.contracts.vocabulary import Sector, Status, Urgency
from refbus.services.audit import proof
from refbus.services.eventstore.records import StoredEvent
from refbus.services.rules.state import fold

CHILD_SYSTEM = "urn:refbus:child"
SECTOR_SYSTEM = "urn:refbus:sector"
REFERRAL_SYSTEM = "urn:refbus:referral"
CODES = "urn:refbus:code"
PRIORITY = {Urgency.ROUTINE: "routine", Urgency.URGENT: "urgent", Urgency.EMERGENCY: "stat"}
REQUEST_STATUS = {
    Status.REQUESTED: "active", Status.ACCEPTED: "active", Status.IN_PROGRESS: "active", Status.ON_HOLD: "on-hold",
    Status.COMPLETED: "completed", Status.FAILED: "revoked", Status.REJECTED: "revoked",
    Status.CANCELLED: "revoked", Status.ENTERED_IN_ERROR: "entered-in-error",
}


def _time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _org_ref(sector: Sector) -> dict[str, str]:
    return {"reference": f"Organization/org-{sector.value}", "display": f"{sector.value} sector"}


def _child_ref(child: str) -> dict[str, object]:
    return {"identifier": {"system": CHILD_SYSTEM, "value": child}}


def _code(kind: str, code: str) -> dict[str, object]:
    return {"coding": [{"system": f"{CODES}:{kind}", "code": code}], "text": code}


def bundle(child: str, history: list[StoredEvent], verified: bool | None = None) -> dict[str, object]:
    """The Bundle (type collection) of `child`'s referrals from its history in log order."""
    events = [h for h in history if h.event is not None]
    state = fold(child, [(h.seq, h.event) for h in events])  # type: ignore[misc]
    entries: list[dict[str, object]] = []
    sectors: set[Sector] = set()
    by_referral: dict[UUID, list[StoredEvent]] = {}
    for stored in events:
        if isinstance(stored.event, ReferralEvent):
            by_referral.setdefault(stored.event.referral_id, []).append(stored)
    for rid, referral in state.referrals.items():
        steps = by_referral.get(rid, [])
        requested = next((s.event for s in steps if isinstance(s.event, ReferralRequested)), None)
        if requested is None:
            continue
        sectors.update((referral.referrer, referral.receiver))
        reason = outcome = None
        received = False
        for s in steps:
            e = s.event
            if isinstance(e, ReferralReceived):
                received = True
            if getattr(e, "reason", None) is not None:
                reason = str(e.reason)  # type: ignore[union-attr]
            if getattr(e, "outcome", None) is not None:
                outcome = str(e.outcome)  # type: ignore[union-attr]
        sr_id, task_id = f"sr-{rid}", f"task-{rid}"
        identifier = [{"system": REFERRAL_SYSTEM, "value": str(rid)}]
        entries.append({"fullUrl": f"urn:uuid:{rid}-sr", "resource": {
            "resourceType": "ServiceRequest", "id": sr_id, "identifier": identifier,
            "status": REQUEST_STATUS[referral.status], "intent": "order",
            "priority": PRIORITY[requested.urgency],
            "code": _code("service", requested.service),
            "reasonCode": [_code("dimension", str(requested.dimension))],
            "subject": _child_ref(child), "authoredOn": _time(requested.occurred_at),
            "requester": _org_ref(referral.referrer), "performer": [_org_ref(referral.receiver)],
        }})
        task: dict[str, object] = {
            "resourceType": "Task", "id": task_id, "identifier": identifier,
            "basedOn": [{"reference": f"ServiceRequest/{sr_id}"}],
            "status": referral.status.value, "intent": "order",
            "businessStatus": {"text": "received by the receiving sector" if received else "not yet received"},
            "for": _child_ref(child), "authoredOn": _time(referral.requested_at),
            "lastModified": _time(referral.updated_at or referral.requested_at),
            "requester": _org_ref(referral.referrer), "owner": _org_ref(referral.receiver),
        }
        if reason is not None:
            task["statusReason"] = _code("reason", reason)
        if outcome is not None:
            task["output"] = [{"type": {"text": "outcome"}, "valueCodeableConcept": _code("outcome", outcome)}]
        entries.append({"fullUrl": f"urn:uuid:{rid}-task", "resource": task})
        for s in steps:
            entries.append({"fullUrl": f"urn:uuid:{s.event.event_id}", "resource": _provenance(s, task_id)})  # type: ignore[union-attr]
    for sector in sorted(sectors, key=lambda s: s.value):
        entries.append({"fullUrl": f"urn:refbus:org:{sector.value}", "resource": {
            "resourceType": "Organization", "id": f"org-{sector.value}", "active": True,
            "identifier": [{"system": SECTOR_SYSTEM, "value": sector.value}], "name": f"{sector.value} sector",
        }})
    result: dict[str, object] = {
        "resourceType": "Bundle", "type": "collection", "timestamp": _time(datetime.now(UTC)),
        "identifier": {"system": CHILD_SYSTEM, "value": child}, "entry": entries,
    }
    if verified is not None:
        result["meta"] = {"tag": [{"system": f"{CODES}:verification", "code": "verified" if verified else "failed"}]}
    return result


def _provenance(stored: StoredEvent, task_id: str) -> dict[str, object]:
    event = stored.event
    assert event is not None
    resource: dict[str, object] = {
        "resourceType": "Provenance", "id": f"prov-{event.event_id}",
        "target": [{"reference": f"Task/{task_id}"}],
        "occurredDateTime": _time(event.occurred_at), "recorded": _time(stored.stored_at),
        "activity": _code("event", event_type(event)),
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author"}]},
                   "who": _org_ref(event.from_sector)}],
    }
    sig = proof.parse_sig(stored.sig)
    if sig is not None and stored.key:
        i, n, signature, path = sig
        resource["signature"] = [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1",
                      "display": "Author's Signature"}],
            "when": _time(stored.stored_at), "who": _org_ref(event.from_sector),
            "sigFormat": "application/octet-stream",
            "data": base64.b64encode(f"{stored.key} {stored.chain} {stored.sig}".encode()).decode(),
        }]
        _ = (i, n, signature, path)
    return resource
