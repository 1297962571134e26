"""The FHIR R4 export validates with a maintained FHIR model library (fhirclient's models, generated
from FHIR 4.0.1, strict: unknown elements, wrong types and missing required ones raise)."""

import json
from pathlib import Path

import pytest
from fhirclient.models.bundle import Bundle
from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.provenance import Provenance
from fhirclient.models.task import Task

from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralReceived, ReferralRejected
from refbus.contracts.vocabulary import Dimension, Outcome, RejectReason, Sector
from refbus.services.audit import keys
from refbus.services.audit.fhir import bundle
from refbus.services.eventstore.memory import InMemoryEventStore
from tests.factories import answer, new_child, request


async def test_the_bundle_validates_and_names_the_child_only_by_its_pseudonym(tmp_path: Path) -> None:
    store = InMemoryEventStore(keys.ensure(tmp_path))
    child = new_child()
    done = request(child)
    refused = request(child, frm=Sector.EDUCATION, to=Sector.SOCIAL, service="family_counselling",
                      dimension=Dimension.FAMILY_AND_SOCIAL)
    await store.transact(child, lambda _s: [done, refused])
    await store.transact(child, lambda _s: [answer(ReferralReceived, done), answer(ReferralAccepted, done)])
    await store.transact(child, lambda _s: [answer(ReferralCompleted, done, outcome=Outcome.SERVICE_DELIVERED),
                                            answer(ReferralRejected, refused, reason=RejectReason.OUT_OF_AREA)])
    document = bundle(child, await store.history(child), verified=True)

    parsed = Bundle(json.loads(json.dumps(document)), strict=True)  # raises FHIRValidationError when invalid
    kinds = [e.resource.resource_type for e in parsed.entry]
    assert kinds.count("ServiceRequest") == 2 and kinds.count("Task") == 2 and kinds.count("Organization") == 3
    assert "Patient" not in kinds
    tasks = {t.identifier[0].value: t for t in (e.resource for e in parsed.entry) if isinstance(t, Task)}
    completed, rejected = tasks[str(done.referral_id)], tasks[str(refused.referral_id)]
    assert (completed.status, completed.output[0].valueCodeableConcept.coding[0].code) == ("completed",
                                                                                        "service_delivered")
    assert completed.requester.reference == "Organization/org-social"
    assert completed.owner.reference == "Organization/org-health"
    assert completed.businessStatus.text == "received by the receiving sector"
    assert (rejected.status, rejected.statusReason.coding[0].code) == ("rejected", "out_of_area")
    assert completed.for_fhir.identifier.value == child
    provenances = [e.resource for e in parsed.entry if isinstance(e.resource, Provenance)]
    assert len(provenances) == 6 and all(p.signature and p.signature[0].data for p in provenances)
    # The validator is not a formality: a Task without its required status is refused.
    broken = json.loads(json.dumps(document))
    next(e["resource"] for e in broken["entry"] if e["resource"]["resourceType"] == "Task").pop("status")
    with pytest.raises(FHIRValidationError):
        Bundle(broken, strict=True)
    assert child not in json.dumps([e["resource"] for e in document["entry"]
                                    if e["resource"]["resourceType"] == "Organization"])
