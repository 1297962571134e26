"""`refbus up`, `demo`, `service`: running the bus (the embedded server, the services, the demo)."""

import argparse
import asyncio
import contextlib
import os
import sys
from dataclasses import replace
from typing import Any

from refbus.cli_support import (
    DEADLINES,
    EXIT_NO,
    PAGER,
    UserError,
    command,
    positive_float,
    positive_int,
    say,
)
from refbus.contracts.vocabulary import Sector
from refbus.gateway_cli import extend_up
from refbus.services.runtime.settings import Settings


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """up, demo, service: running the bus."""
    up = command(sub, common, "up", cmd_up, "run the bus: the embedded server, the four sector services and the "
                  "history pager, until Ctrl-C",
                  "One `up` or `demo` per data dir (a lock, <data_dir>/up.lock). The server's URL and monitoring port "
                  "are recorded in <data_dir>/server.json, where the other commands find it. Logs go to "
                  "<data_dir>/logs/refbus.log unless --verbose. The simulated sectors work referrals requested "
                  "within REFBUS_SIM_MAX_AGE_DAYS (7) of their start; older open ones are left to an operator "
                  "(`refbus check` reports them stuck). REFBUS_HEALTH_PORT=P serves /healthz for social, health, "
                  "education, justice and the pager on P..P+4.")
    up.add_argument("--sim-speed", type=positive_float, metavar="N",
                    help="divide the simulated sectors' delays by N; default: REFBUS_SIM_SPEED, else 1")
    extend_up(up)
    up.add_argument("--verbose", action="store_true", default=False, help="logs to stderr instead of the log file")

    demo = command(sub, common, "demo", cmd_demo, "up, plus a synthetic community, until its referrals settle; "
                    "prints a summary",
                    "The community is drawn from the seed: the same seed gives the same children, so a second run "
                    "with the same seed adds nothing (and says so). Exit 1 if referrals are still open at --timeout.")
    demo.add_argument("--children", type=positive_int, default=40, help="children in the community")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the community")
    demo.add_argument("--sim-speed", type=positive_float, default=4.0, metavar="N",
                      help="divide the simulated sectors' delays by N")
    demo.add_argument("--timeout", type=positive_float, default=120.0, metavar="SECONDS",
                      help="how long to wait for the referrals to settle")
    demo.add_argument("--verbose", action="store_true", default=False, help="logs to stderr instead of the log file")

    service = command(sub, common, "service", cmd_service, "run one sector's service, the history pager or the "
                       "deadline service, against a running bus",
                       "The bus: --nats-url, else the server `refbus up` runs on the data dir. Runs until Ctrl-C; "
                       "reconnects for ever once connected. Logs to stderr (JSON lines when not on a terminal).")
    service.add_argument("sector", choices=[*(s.value for s in Sector), PAGER, DEADLINES],
                         help="which service: a sector, the history pager (one per bus, at low CPU priority) or "
                              "the deadline service (one per bus)")
    service.add_argument("--sim-speed", type=positive_float, metavar="N",
                         help="divide the simulated sector's delays by N; default: REFBUS_SIM_SPEED, else 1")
    # Where their logs go (refbus/cli.py _configure_logs): a file under the data dir, or stderr.
    up.set_defaults(logs="file")
    demo.set_defaults(logs="file")
    service.set_defaults(logs="service")


@contextlib.contextmanager
def _one_per_data_dir(settings: Settings, what: str) -> Any:
    """One `up` or `demo` per data dir."""
    from refbus.services.runtime.bus import BusUnavailable
    from refbus.services.runtime.embedded import Locked, file_lock

    path = settings.data_dir / "up.lock"
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise UserError(f"the data dir {settings.data_dir} is not a directory")
    try:
        with file_lock(path, f"refbus {what}"):
            yield
    except Locked as exc:
        raise BusUnavailable(
            f"refbus is already up on {settings.data_dir}, {exc.holder}: one up or demo per data dir; "
            "stop it (Ctrl-C), or use its bus from other commands, or choose another --data-dir"
        ) from None


def _where_data(settings: Settings) -> str:
    if settings.nats_url:  # the log is the server's; the data dir holds the lock, the event-id key, the logs
        return f"local files in {settings.data_dir}"
    return f"data in {settings.data_dir}"


def _where_logs(args: argparse.Namespace) -> str:
    path = getattr(args, "log_file", None)
    return f"; logs in {path}" if path else ""


