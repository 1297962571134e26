"""The deployments' keys (deploy/compose.yaml, deploy/k8s/; docs/decisions/0015-key-provisioning.md):
every refbus container gets its key material from the one provisioning (`refbus keys --out`) and none
makes its own; each service mounts exactly its own part, as `keys.export` writes it."""

import re
from pathlib import Path

import pytest
import yaml

from refbus.services.audit import keys
from refbus.services.runtime import identities

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRETS = "/run/secrets/refbus"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """What `refbus keys --out` writes for each service: the files a mount must hold."""
    tmp = tmp_path_factory.mktemp("keys")
    written = keys.export(keys.ensure(tmp / "master"), tmp / "out", "ee" * 32, "ff" * 32)
    for folder, files in identities.export(tmp / "master" / "nats", tmp / "out").items():
        written.setdefault(folder, []).extend(files)
    return {folder: sorted(files) for folder, files in written.items()}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _refbus_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def test_compose_makes_the_keys_once_offline_and_keeps_the_master_to_itself() -> None:
    compose = _compose()
    init = compose["services"]["keys"]
    assert init["command"][:2] == ["sh", "-c"]
    script = init["command"][-1]
    assert "refbus keys --out /var/lib/refbus/keys\n" in script
    # TLS: the CA's key stays in the master volume too; only certificates and the CA go out.
    assert "refbus certs --out /var/lib/refbus/key-master/tls --host nats-1 --host nats-2 --host nats-3" in script
    assert "ca.key" not in script
    assert init["network_mode"] == "none" and init["restart"] == "no"
    assert init["environment"] == {"REFBUS_DATA_DIR": "/var/lib/refbus/key-master"}
    assert init["volumes"] == ["refbus-key-master:/var/lib/refbus/key-master", "refbus-keys:/var/lib/refbus/keys"]
    for name, service in _refbus_services(compose).items():
        if name != "keys":
            mounted = [str(v) for v in service.get("volumes", [])]
            assert not any("refbus-key-master" in v for v in mounted), name
    # The image owns the mount points, so a fresh named volume is writable by uid 10001.
    assert "/var/lib/refbus/key-master /var/lib/refbus/keys && chown -R 10001:10001" in (
        DEPLOY / "Dockerfile").read_text()


def test_every_compose_container_uses_the_provisioned_keys(exported: dict[str, list[str]]) -> None:
    services = _refbus_services(_compose())
    runners = {name: s for name, s in services.items() if s["command"][:2] == ["refbus", "service"]}
    assert set(runners) == set(keys.SERVICE_OWNERS)
    for name, service in services.items():
        if name == "keys":
            continue
        env = service["environment"]
        assert env.get("REFBUS_KEYS_PROVISIONED") == "1", name  # nobody makes a key of its own
        assert "REFBUS_EVENT_ID_KEY" not in env and "REFBUS_DATA_DIR" not in env, name
        if name not in runners:  # provision signs nothing: the admin's NATS identity alone
            assert service["volumes"] == [{"type": "volume", "source": "refbus-keys", "target": SECRETS,
                                           "read_only": True, "volume": {"subpath": "admin"}}], name
            assert exported["admin"] == ["nats/admin.nk"]
            continue
        assert service["command"] == ["refbus", "service", name]
        assert service["depends_on"]["keys"] == {"condition": "service_completed_successfully"}
        assert env["REFBUS_SECRETS_DIR"] == SECRETS
        assert service["volumes"] == [{"type": "volume", "source": "refbus-keys", "target": SECRETS,
                                       "read_only": True, "volume": {"subpath": name}}], name
        assert name in exported


def _k8s() -> dict[str, dict]:
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") in ("Job", "Deployment"):
            found[doc["metadata"]["labels"]["app.kubernetes.io/component"]] = doc["spec"]["template"]["spec"]
    return found


def test_every_k8s_pod_mounts_its_own_keys_and_nothing_else(exported: dict[str, list[str]]) -> None:
    pods = _k8s()
    assert set(pods) == {*keys.SERVICE_OWNERS, "provision"}
    for name, pod in pods.items():
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["REFBUS_KEYS_PROVISIONED"] == "1", name
        assert "REFBUS_EVENT_ID_KEY" not in env, name
        secrets = [v for v in pod["volumes"] if "secret" in v]
        [volume] = secrets
        secret = volume["secret"]
        if name == "provision":  # the admin's NATS identity alone
            assert secret["secretName"] == "refbus-keys-admin" and env["REFBUS_SECRETS_DIR"] == SECRETS
            assert [item["path"] for item in secret["items"]] == exported["admin"]
            continue
        assert container["command"] == ["refbus", "service", name]
        assert secret["secretName"] == f"refbus-keys-{name}"
        assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001
        # Exactly the files `refbus keys --out` wrote for this service, each under its Secret key's name.
        assert sorted(item["path"] for item in secret["items"]) == exported[name], name
        assert all(item["key"] == Path(item["path"]).name for item in secret["items"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount == {"name": volume["name"], "mountPath": SECRETS, "readOnly": True}
        assert env["REFBUS_SECRETS_DIR"] == SECRETS


def test_the_secrets_are_made_as_the_readme_says() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "refbus keys --data-dir ./refbus-key-master --out ./refbus-keys" in readme
    [looped] = re.findall(r"for s in ([a-z ]+); do\n\s+kubectl -n refbus create secret generic refbus-keys-\$s "
                          r"--from-file=./refbus-keys/\$s/keys --from-file=./refbus-keys/\$s/event-id.key "
                          r"--from-file=./refbus-keys/\$s/nats\n", readme)
    assert sorted(looped.split()) == sorted(keys.SERVICES_WITH_EVENT_IDS)
    # The pager's, alone: no event-id key.
    pager = "generic refbus-keys-pager --from-file=./refbus-keys/pager/keys --from-file=./refbus-keys/pager/nats\n"
    assert pager in readme
    assert "generic refbus-keys-admin --from-file=./refbus-keys/admin/nats\n" in readme
    assert "generic refbus-nats-users --from-file=./refbus-keys/nats-server/users\n" in readme
    assert {*looped.split(), "pager"} == set(keys.SERVICE_OWNERS)


def test_only_the_services_that_derive_ids_get_the_event_id_key(exported: dict[str, list[str]]) -> None:
    for service, files in exported.items():
        assert ("event-id.key" in files) == (service in keys.SERVICES_WITH_EVENT_IDS), service
        private = [f for f in files if f.endswith(".key") and f.startswith("keys/")]
        owners = keys.SERVICE_OWNERS.get(service, (keys.content_owner(keys.AUDITORS),) if service == "auditor" else ())
        assert private == sorted(f"keys/{owner}.key" for owner in owners), service
