"""`refbus certs`: a local CA and a server certificate signed by it, for a test deployment's TLS
(services/runtime/tls.py, docs/decisions/0025-tls.md). It touches no bus."""

import argparse
import sys
from pathlib import Path
from typing import Any

from refbus.cli_support import Formatter, UserError
from refbus.services.runtime.settings import Settings


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    certs = sub.add_parser(
        "certs", parents=[common], formatter_class=Formatter,
        help="make a local CA and a server certificate for TLS on clients and routes",
        description="Make a local CA (kept when DIR has one) and a server certificate signed by it, good for "
                    "localhost, 127.0.0.1 and each --host. DIR then holds ca.pem (what clients trust: "
                    "REFBUS_TLS_CA), server.pem and server.key (the servers'), and ca.key (keep it to yourself). "
                    "Written to the data dir's secrets/tls/, the embedded server runs TLS from its next start.",
    )
    certs.add_argument("--out", type=Path, metavar="DIR",
                       help="where to write (default: <secrets>/tls: the embedded server's, which TLS turns on)")
    certs.add_argument("--host", action="append", default=[], metavar="NAME",
                       help="a further name or address the servers answer at (repeat: --host nats-1 --host nats-2)")
    certs.add_argument("--days", type=_days, default=365, metavar="N", help="the server certificate's validity")
    certs.add_argument("--force", action="store_true", help="a new CA even when DIR has one (clients must trust it)")
    certs.set_defaults(command=cmd_certs)


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of days, got {text!r}") from None
    if not 1 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"between 1 and 36500 days, got {days}")
    return days


async def cmd_certs(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.runtime import tls

    out: Path = args.out or settings.secrets / "tls"
    try:
        made = tls.make_certs(out, args.host, args.days, force=args.force)
    except tls.CertError as exc:
        raise UserError(str(exc)) from None
    if made.ca_kept:
        print(f"keeping the CA in {out / tls.CA_CERT} (--force makes a new one, which every client must then trust)")
    else:
        print(f"made a CA: {out / tls.CA_CERT} (clients trust it), {out / tls.CA_KEY} (owner-only)")
    print(f"made a server certificate for {', '.join(made.hosts)}, valid until {made.not_after:%Y-%m-%d}: "
          f"{out / tls.SERVER_CERT}, {out / tls.SERVER_KEY} (owner-only)")
    if args.out is None:
        print("the embedded server of this data dir runs TLS from its next start", file=sys.stderr)
    return 0
