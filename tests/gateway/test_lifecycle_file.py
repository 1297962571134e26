"""contracts/schema/lifecycle.json says what the gateway does: for every referral command and every
status, the file's table allows it exactly when the gateway and the rules do."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from refbus.contracts import commands as c
from refbus.contracts import documents
from refbus.contracts.vocabulary import Dimension, LegalBasis, Sector, Status
from refbus.services.gateway.core import Gateway, _Refused
from refbus.services.rules.lifecycle import IllegalEvent, check
from refbus.services.rules.state import ChildState, Referral

TABLE = json.loads((documents.SCHEMA_DIR / "lifecycle.json").read_text())
REFERRAL_COMMANDS = {k: t for k, t in c.COMMANDS.items() if issubclass(t, c.ReferralCommand)}
FIELDS = {"reason": {c.Reject: "no_capacity", c.Hold: "waiting_list", c.Fail: "lost_contact",
                     c.Cancel: "no_longer_needed", c.MarkEnteredInError: "wrong_child"},
          "outcome": {c.Complete: "service_delivered"}}


def allowed(kind: str, status: Status, by: Sector) -> bool:
    child = "c" + "0" * 16
    rid = uuid.uuid4()
    state = ChildState(child=child)
    state.referrals[rid] = Referral(
        referral_id=rid, referrer=Sector.SOCIAL, receiver=Sector.HEALTH, service="vaccination",
        dimension=Dimension.HEALTH, requested_at=datetime.now(UTC), correlation_id=uuid.uuid4(), status=status,
        legal_basis=LegalBasis.CHILD_PROTECTION_DUTY,
    )
    command_type = REFERRAL_COMMANDS[kind]
    extra = {f: v[command_type] for f, v in FIELDS.items() if command_type in v}
    command = command_type(idempotency_key="k" * 8, child=child, actor="w00000000", referral_id=rid, **extra)
    try:
        check(state, Gateway(by, None, b"k" * 32).event_for(command, uuid.uuid4(), state))  # type: ignore[arg-type]
    except (IllegalEvent, _Refused):
        return False
    return True


@pytest.mark.parametrize("kind", sorted(REFERRAL_COMMANDS))
def test_the_file_allows_what_the_gateway_allows(kind: str) -> None:
    entry = TABLE["commands"][kind]
    for status in Status:
        by_receiver = allowed(kind, status, Sector.HEALTH)
        by_referrer = allowed(kind, status, Sector.SOCIAL)
        in_file = status.value in entry["from_status"]
        assert by_receiver == in_file, (kind, status)
        assert by_referrer == (in_file and entry["who"] == "either party"), (kind, status)


def test_the_file_answers_a_clients_questions() -> None:
    assert TABLE["referral_needs_open_case"] is False
    assert TABLE["consent"]["legal_bases_needing_consent"] == ["guardian_consent"]
    assert "consent_withdrawn" in TABLE["consent"]["withdrawal_cancels"]["event"]
    assert TABLE["service_catalogue"]["health"][0] == "family_doctor_registration"
    for question in ("times", "correlation_id", "inbox_consumer", "newest_sequence_of_a_child", "headers",
                     "retried_publish"):
        assert TABLE["answers"][question]
