"""What `refbus keys --out` provisions (services/audit/keys.export), how a service loads its own part,
and the deadline service's key of its own (docs/decisions/0015-key-provisioning.md)."""

from pathlib import Path

import msgspec
import pytest

from refbus.contracts.events import ReferralAccepted, ReferralOverdue
from refbus.contracts.vocabulary import Deadline, Sector
from refbus.services.audit import keys, proof
from refbus.services.audit.verify import verify_messages
from refbus.services.eventstore.memory import InMemoryEventStore
from refbus.services.runtime.settings import Settings, SettingsError
from tests.factories import answer, envelope, new_child, request


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    keys.export(keys.ensure(tmp_path / "master"), folder, "cd" * 32, "dc" * 32)
    return folder


def test_each_service_gets_its_own_private_keys_only(out: Path, tmp_path: Path) -> None:
    master = keys.load(tmp_path / "master")
    for service, owners in keys.SERVICE_OWNERS.items():
        ring = keys.load_dir(out / service / "keys")
        assert {f.record.owner for f in ring.files.values()} == set(owners), service
        assert set(ring.records) == set(master.records)  # every public record, to name who signed what
        assert set(ring.anchors()) == set(master.anchors())  # the bus's public records: the trust anchor
        has_id_key = (out / service / "event-id.key").exists()
        assert has_id_key == (service in keys.SERVICES_WITH_EVENT_IDS), service
    verifier = keys.load_dir(out / "verifier" / "keys")
    assert verifier.files == {} and set(verifier.anchors()) == set(master.anchors())
    assert (out / "social" / "keys" / "social.key").stat().st_mode & 0o077 == 0  # owner-only


def test_a_provisioned_service_loads_and_never_makes(out: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", secrets_dir=out / "health", keys_provisioned=True)
    ring = settings.service_keyring("health")
    assert ring.current("health") and ring.current("social") is None
    assert settings.event_id_key() == bytes.fromhex("cd" * 32)
    with pytest.raises(SettingsError, match="no key of social"):
        settings.service_keyring("social")
    empty = Settings(data_dir=tmp_path / "data", secrets_dir=tmp_path / "none", keys_provisioned=True)
    with pytest.raises(SettingsError, match="no key of bus"):
        empty.service_keyring("pager")
    with pytest.raises(SettingsError, match=r"event-id\.key"):
        empty.event_id_key()
    assert not (tmp_path / "none").exists() and not (tmp_path / "data").exists()
    # Not provisioned (the embedded default): made on first use, in the data dir, as before.
    embedded = Settings(data_dir=tmp_path / "embedded")
    assert embedded.service_keyring("pager").current(keys.BUS)
    assert embedded.event_id_key() and (tmp_path / "embedded" / "secrets" / "event-id.key").exists()


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_the_provisioned_flag_is_checked(value: str) -> None:
    with pytest.raises(SettingsError, match="REFBUS_KEYS_PROVISIONED must be 1 or 0"):
        Settings.from_env({"REFBUS_KEYS_PROVISIONED": value})
    assert Settings.from_env({"REFBUS_KEYS_PROVISIONED": "1", "REFBUS_SECRETS_DIR": "/s"}).secrets == Path("/s")


def _overdue(req: object) -> ReferralOverdue:
    receiver = req.to_sector  # type: ignore[attr-defined]
    return ReferralOverdue(**envelope(req.child, receiver, receiver, req.correlation_id),  # type: ignore[attr-defined]
                           referral_id=req.referral_id, deadline=Deadline.RECEIVED,  # type: ignore[attr-defined]
                           due_at=req.occurred_at)  # type: ignore[attr-defined]


async def test_the_deadline_service_signs_its_notices_and_nothing_else(out: Path, tmp_path: Path) -> None:
    master = keys.load(tmp_path / "master")
    deadlines = keys.load_dir(out / "deadlines" / "keys")
    child = new_child()
    req = request(child, Sector.SOCIAL, Sector.HEALTH)
    store = InMemoryEventStore(keys.load_dir(out / "social" / "keys"))  # one log, written from two containers
    await store.transact(child, lambda _s: [req])
    store.ring = deadlines
    await store.transact(child, lambda _s: [_overdue(req)])
    assert store.messages[-1][3][proof.KEY] == deadlines.current(keys.DEADLINES)
    assert verify_messages(store.messages, master.records).ok
    # Its key is good for deadline notices only; a sector's own notice (written before it had one) stays valid.
    assert keys.may_sign(keys.DEADLINES, _overdue(req)) and keys.may_sign("health", _overdue(req))
    assert not keys.may_sign(keys.DEADLINES, answer(ReferralAccepted, req))
    assert msgspec.json.decode(out.joinpath("verifier", "keys", keys.PUBLIC_FILE).read_bytes())