def _health_lines(settings: Settings) -> list[str]:
    from refbus.services.runtime.in_process import HEALTH_ORDER, health_port

    if settings.health_port is None:
        return []
    ports = ", ".join(f"{getattr(a, 'value', a)} {health_port(settings, a)}" for a in HEALTH_ORDER)
    return [f"health endpoints (GET /healthz on 127.0.0.1): {ports}"]


async def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    async with _the_bus_running(args, settings, "up", "refbus is up: "):
        say("Ctrl-C stops")
        await asyncio.Event().wait()  # until a signal cancels us
    return 0


@contextlib.asynccontextmanager
async def _the_bus_running(args: argparse.Namespace, settings: Settings, what: str, title: str) -> Any:
    """`up` and `demo`: the data dir's one bus, with the services, the pager and the deadline service."""
    from refbus.services.runtime.bus import open_bus
    from refbus.services.runtime.in_process import deadline_service, history_pager, sector_services

    with _one_per_data_dir(settings, what):
        async with open_bus(settings, exclusive=True, announce=False) as bus:
            async with sector_services(bus.url, settings), history_pager(bus.url, settings), \
                    deadline_service(bus.url, settings):
                say(f"{title}{bus.description}; {_where_data(settings)}{_where_logs(args)}")
                for line in _health_lines(settings):
                    say(line)
                yield bus


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.community import community
    from refbus.services.eventstore.bulk import write_all
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.summary import summarise

    async with _the_bus_running(args, settings, "demo", "") as bus:
        eventlog = JetStreamEventStore(bus.nc)
        cases = list(community(args.children, args.seed))
        present = await eventlog.children()
        new = [case for case in cases if case.child not in present]
        sent = 0
        for case in new:
            report = await write_all(eventlog, case.events)
            if report.stored:
                sent += len(case.referrals)
        ours = {case.child for case in cases}
        if not new:
            say(f"the community of {args.children} children (seed {args.seed}) is already in the log: "
                 "0 new referrals sent")
        else:
            again = f" ({len(cases) - len(new)} of its children were already in the log)" if len(new) < len(
                cases) else ""
            say(f"the community of {args.children} children (seed {args.seed}): {sent} referrals sent{again}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        summary = await summarise(eventlog)
        if summary.open_of(ours):
            say(f"waiting up to {args.timeout:g} s for its {summary.open_of(ours)} open referrals to settle")
        while summary.open_of(ours) and loop.time() < deadline:
            await asyncio.sleep(1.0)
            summary = await summarise(eventlog)
        say(summary.render())
        still = summary.open_of(ours)
        if still:
            say(f"{still} of the community's referrals still open after {args.timeout:g} s")
    return 0 if not still else EXIT_NO


async def cmd_service(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.audit.keys import SERVICES_WITH_EVENT_IDS
    from refbus.services.deadlines.main import create_app as deadlines_app
    from refbus.services.pager.main import create_app as pager_app
    from refbus.services.runtime.bus import BusUnavailable, connect, require_streams, safe_url
    from refbus.services.runtime.embedded import read_record
    from refbus.services.runtime.in_process import SECTOR_APPS

    # Its own keys first: a deployment that provisioned them is refused here, in one line, rather than
    # a service signing with a key nobody else knows (docs/decisions/0015-key-provisioning.md).
    settings.service_keyring(args.sector)
    if args.sector in SERVICES_WITH_EVENT_IDS:
        settings.event_id_key()
    url = settings.nats_url
    if url is None:
        record = read_record(settings.data_dir)
        if record is None or not record.server_alive():
            raise BusUnavailable(
                f"no bus running on {settings.data_dir} (no live {settings.data_dir / 'server.json'}): start "
                "`refbus up` there, or pass --nats-url"
            )
        url = record.url
    settings = replace(settings, nats_url=url)
    # Bounded, with one clear line, before the app's own connection (which then reconnects for ever).
    probe = await connect(url, f"refbus-{args.sector}-probe", settings.connect_timeout, reconnect=False,
                          credentials=settings.nats_credentials(args.sector), tls=settings.tls_context())
    try:
        await require_streams(probe, url)
        server_name = (probe._server_info or {}).get("server_name", "?")
    finally:
        await probe.close()
    print(f"using {safe_url(url)} (server {server_name})", file=sys.stderr, flush=True)
    if args.sector == PAGER:
        os.nice(19)  # background work: the sector services on the same machine come first
        app = pager_app(settings)
    elif args.sector == DEADLINES:
        app = deadlines_app(settings)
    else:
        app = SECTOR_APPS[Sector(args.sector)](settings)
    await app.start()
    try:
        print(f"refbus service {args.sector} is running; Ctrl-C stops", file=sys.stderr, flush=True)
        await asyncio.Event().wait()
    finally:
        await app.stop()
    return 0
