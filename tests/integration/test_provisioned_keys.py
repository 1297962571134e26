"""Keys per container (docs/decisions/0015-key-provisioning.md): services in separate data dirs, as a
deployment's containers are, provisioned from one `refbus keys --out`, write events that `refbus
verify` accepts; without the provisioning each makes keys of its own and verify names them unknown,
and a service told its keys are provisioned refuses to start without them."""

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refbus.services.eventstore import streams
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import new_child
from tests.integration.cli_runner import Background, _env, failure, refbus

pytestmark = pytest.mark.integration


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedNats(tmp_path / "nats").start()

    async def provision() -> None:
        nc = await connect(server.url, "provision", 5.0)
        await streams.provision(nc.jetstream())
        await nc.close()

    asyncio.run(provision())
    yield server.url
    server.stop()


def _container(tmp_path: Path, name: str, url: str, secrets: Path | None) -> dict[str, str]:
    """One container's environment: its own data dir, and the provisioned secrets if given."""
    extra = {"REFBUS_NATS_URL": url, "REFBUS_SIM_SPEED": "1000"}
    if secrets is not None:
        extra.update(REFBUS_SECRETS_DIR=str(secrets), REFBUS_KEYS_PROVISIONED="1")
    return _env(tmp_path / f"data-{name}", **extra)


def _refer_and_wait_for_health(tmp_path: Path, url: str, secrets: Path | None) -> None:
    """social refers a child to health (from social's container); health's service, in its own,
    answers: two writers in two data dirs."""
    health = Background("service", "health", env=_container(tmp_path, "health", url, secrets and secrets / "health"))
    try:
        health.wait_for("Ctrl-C stops")
        child = new_child()
        social = _container(tmp_path, "social", url, secrets and secrets / "social")
        run = refbus("refer", "--child", child, "--from", "social", "--to", "health", "--service",
                     "family_doctor_registration", "--dimension", "health", env=social)
        assert run.code == 0, run.err
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = json.loads(refbus("children", "--json", env=social).out)
            if any(c["child"] == child and c["events"] >= 2 for c in listed):
                return
            time.sleep(0.3)
        raise AssertionError("health's service wrote nothing for the referral")
    finally:
        assert health.interrupt() == 130


def test_services_in_separate_data_dirs_provisioned_from_one_output_verify(tmp_path: Path, bus: str) -> None:
    out = tmp_path / "provisioned"
    made = refbus("keys", "--out", str(out), env=_env(tmp_path / "key-master"))
    assert made.code == 0, made.err
    assert sorted(p.name for p in (out / "health" / "keys").iterdir()) == ["content-health.key", "health.key",
                                                                          "public-keys.json"]
    assert not (out / "pager" / "event-id.key").exists()  # the pager derives no event ids
    # The two containers derive event ids with one key: the deployment's.
    assert (out / "social" / "event-id.key").read_text() == (out / "health" / "event-id.key").read_text()

    _refer_and_wait_for_health(tmp_path, bus, out)
    for name in ("social", "health"):  # nothing was made in a container's data dir
        assert not (tmp_path / f"data-{name}" / "secrets").exists()
    auditor = _env(tmp_path / "data-auditor", REFBUS_NATS_URL=bus, REFBUS_SECRETS_DIR=str(out / "verifier"))
    verified = refbus("verify", "--json", env=auditor)
    assert verified.code == 0, verified.out + verified.err
    report = json.loads(verified.out)
    assert report["ok"] and report["events"] >= 2


def test_without_provisioning_each_container_signs_with_keys_nobody_else_knows(tmp_path: Path, bus: str) -> None:
    out = tmp_path / "provisioned"
    assert refbus("keys", "--out", str(out), env=_env(tmp_path / "key-master")).code == 0
    _refer_and_wait_for_health(tmp_path, bus, None)  # each makes its own keys, in its own data dir
    assert (tmp_path / "data-health" / "secrets" / "keys").is_dir()
    auditor = _env(tmp_path / "data-auditor", REFBUS_NATS_URL=bus, REFBUS_SECRETS_DIR=str(out / "verifier"))
    verified = refbus("verify", "--json", env=auditor)
    assert verified.code == 1
    assert json.loads(verified.out)["counts"].get("unknown-key", 0) >= 2


def test_a_service_told_its_keys_are_provisioned_refuses_to_start_without_them(tmp_path: Path, bus: str) -> None:
    out = tmp_path / "provisioned"
    assert refbus("keys", "--out", str(out), env=_env(tmp_path / "key-master")).code == 0
    # health's container given social's secrets: its own key is not there, and none is made.
    wrong = _container(tmp_path, "health", bus, out / "social")
    failure(refbus("service", "health", env=wrong), 2, "REFBUS_KEYS_PROVISIONED", "no key of health")
    nothing = _container(tmp_path, "pager", bus, tmp_path / "empty")
    failure(refbus("service", "pager", env=nothing), 2, "no key of bus")
    assert not (tmp_path / "empty").exists()
    # Keys without the event-id key: a sector would derive ids no other instance derives.
    (out / "deadlines" / "event-id.key").unlink()
    failure(refbus("service", "deadlines", env=_container(tmp_path, "deadlines", bus, out / "deadlines")), 2,
            "event-id.key")
