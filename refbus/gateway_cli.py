"""`refbus up --external <sector>=<URL>` and `--gateway-port`: the sector gateways from the CLI.

The options set the environment the sector services read (services/gateway/config.py) as they are
parsed, before anything starts: an external sector takes no simulated step, its system gets what is
addressed to it by webhook at URL and answers with commands over HTTP (or NATS request/reply). The
bearer tokens and webhook secrets are generated into the data dir on first start
(secrets/gateway-<sector>.token, secrets/webhook-<sector>.secret); they are never printed.
"""

import argparse
import os
from urllib.parse import urlparse

from refbus.contracts.vocabulary import Sector

DEFAULT_GATEWAY_PORT = 8480


class _External(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object,
                 option: str | None = None) -> None:
        sector, _, url = str(value).partition("=")
        if sector not in {s.value for s in Sector} or urlparse(url).scheme not in ("http", "https"):
            sectors = ", ".join(s.value for s in Sector)
            parser.error(f"{option}: expected <sector>=<http(s) URL>, sector one of {sectors}")
        os.environ[f"REFBUS_EXTERNAL_{sector.upper()}"] = "1"
        os.environ[f"REFBUS_WEBHOOK_{sector.upper()}"] = url
        os.environ.setdefault("REFBUS_GATEWAY_PORT", str(DEFAULT_GATEWAY_PORT))
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), sector])


class _Port(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object,
                 option: str | None = None) -> None:
        os.environ["REFBUS_GATEWAY_PORT"] = str(value)
        setattr(namespace, self.dest, value)


def extend_up(up: argparse.ArgumentParser) -> None:
    """The gateway options of `refbus up`."""
    up.add_argument(
        "--external", action=_External, metavar="SECTOR=URL",
        help="run SECTOR as an external system: no simulated steps; what is addressed to it is delivered by "
        "signed webhook to URL, and its system answers with commands (repeatable)",
    )
    up.add_argument(
        "--gateway-port", action=_Port, type=int, metavar="PORT",
        help=f"serve the sector gateways over HTTP on PORT..PORT+3 (social, health, education, justice); "
        f"default with --external: {DEFAULT_GATEWAY_PORT}",
    )
