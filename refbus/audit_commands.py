"""The auditor's commands (issue 16): keys, verify, seal, access, timeline, export, replay.

Registered in refbus.cli by one call, `register(sub, common)`; each command is
`async (args, settings) -> exit code` like the others there.
"""

import argparse
import asyncio
import getpass
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from refbus.cli_support import audit_reads
from refbus.contracts.vocabulary import Sector
from refbus.services.audit.purposes import Purpose, Role
from refbus.services.runtime.settings import Settings

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from refbus.services.audit import seal
    from refbus.services.audit.reads import VerifiedHistory
    from refbus.services.audit.verify import Report

# The bus client, the crypto and the services are imported where a command runs (as in refbus.cli):
# `refbus --help` answers at once.
KEY_OWNERS = (*(s.value for s in Sector), "bus", "deadlines")


def _add_parser(
    sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, *, parents: list[argparse.ArgumentParser],
    help: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(name, parents=parents, help=help, description=help[0].upper() + help[1:] + ".")


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", common: argparse.ArgumentParser) -> None:
    k = _add_parser(sub, "keys", parents=[common], help="make the sectors' and the bus's signing keys (first run), "
                       "rotate or revoke one, publish the public keys to the bus")
    k.add_argument("--rotate", metavar="OWNER", choices=KEY_OWNERS, help="a new current key for this owner")
    k.add_argument("--revoke", metavar="KEY_ID", help="revoke a key: what it signs from --at on is refused")
    k.add_argument("--at", type=datetime.fromisoformat, help="revocation time (ISO 8601; default now)")
    k.add_argument("--json", action="store_true", help="the keys as JSON")
    k.add_argument("--out", type=Path, metavar="DIR",
                   help="a deployment's provisioning: write each service's secrets (its own private keys, the "
                        "public records, the event-id key) to DIR/<service>/, and touch no bus")
    k.set_defaults(command=cmd_keys)

    v = _add_parser(sub, "verify", parents=[common], help="check every signature, chain and seal of the log; "
                       "exit 1 naming the first bad event")
    v.add_argument("--child", help="only this child's events (signatures and chain; seals cover the whole log)")
    v.add_argument("--since", type=int, metavar="SEQ", help="start at the newest seal before SEQ")
    v.add_argument("--json", action="store_true", help="the report as JSON (no progress bar)")
    v.add_argument("--stream", help=argparse.SUPPRESS)  # tests: a copy of the log's shape
    v.set_defaults(command=cmd_verify)

    s = _add_parser(sub, "seal", parents=[common], help="seal the log now (the pager's service does it every minute)")
    s.set_defaults(command=cmd_seal)

    reader = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    reader.add_argument("child", help="pseudonymous child reference, c + 16 hex digits")
    reader.add_argument("--purpose", choices=[p.value for p in Purpose],
                        help="why you read this child's data (required; recorded in the access trail)")
    reader.add_argument("--as", dest="who", help="who reads (default: REFBUS_USER or the login name)")
    reader.add_argument("--role", choices=[r.value for r in Role], help="default: REFBUS_ROLE or auditor")

    t = _add_parser(sub, "timeline", parents=[common, reader], help="one child's verified timeline as a "
                       "self-contained HTML page (records the read in the access trail)")
    t.add_argument("--html", type=Path, required=True, metavar="FILE", help="write the page here")
    t.set_defaults(command=cmd_timeline)

    e = _add_parser(sub, "export", parents=[common, reader], help="one child's referrals as an HL7 FHIR R4 Bundle "
                       "(records the read in the access trail)")
    e.add_argument("--fhir", action="store_true", required=True, help="FHIR R4 Bundle (the one format so far)")
    e.add_argument("--out", type=Path, help="file (default: stdout)")
    e.set_defaults(command=cmd_export)

    r = _add_parser(sub, "replay", parents=[common], help="rebuild the read models (open referrals per sector, "
                       "outcomes per dimension, time to decision per sector pair) from the log; resumable")
    r.add_argument("--out", type=Path, help="folder (default: <data dir>/projections)")
    r.add_argument("--restart", action="store_true", help="from position zero, ignoring the checkpoint")
    r.set_defaults(command=cmd_replay)

    a = _add_parser(sub, "access", parents=[common], help="who read a child's history or export, when, why")
    a.add_argument("child", help="pseudonymous child reference, c + 16 hex digits")
    a.add_argument("--json", action="store_true", help="the reads as JSON")
    a.set_defaults(command=cmd_access)


async def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.audit import keys
    from refbus.services.runtime.bus import open_bus

    if settings.keys_provisioned:
        print("refbus keys makes keys: run it where the deployment's keys are kept, without "
              "REFBUS_KEYS_PROVISIONED", file=sys.stderr)
        return 2
    folder = settings.secrets / "keys"
    if args.rotate:
        keys.new_key_in(folder, args.rotate)
    if args.revoke:
        at = args.at if args.at is None or args.at.tzinfo else args.at.replace(tzinfo=UTC)
        try:
            keys.revoke_in(folder, args.revoke, at)
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    ring = keys.ensure_dir(folder)
    if args.out is not None:
        from refbus.services.runtime import identities

        written = keys.export(ring, args.out, settings.event_id_key().hex(), settings.child_ref_key().hex())
        # Each service's NATS seed beside its keys; the servers get the public keys alone.
        for folder, files in identities.export(settings.secrets / "nats", args.out).items():
            written.setdefault(folder, []).extend(files)
        for service, files in written.items():
            print(f"{args.out / service}: {', '.join(files)}")
        print(f"provisioned from {folder}; mount each folder as its service's REFBUS_SECRETS_DIR "
              "(deploy/README.md)")
        return 0
    async with open_bus(settings) as bus:
        await keys.publish(bus.nc, ring)
    rows = [
        {"key_id": r.key_id, "owner": r.owner, "created_at": r.created_at.isoformat(),
         "current": ring.current(r.owner) == r.key_id,
         "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None}
        for r in sorted(ring.records.values(), key=lambda r: (r.owner, r.created_at))
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = "current" if row["current"] else "retired"
            if row["revoked_at"]:
                state = f"revoked {row['revoked_at']}"
            print(f"{row['key_id']:<30} {state}")
        print(f"keys in {folder} (private, never in the log); public records in the bus")
    return 0


def _progress_bar(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True)


async def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.contracts import subjects
    from refbus.services.audit import keys, seal
    from refbus.services.audit.verify import verify_bus
    from refbus.services.runtime.bus import open_bus

    ring = keys.load_dir(settings.secrets / "keys")
    if not ring.anchors():
        print(f"no bus key in {settings.secrets / 'keys'}: nothing to trust (run `refbus keys`)",
              file=sys.stderr)
        return 2
    witness = seal.read_witness(settings.data_dir)
    progress = _progress_bar if sys.stderr.isatty() and not args.json else None
    async with open_bus(settings, **audit_reads(settings)) as bus:
        report = await verify_bus(bus.nc, ring, child=args.child, since=args.since, stream=args.stream,
                                  witness=witness if not args.child else None, progress=progress,
                                  consumer=subjects.AUDITOR_CONSUMER)
        access = None
        if not args.child and args.stream is None:
            from refbus.services.audit.access import verify_access

            access = await verify_access(bus.nc, ring, consumer=subjects.AUDITOR_CONSUMER)
    if progress is not None:
        print(file=sys.stderr)
    if report.ok and report.last_sealed_seq and not args.child and args.stream is None:
        newest = [s for s in await _seals(settings) if s.last_seq == report.last_sealed_seq]
        if newest:
            seal.write_witness(settings.data_dir, newest[-1])
    ok = report.ok and (access is None or access.ok)
    if args.json:
        out = report.as_dict()
        out["access"] = access.as_dict() if access else None
        out["ok"] = ok
        print(json.dumps(out, indent=2, default=str))
    else:
        print(render(report))
        if access is not None:
            print(f"access trail: {access.events} records, " + ("intact" if access.ok else render(access)))
    return 0 if ok else 1


async def _seals(settings: Settings) -> "list[seal.Seal]":
    from refbus.services.audit import seal
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings, **audit_reads(settings)) as bus:
        return await seal.read_seals(bus.nc)


def render(report: "Report") -> str:
    lines = [f"{report.events} events (seq {report.first_seq}..{report.last_seq}), {report.seals_checked} seals "
             f"checked, {report.unsealed} events after the newest seal"]
    first = report.first
    if first is None:
        lines.append("verified: every signature, chain and seal holds")
    else:
        lines.append(f"FIRST BAD EVENT: seq {first.seq}: {first.kind}: {first.detail}")
        lines.extend(f"  {kind:<15}{n:>6}" for kind, n in sorted(report.counts.items()))
    return "\n".join(lines)


async def cmd_seal(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.audit import seal
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings) as bus:
        made = await seal.seal_now(bus.nc, settings.keyring())
    print(f"sealed up to seq {made.last_seq}" if made else "nothing new to seal")
    return 0



# -- reads by a person: recorded first, verified, then shown -----------------------------------------
def reader_identity(args: argparse.Namespace) -> tuple[str, str]:
    who = getattr(args, "who", None) or os.environ.get("REFBUS_USER") or getpass.getuser()
    role = getattr(args, "role", None) or os.environ.get("REFBUS_ROLE") or Role.AUDITOR.value
    return who, role


async def read_for_person(bus_nc: "NATS", settings: Settings, child: str, purpose: str | None, who: str, role: str,
                          what: str) -> "VerifiedHistory":
    """What `history --html`, `timeline` and `export` show a person: the read is recorded in the
    access trail (refused without a purpose: NoPurpose), then the child's history is read and
    verified (a forged page refused). For the lead: `history` can call this too."""
    from refbus.services.audit import keys
    from refbus.services.audit.access import record_access
    from refbus.services.audit.reads import verified_history

    ring = settings.keyring()
    await record_access(bus_nc, ring, who=who, role=role, child=child, purpose=purpose, what=what)
    records = await keys.trusted_records(bus_nc, ring)
    return await verified_history(bus_nc, child, records)


def verification_line(checked: "VerifiedHistory") -> str:
    report = checked.report
    if checked.ok:
        return f"{len(checked.events)} events; every signature and chain holds"
    first = report.first
    return f"{sum(report.counts.values())} problem(s); first: seq {first.seq} {first.kind}: {first.detail}" if first \
        else "problems found"


async def write_timeline(bus_nc: "NATS", settings: Settings, child: str, path: Path, purpose: str | None,
                         who: str, role: str) -> "VerifiedHistory":
    """`refbus history CHILD --html FILE` and `refbus timeline`: the verified page, written to `path`."""
    from refbus.services.audit.timeline import render_html

    checked = await read_for_person(bus_nc, settings, child, purpose, who, role, "timeline")
    page = render_html(child, checked.events, verification_line(checked), checked.ok, generated_at=datetime.now(UTC))
    await asyncio.to_thread(path.write_text, page)
    return checked


async def cmd_timeline(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.audit.access import NoPurpose
    from refbus.services.runtime.bus import open_bus

    who, role = reader_identity(args)
    try:
        async with open_bus(settings, **audit_reads(settings)) as bus:
            checked = await write_timeline(bus.nc, settings, args.child, args.html, getattr(args, "purpose", None),
                                           who, role)
    except NoPurpose as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.html}: {verification_line(checked)}")
    return 0 if checked.ok else 1


async def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.audit.access import NoPurpose
    from refbus.services.audit.fhir import bundle
    from refbus.services.runtime.bus import open_bus

    who, role = reader_identity(args)
    try:
        async with open_bus(settings, **audit_reads(settings)) as bus:
            checked = await read_for_person(bus.nc, settings, args.child, getattr(args, "purpose", None), who, role,
                                            "export")
    except NoPurpose as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(bundle(args.child, checked.events, verified=checked.ok), indent=2)
    if getattr(args, "out", None):
        args.out.write_text(text)
        print(f"wrote {args.out}: {verification_line(checked)}", file=sys.stderr)
    else:
        print(text)
    return 0 if checked.ok else 1


async def cmd_access(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.audit.access import list_access
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings, **audit_reads(settings)) as bus:
        found = await list_access(bus.nc, args.child)
    if args.json:
        print(json.dumps([{"who": r.who, "role": r.role, "at": r.at.isoformat(), "purpose": r.purpose,
                           "what": r.what} for r in found], indent=2))
    else:
        for r in found:
            print(f"{r.at:%Y-%m-%d %H:%M:%S}  {r.who:<16} {r.role:<24} {r.what:<9} {r.purpose}")
        if not found:
            print(f"no recorded reads of {args.child}")
    return 0


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.contracts import subjects
    from refbus.services.audit.projections import rebuild
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.runtime.bus import open_bus

    folder = getattr(args, "out", None) or settings.data_dir / "projections"
    async with open_bus(settings, **audit_reads(settings)) as bus:
        store = JetStreamEventStore(bus.nc, replay_consumer=subjects.AUDITOR_CONSUMER)
        total = (await bus.nc.jetstream().stream_info(subjects.STREAM)).state.last_seq
        progress = (lambda seq: _progress_bar(seq, total)) if sys.stderr.isatty() else None
        state = await rebuild(store.replay, folder, restart=args.restart, progress=progress)
    if progress is not None:
        _progress_bar(total, total)
        print(file=sys.stderr)
    print(f"{state.events} events up to seq {state.last_seq}: {folder / 'projections.json'}")
    return 0
