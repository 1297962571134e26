"""The sector gateways' HTTP port in the deploy files (issue 15): every sector's gateway is served on
8090, declared (container port, ClusterIP Service) and published on loopback only in compose, with its
token and webhook secret from the deployment's secrets and the default webhook URL shown commented."""

import yaml

from refbus.contracts.vocabulary import Sector
from tests.unit.test_deploy import DEPLOY

GATEWAY_PORT = 8090


def test_each_sector_gateway_port_is_declared_and_served_in_kubernetes() -> None:
    for sector in Sector:
        name = sector.value.upper()
        deployment = yaml.safe_load((DEPLOY / "k8s" / f"deployment-{sector.value}.yaml").read_text())
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env[f"REFBUS_GATEWAY_PORT_{name}"]["value"] == str(GATEWAY_PORT), sector
        assert env["REFBUS_GATEWAY_HOST"]["value"] == "0.0.0.0", "reachable from the Service"
        for secret in (f"REFBUS_GATEWAY_TOKEN_{name}", f"REFBUS_WEBHOOK_SECRET_{name}"):
            assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "refbus-gateway", (sector, secret)
        assert {"name": "gateway", "containerPort": GATEWAY_PORT} in container["ports"]
        assert f"REFBUS_WEBHOOK_{name}" in (DEPLOY / "k8s" / f"deployment-{sector.value}.yaml").read_text()
        service = yaml.safe_load((DEPLOY / "k8s" / f"service-{sector.value}.yaml").read_text())
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "never a public address by default"
        assert {"name": "gateway", "port": GATEWAY_PORT, "targetPort": "gateway"} in service["spec"]["ports"]
    secret = yaml.safe_load((DEPLOY / "k8s" / "gateway-secret.example.yaml").read_text())
    assert set(secret["stringData"]) == {f"{s.value}-{k}" for s in Sector for k in ("token", "webhook-secret")}


def test_each_sector_gateway_port_is_published_on_loopback_in_compose() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    env_example = (DEPLOY / "compose" / "env.example").read_text()
    published = []
    for sector in Sector:
        name = sector.value.upper()
        service = compose["services"][sector.value]
        env = service["environment"]
        assert env[f"REFBUS_GATEWAY_PORT_{name}"] == str(GATEWAY_PORT), sector
        assert env["REFBUS_GATEWAY_HOST"] == "0.0.0.0"
        ports = [p for p in service.get("ports", []) if p.endswith(f":{GATEWAY_PORT}")]
        assert len(ports) == 1 and ports[0].startswith("127.0.0.1:"), (sector, "published on loopback only")
        published.append(ports[0])
        for secret in (f"REFBUS_GATEWAY_TOKEN_{name}", f"REFBUS_WEBHOOK_SECRET_{name}"):
            assert f"{secret}=" in env_example and "${" + secret in env[secret], (sector, secret)
        assert f"# REFBUS_WEBHOOK_{name}:" in text, "the default webhook URL shown, commented"
    assert len(set(published)) == len(Sector), "one host port per sector"
