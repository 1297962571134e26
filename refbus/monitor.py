"""`refbus monitor` and `refbus exporter`: what operators watch. Counts and sector names only.

- `refbus monitor`: a live terminal view (rich) of referral flows between sectors, the funnel, inbox
  backlogs, overdue referrals, dead letters and service health; `--once --json` prints one snapshot
  for scripts; `--web [--port P]` serves the dashboard on 127.0.0.1 instead.
- `refbus exporter`: JetStream's own state (streams, consumers, connected services, dead letters
  kept) for Prometheus at /metrics (the services serve their own metrics on their health port).

The server's monitoring endpoint comes from --monitor-url / REFBUS_MONITOR_URL, else the data dir's
record of the embedded server (server.json), else http://127.0.0.1:8222 when that is the same server;
without one, the JetStream API gives the same figures except who is connected.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from refbus.services.runtime.settings import DEFAULT_NATS_URL, Settings

if TYPE_CHECKING:  # the rest is imported where a command runs: `--help` answers at once
    from rich.console import Group

    from refbus.services.monitor.snapshot import Monitor

DEFAULT_WEB_PORT = 8470
DEFAULT_EXPORTER_PORT = 9470
DEFAULT_MONITORING = "http://127.0.0.1:8222"
DEFAULT_OVERDUE_AFTER_S = 86_400.0
"A day: the shortest follow-up deadline (services/monitor/snapshot.py says the same)."


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    summary = "watch the bus: flows between sectors, the funnel, backlogs, overdue, dead letters, service health"
    monitor = sub.add_parser(
        "monitor", parents=[common], help=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{summary}.\n\nCounts and sector names only, never a child: the log is followed with a "
        "headers-only consumer (no payload leaves the server). Backlogs come from the server's monitoring "
        "endpoint, else the JetStream API. Ctrl-C stops the live view and the dashboard.",
    )
    monitor.add_argument("--once", action="store_true", default=False, help="print one snapshot, then exit")
    monitor.add_argument("--json", action="store_true", default=False, help="with --once: the snapshot as JSON")
    monitor.add_argument("--web", action="store_true", default=False,
                         help="serve the dashboard on 127.0.0.1 instead of the terminal view")
    monitor.add_argument("--port", type=int, default=DEFAULT_WEB_PORT, help="the dashboard's port, with --web")
    _source_options(monitor)
    monitor.add_argument("--health", action="append", default=[], metavar="SERVICE=URL",
                         help="a service's /healthz to probe (repeatable); default: its NATS connection")
    monitor.add_argument("--overdue-after", type=float, default=DEFAULT_OVERDUE_AFTER_S, metavar="SECONDS",
                         help="an open referral unchanged this long counts as overdue (default: a day)")
    monitor.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                         help="seconds between updates of the terminal view")
    monitor.set_defaults(command=cmd_monitor)

    summary = "serve JetStream's state (streams, consumers, dead letters, services connected) for Prometheus"
    exporter = sub.add_parser(
        "exporter", parents=[common], help=summary,
        description=f"{summary}.\n\nGET /metrics reads the server at each scrape. The services serve their own "
        "metrics on their health port (docs/monitoring.md).",
    )
    exporter.add_argument("--port", type=int, default=DEFAULT_EXPORTER_PORT, help="the port /metrics is served on")
    exporter.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    _source_options(exporter)
    exporter.set_defaults(command=cmd_exporter)


def _source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--monitor-url", help="the server's monitoring endpoint, e.g. http://127.0.0.1:8222 "
                        "(default: REFBUS_MONITOR_URL, the embedded server's, or 8222 if it is the same server)")


def _same_server(monitor_url: str, nats_url: str) -> bool:
    """The monitoring endpoint belongs to the server at nats_url (its /varz names the client port)."""
    try:
        with urllib.request.urlopen(monitor_url.rstrip("/") + "/varz", timeout=1.0) as response:
            varz = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return int(varz.get("port", -1)) == (urlparse(nats_url.split(",")[0]).port or 4222)


def _record(data_dir: Path) -> dict[str, object]:
    """The data dir's record of its embedded server (`<data_dir>/server.json`: url, monitor_port, ...)
    when `refbus up` writes one; {} otherwise."""
    try:
        record = json.loads((data_dir / "server.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _recorded_monitor_url(data_dir: Path) -> str | None:
    port = _record(data_dir).get("monitor_port")
    return f"http://127.0.0.1:{port}" if isinstance(port, int) else None


def monitoring_url(args: argparse.Namespace, settings: Settings, nats_url: str) -> str | None:
    given = getattr(args, "monitor_url", None) or os.environ.get("REFBUS_MONITOR_URL")
    if given:
        return given
    for candidate in (_recorded_monitor_url(settings.data_dir), DEFAULT_MONITORING):
        if candidate and _same_server(candidate, nats_url):
            return candidate
    return None


def _nats_url(settings: Settings) -> str:
    """--nats-url / REFBUS_NATS_URL, else the data dir's embedded server, else the default port. The
    monitor never starts a server: it watches one."""
    recorded = _record(settings.data_dir).get("url")
    return settings.nats_url or (recorded if isinstance(recorded, str) else DEFAULT_NATS_URL)


def _reachable(url: str) -> bool:
    from refbus.services.runtime.embedded import port_open

    first = urlparse(url.split(",")[0])
    return first.hostname is not None and port_open(first.port or 4222, first.hostname)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from refbus.services.monitor.snapshot import Monitor, MonitorConfig
    from refbus.services.monitor.web import serve_dashboard
    from refbus.services.runtime.bus import connect

    url = _nats_url(settings)
    if not _reachable(url):
        print(f"no NATS server answers at {url} (start one with `refbus up`, or give --nats-url)", file=sys.stderr)
        return 2
    health = dict(item.split("=", 1) for item in args.health if "=" in item)
    config = MonitorConfig(monitoring_url(args, settings, url), health, args.overdue_after)
    nc = await connect(url, "refbus-monitor", credentials=settings.nats_credentials("operator"),
                       tls=settings.tls_context())
    monitor = await Monitor(nc, config).start()
    try:
        if args.once:
            await monitor.settle()
            snapshot = monitor.snapshot()
            if args.json:
                print(json.dumps(snapshot, indent=2))
            else:
                Console().print(render(snapshot))
            return 0
        if args.web:
            server = await serve_dashboard(monitor, args.port)
            print(f"refbus dashboard on http://127.0.0.1:{args.port}/ (Ctrl-C stops)", flush=True)
            try:
                await _until_signalled()
            finally:
                server.close()
            return 0
        await _live(monitor, args.interval)
        return 0
    finally:
        await monitor.stop()
        await nc.close()


async def _live(monitor: "Monitor", interval: float) -> None:
    from rich.live import Live

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with Live(render(monitor.snapshot()), refresh_per_second=4, screen=False) as live:
        while not stop.is_set():
            live.update(render(monitor.snapshot()))
            try:
                async with asyncio.timeout(interval):
                    await stop.wait()
            except TimeoutError:
                pass


async def cmd_exporter(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.monitor.exporter import scrape
    from refbus.services.monitor.http import Response, serve
    from refbus.services.runtime import metrics
    from refbus.services.runtime.bus import connect

    url = _nats_url(settings)
    nc = (
        await connect(url, "refbus-exporter", credentials=settings.nats_credentials("operator"),
                      tls=settings.tls_context())
        if _reachable(url) else None
    )
    monitor_url = monitoring_url(args, settings, url)

    async def metrics_page() -> Response:
        return Response(await scrape(nc, monitor_url), metrics.CONTENT_TYPE)

    server = await serve(args.host, args.port, {"/metrics": metrics_page}, {})
    print(f"refbus exporter on http://{args.host}:{args.port}/metrics (monitoring endpoint: "
          f"{monitor_url or 'none, JetStream API'}); Ctrl-C stops", flush=True)
    try:
        await _until_signalled()
    finally:
        server.close()
        if nc is not None:
            await nc.close()
    return 0


# -- the terminal view -------------------------------------------------------------------------------


def _n(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def render(snapshot: dict) -> "Group":  # type: ignore[type-arg]
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from refbus.services.monitor.flows import FUNNEL, SECTORS

    flows = {(f["from"], f["to"]): f for f in snapshot["flows"]}
    matrix = Table(title="referrals: from (row) -> to (column)   total  (last minute)", expand=False)
    matrix.add_column("from \\ to")
    for to in SECTORS:
        matrix.add_column(to, justify="right")
    for frm in SECTORS:
        cells = []
        for to in SECTORS:
            flow = flows.get((frm, to))
            cells.append("·" if flow is None else f"{flow['referrals']:,}  ({flow['per_min']})")
        matrix.add_row(frm, *cells)

    funnel = snapshot["funnel"]
    top = max(funnel.get("requested", 0), 1)
    funnel_text = Text()
    for stage in FUNNEL:
        count = funnel.get(stage, 0)
        funnel_text.append(f"{stage:<10}{count:>8,} ", style="bold")
        funnel_text.append("█" * int(30 * count / top) + "\n", style="green")
    funnel_text.append(
        "closed otherwise: " + ", ".join(f"{k} {funnel.get(k, 0):,}" for k in ("rejected", "failed", "cancelled"))
    )

    sectors = Table(title="by sector: inbox pending, in work (delivered, not acked), open, overdue, dead letters")
    for column in ("sector", "service", "pending", "in work", "redelivered", "open", "overdue", "dead"):
        sectors.add_column(column, justify="left" if column in ("sector", "service") else "right")
    for sector in SECTORS:
        inbox = snapshot["inboxes"][sector]
        service = snapshot["services"].get(sector, "unknown")
        style = {"up": "green", "down": "bold red"}.get(service, "yellow")
        sectors.add_row(
            sector, Text(service, style=style), _n(inbox["pending"]), _n(inbox["ack_pending"]),
            _n(inbox["redelivered"]), _n(sum(snapshot["open"][sector].values())), _n(snapshot["overdue"][sector]),
            _n(snapshot["dead_letters"].get(sector, 0)),
        )
    log = snapshot["log"]
    js = snapshot["jetstream"]
    footer = Text(
        f"log: {_n(log['events'])} events counted (to seq {_n(log['counted_to_seq'])} of {_n(log['last_seq'])})"
        f"   pager: {snapshot['services'].get('pager', 'unknown')}   deadlines: "
        f"{snapshot['services'].get('deadlines', 'unknown')}   jetstream via {js['source']}"
        f"   dead letters: {snapshot['dead_letters']['total']:,}   {snapshot['at']}"
    )
    if log["follow_error"]:
        footer.append(f"\n{log['follow_error']}", style="red")
    if js.get("foreign_deliveries"):
        footer.append(f"\nconsumers pushing outside the reply inboxes (delete them, then `refbus verify`): "
                      f"{', '.join(js['foreign_deliveries'])}", style="bold red")
    return Group(matrix, Panel(funnel_text, title="funnel", expand=False), sectors, footer)
