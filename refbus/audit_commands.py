"""The auditor's commands (issue 16): keys, verify, seal, access, timeline, export, replay.

Registered in refbus.cli by one call, `register(sub, common)`; each command is
`async (args, settings) -> exit code` like the others there.
"""

import argparse
import json
import sys
from datetime import UTC, datetime

from refbus.services.audit import keys, seal
from refbus.services.audit.verify import Report, verify_bus
from refbus.services.runtime.bus import open_bus
from refbus.services.runtime.settings import Settings


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", common: argparse.ArgumentParser) -> None:
    k = sub.add_parser("keys", parents=[common], help="make the sectors' and the bus's signing keys (first run), "
                       "rotate or revoke one, publish the public keys to the bus")
    k.add_argument("--rotate", metavar="OWNER", choices=keys.OWNERS, help="a new current key for this owner")
    k.add_argument("--revoke", metavar="KEY_ID", help="revoke a key: what it signs from --at on is refused")
    k.add_argument("--at", type=datetime.fromisoformat, help="revocation time (ISO 8601; default now)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(command=cmd_keys)

    v = sub.add_parser("verify", parents=[common], help="check every signature, chain and seal of the log; "
                       "exit 1 naming the first bad event")
    v.add_argument("--child", help="only this child's events (signatures and chain; seals cover the whole log)")
    v.add_argument("--since", type=int, metavar="SEQ", help="start at the newest seal before SEQ")
    v.add_argument("--json", action="store_true")
    v.add_argument("--stream", help=argparse.SUPPRESS)  # tests: a copy of the log's shape
    v.set_defaults(command=cmd_verify)

    s = sub.add_parser("seal", parents=[common], help="seal the log now (the pager's service does it every minute)")
    s.set_defaults(command=cmd_seal)


async def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    if args.rotate:
        keys.new_key(settings.data_dir, args.rotate)
    if args.revoke:
        at = args.at if args.at is None or args.at.tzinfo else args.at.replace(tzinfo=UTC)
        keys.revoke(settings.data_dir, args.revoke, at)
    ring = keys.ensure(settings.data_dir)
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
        print(f"keys in {keys.keys_dir(settings.data_dir)} (private, never in the log); public records in the bus")
    return 0


def _progress_bar(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True)


async def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    ring = keys.load(settings.data_dir)
    if not ring.anchors():
        print(f"no bus key in {keys.keys_dir(settings.data_dir)}: nothing to trust (run `refbus keys`)",
              file=sys.stderr)
        return 2
    witness = seal.read_witness(settings.data_dir)
    progress = _progress_bar if sys.stderr.isatty() and not args.json else None
    async with open_bus(settings) as bus:
        report = await verify_bus(bus.nc, ring, child=args.child, since=args.since, stream=args.stream,
                                  witness=witness if not args.child else None, progress=progress)
        access = None
        if not args.child and args.stream is None:
            from refbus.services.audit.access import verify_access

            access = await verify_access(bus.nc, ring)
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


async def _seals(settings: Settings) -> list[seal.Seal]:
    async with open_bus(settings) as bus:
        return await seal.read_seals(bus.nc)


def render(report: Report) -> str:
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
    async with open_bus(settings) as bus:
        made = await seal.seal_now(bus.nc, settings.keyring())
    print(f"sealed up to seq {made.last_seq}" if made else "nothing new to seal")
    return 0

