"""The gateways over HTTP on the in-memory store: commands, refusals, idempotency, credentials."""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.gateway.core import Gateway
from refbus.services.gateway.http import gateway_app
from tests.factories import new_child, new_worker

TOKENS = {s: f"token-{s.value}-0123456789" for s in Sector}
KEY = b"k" * 32


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore()


@pytest.fixture
def client(store: InMemoryEventStore) -> Iterator[TestClient[Any]]:
    gateways = {s: Gateway(s, store, KEY) for s in Sector}
    with TestClient(app=gateway_app(gateways, TOKENS)) as tc:
        yield tc


def send(client: TestClient[Any], sector: Sector, kind: str, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token or TOKENS[sector]}"}
    return client.post(f"/v1/{sector.value}/commands/{kind}", json=body, headers=headers)


def key() -> str:
    return str(uuid.uuid4())


def refer_body(child: str, **over: Any) -> dict[str, Any]:
    return {
        "idempotency_key": key(),
        "child": child,
        "actor": new_worker(),
        "to_sector": "health",
        "dimension": "health",
        "service": "vaccination",
        "urgency": "routine",
        "legal_basis": "child_protection_duty",
        **over,
    }


def test_a_referral_accepted_and_completed(client: TestClient[Any]) -> None:
    child = new_child()
    r = send(client, Sector.SOCIAL, "refer", refer_body(child))
    assert r.status_code == 201, r.text
    referral = r.json()["referral_id"]
    assert r.json()["event"]["type"] == "referral.requested" and r.json()["seq"] >= 1
    for kind, extra in [("accept", {}), ("start", {}), ("complete", {"outcome": "service_delivered"})]:
        body = {"idempotency_key": key(), "child": child, "actor": new_worker(), "referral_id": referral, **extra}
        r = send(client, Sector.HEALTH, kind, body)
        assert r.status_code == 201, r.text
        assert r.json()["event"]["to_sector"] == "social"


def test_an_illegal_command_is_409_naming_the_rule(client: TestClient[Any]) -> None:
    child = new_child()
    referral = send(client, Sector.SOCIAL, "refer", refer_body(child)).json()["referral_id"]
    body = {"idempotency_key": key(), "child": child, "actor": new_worker(), "referral_id": referral,
            "outcome": "service_delivered"}
    r = send(client, Sector.HEALTH, "complete", body)
    assert r.status_code == 409
    assert r.json()["code"] == "illegal_transition"
    assert r.json()["rule"] == "referral.completed is not allowed from status requested"
    # the referrer may not accept its own referral
    r = send(client, Sector.SOCIAL, "accept", {**body, "idempotency_key": key()} | {"outcome": None} and
             {"idempotency_key": key(), "child": child, "actor": new_worker(), "referral_id": referral})
    assert r.status_code == 409 and "only the receiving sector" in r.json()["rule"]


def test_consent_gates_a_referral(client: TestClient[Any]) -> None:
    child = new_child()
    r = send(client, Sector.SOCIAL, "refer", refer_body(child, legal_basis="guardian_consent"))
    assert r.status_code == 409 and r.json()["rule"] == "no consent on record for sharing with health"
    consent = {"idempotency_key": key(), "child": child, "actor": new_worker(), "given_by": "parent",
               "sectors": ["health"]}
    assert send(client, Sector.SOCIAL, "record-consent", consent).status_code == 201
    assert send(client, Sector.SOCIAL, "refer", refer_body(child, legal_basis="guardian_consent")).status_code == 201


def test_a_retried_command_is_applied_once(client: TestClient[Any], store: InMemoryEventStore) -> None:
    child = new_child()
    body = refer_body(child)
    first = send(client, Sector.SOCIAL, "refer", body)
    again = send(client, Sector.SOCIAL, "refer", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["seq"] == again.json()["seq"] and first.json()["event"] == again.json()["event"]
    assert len([s for s in store.log if s.event and s.event.child == child]) == 1
    other = send(client, Sector.SOCIAL, "refer", {**body, "service": "health_assessment"})
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"


def test_a_retry_after_the_referral_moved_on_still_gets_the_first_answer(client: TestClient[Any]) -> None:
    child = new_child()
    referral = send(client, Sector.SOCIAL, "refer", refer_body(child)).json()["referral_id"]
    accept = {"idempotency_key": key(), "child": child, "actor": new_worker(), "referral_id": referral}
    first = send(client, Sector.HEALTH, "accept", accept)
    start = {**accept, "idempotency_key": key()}
    assert send(client, Sector.HEALTH, "start", start).status_code == 201
    again = send(client, Sector.HEALTH, "accept", accept)
    assert again.status_code == 200 and again.json()["seq"] == first.json()["seq"]


def test_invalid_input_is_422_naming_the_field(client: TestClient[Any]) -> None:
    r = send(client, Sector.SOCIAL, "refer", refer_body("Ana Ionescu"))
    assert r.status_code == 422 and r.json()["field"] == "child", r.text
    r = send(client, Sector.SOCIAL, "refer", refer_body(new_child(), nickname="x"))
    assert r.status_code == 422, r.text
    r = client.post("/v1/social/commands/refer", content=b"{not json", headers={"Authorization":
                    f"Bearer {TOKENS[Sector.SOCIAL]}", "Content-Type": "application/json"})
    assert r.status_code == 422, r.text


def test_start_and_resume_are_distinct_moves(client: TestClient[Any]) -> None:
    child = new_child()
    referral = send(client, Sector.SOCIAL, "refer", refer_body(child)).json()["referral_id"]
    base = {"child": child, "actor": new_worker(), "referral_id": referral}
    assert send(client, Sector.HEALTH, "accept", {**base, "idempotency_key": key()}).status_code == 201
    r = send(client, Sector.HEALTH, "resume", {**base, "idempotency_key": key()})
    assert r.status_code == 409 and r.json()["rule"] == "resume is allowed only from status on-hold"


def test_credentials_of_another_sector_are_refused(client: TestClient[Any]) -> None:
    body = refer_body(new_child())
    assert send(client, Sector.SOCIAL, "refer", body, token=TOKENS[Sector.HEALTH]).status_code == 403
    assert send(client, Sector.SOCIAL, "refer", body, token="nope").status_code == 401
    r = client.post("/v1/social/commands/refer", json=body)
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
