"""Getting a bus to talk to: a server given by URL, or the embedded server of the data dir.

Which server a command uses is explicit: `--nats-url` / REFBUS_NATS_URL, else the embedded server
recorded in `<data_dir>/server.json` (checked alive and the same server by its id), else one started
on that data dir for the command's length (4222 and 8222 when free, else free ports, recorded). No
other server is ever used because it happens to listen on 4222. Every first connection is bounded
(`Settings.connect_timeout`) and ends in `BusUnavailable`, one line naming the URL and the cause;
after it, long-lived clients reconnect for ever, quietly (one log line per event, no tracebacks).
"""

import asyncio
import contextlib
import os
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import structlog
from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError, NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError

from refbus.contracts import subjects
from refbus.services.audit import keys
from refbus.services.eventstore import streams
from refbus.services.runtime import identities
from refbus.services.runtime.embedded import (
    DEFAULT_CONFIG,
    EmbeddedNats,
    Locked,
    ServerRecord,
    embedded_server_name,
    file_lock,
    port_open,
    preferred_port,
    read_record,
    remove_record,
    write_record,
)
from refbus.services.runtime.identities import Credentials, IdentityError
from refbus.services.runtime.settings import DEFAULT_MONITOR_PORT, DEFAULT_PORT, Settings
from refbus.services.runtime.tls import PLAIN_REFUSED, describe_failure, upgraded

log = structlog.get_logger(__name__)


class BusUnavailable(Exception):
    """No usable bus: the message is one line for the user (what and where, and what to do)."""


@dataclass
class Bus:
    nc: NATS
    url: str
    server: EmbeddedNats | None
    "Set when this process started the server (and so stops it)."
    description: str = ""
    "Which server answered, in one line (what a command prints on stderr)."
    record: ServerRecord | None = None
    "The data dir's server record, when the bus is the embedded server."


def reply_prefix(url: str) -> str:
    """The reply-inbox prefix of the user a URL connects as, `_INBOX.<user>` (nats-py's `_INBOX`
    without a user): under the secured permissions a user may subscribe to its own replies only."""
    user = urlparse(url.split(",")[0]).username
    return f"_INBOX.{user}" if user else "_INBOX"


def connect_options(url: str, credentials: Credentials | None) -> dict[str, str]:
    """nats-py's options for connecting as `credentials` (its seed, its reply prefix), or as the URL
    says when there is no seed. BusUnavailable names a seed file that holds no user seed."""
    if credentials is None or credentials.seed_file is None:
        return {"inbox_prefix": reply_prefix(url)}
    try:
        identities.public_key(credentials.seed_file)  # a bad seed is named here, not deep in nats-py
    except IdentityError as exc:
        raise BusUnavailable(f"cannot connect to {safe_url(url)} as {credentials.identity}: {exc}") from None
    return credentials.connect_options()


def safe_url(url: str) -> str:
    """The URL without a password, for messages and logs."""
    shown = []
    for one in url.split(","):
        parsed = urlparse(one)
        if parsed.password:
            one = one.replace(f":{parsed.password}@", ":***@", 1)
        shown.append(one)
    return ",".join(shown)


def describe_error(exc: BaseException | None, timeout: float) -> str:
    """The cause of a failed connection in a few words."""
    if exc is None or isinstance(exc, (TimeoutError, NatsTimeout)):
        return f"no answer within {timeout:g} s (timeout)"
    text = str(exc).lower()
    if isinstance(exc, AuthorizationError) or "authorization" in text or "authentication" in text:
        return ("authorization refused: wrong or missing credentials (the identity's nkey seed: "
                "REFBUS_NATS_NKEY_SEED_FILE, else <secrets>/nats/<identity>.nk)")
    if isinstance(exc, ssl.SSLError) or "tls" in text or "ssl" in text:
        return describe_failure(exc)
    if isinstance(exc, ConnectionRefusedError) or "refused" in text:
        return "connection refused: no server listens there"
    if isinstance(exc, OSError):
        return f"cannot reach it ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _most_telling(errors: list[BaseException]) -> BaseException:
    """Of the errors of several attempts, the one that tells the user most: a refused password is
    followed by resets on the retries, and the password is what to fix."""
    for kind in ("authorization", "tls", "ssl", "refused"):
        for exc in errors:
            if isinstance(exc, AuthorizationError) or kind in str(exc).lower():
                return exc
    return errors[-1]


async def connect(
    url: str,
    name: str = "refbus",
    timeout: float = 5.0,  # noqa: ASYNC109  # the bound is the point: it ends in one clear line
    *,
    reconnect: bool = True,
    credentials: Credentials | None = None, tls: ssl.SSLContext | None = None,
) -> NATS:
    """Connect within `timeout` seconds or raise BusUnavailable naming the URL and the cause. Once
    connected the client reconnects for ever (`reconnect`), logging each disconnection in one line.
    `credentials`: the identity (its seed and reply prefix), None: as the URL says; `tls`: TLS only."""
    last_error: list[BaseException] = []
    options = connect_options(url, credentials)
    connected = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        last_error.append(exc)
        if connected.is_set():
            log.warning("nats_error", url=safe_url(url), error=str(exc) or type(exc).__name__)

    async def on_disconnected() -> None:
        if connected.is_set() and not nc.is_closed:
            log.info("nats_disconnected", url=safe_url(url))

    async def on_reconnected() -> None:
        log.info("nats_reconnected", url=safe_url(url))

    nc = NATS()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=url.split(","),
                name=name,
                connect_timeout=max(0.5, min(timeout, 2.0)),
                # Bounded while connecting the first time: a server may be starting, not for ever.
                max_reconnect_attempts=2,
                reconnect_time_wait=0.25,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                tls=tls, **options,  # type: ignore[arg-type]
            ),
            timeout,
        )
        if tls is not None and not upgraded(nc):  # nats-py goes plain when a server does not ask for TLS
            raise ssl.SSLError(PLAIN_REFUSED)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 1.0)
        cause: BaseException = exc
        if isinstance(exc, (TimeoutError, NoServersError)) and last_error:
            cause = _most_telling(last_error)
        raise BusUnavailable(f"cannot connect to {safe_url(url)}: {describe_error(cause, timeout)}") from None
    connected.set()
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 0.5
    else:
        nc.options["allow_reconnect"] = False
    return nc


async def require_streams(nc: NATS, url: str) -> None:
    """Raise BusUnavailable when the bus lacks the log (a server nobody provisioned)."""
    try:
        await nc.jetstream(timeout=5.0).stream_info(subjects.STREAM)
    except NotFoundError:
        raise BusUnavailable(
            f"the bus at {safe_url(url)} has no {subjects.STREAM} stream: run `refbus up` on it, or provision it "
            "(deploy/README.md)"
        ) from None
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        if "jetstream not enabled" in text.lower() or "503" in text:
            raise BusUnavailable(f"the server at {safe_url(url)} has no JetStream: start it with -js") from None
        raise BusUnavailable(f"cannot read the streams at {safe_url(url)}: {text}") from None


def _owner() -> str:
    return "refbus " + " ".join(sys.argv[1:2]) if sys.argv[1:2] else "refbus"


async def _attach(record: ServerRecord, settings: Settings, name: str, credentials: Credentials) -> NATS:
    try:
        nc = await connect(record.url, name, settings.connect_timeout, credentials=credentials,
                           tls=settings.tls_context())
    except BusUnavailable as exc:
        if "authorization" not in str(exc):
            raise
        # The data dir's own seeds are refused: the server there is not this data dir's.
        raise BusUnavailable(
            f"{settings.data_dir / 'server.json'} names a server at {record.url} that refuses this data dir's "
            f"credentials (another data dir's server?): refusing to use it; stop that server or remove "
            f"{settings.data_dir / 'server.json'}"
        ) from None
    answered = (nc._server_info or {}).get("server_id")
    if answered != record.server_id:
        await nc.close()
        raise BusUnavailable(
            f"{settings.data_dir / 'server.json'} names server {record.server_id[:8]} at {record.url}, but "
            f"{answered and str(answered)[:8]} answers there (another data dir's server?): refusing to use it; "
            f"stop that server or remove {settings.data_dir / 'server.json'}"
        )
    return nc


async def _start_embedded(settings: Settings) -> EmbeddedNats:
    data_dir = settings.data_dir
    for given, variable in ((settings.port, "REFBUS_PORT"), (settings.monitor_port, "REFBUS_MONITOR_PORT")):
        if given is not None and port_open(given):
            raise BusUnavailable(f"port {given} ({variable}) is in use by another process: choose another, or unset "
                                 f"{variable} to take a free one")
    attempts = 1 if settings.port and settings.monitor_port else 3
    # Authentication on: every identity's seed kept in the data dir, the server told their public keys.
    folder = settings.secrets / "nats"
    try:
        public_keys = identities.load(folder) if settings.keys_provisioned else identities.ensure(folder)
    except IdentityError as exc:
        raise BusUnavailable(f"the embedded server on {data_dir} has no users: {exc}") from None
    users = identities.server_env(public_keys)
    for attempt in range(attempts):
        server = EmbeddedNats(
            data_dir / "nats",
            port=settings.port or (preferred_port(DEFAULT_PORT) if attempt == 0 else None),
            monitor_port=settings.monitor_port or (preferred_port(DEFAULT_MONITOR_PORT) if attempt == 0 else None),
            server_name=embedded_server_name(data_dir),
            config=DEFAULT_CONFIG,
            env=users, tls=settings.embedded_tls(),
        )
        starting = asyncio.ensure_future(server.astart())
        try:
            await asyncio.shield(starting)
            return server
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await starting
            await server.astop()
            raise
        except (RuntimeError, TimeoutError, OSError) as exc:
            # A port free when chosen can be taken before the server binds it (a busy machine's
            # outgoing connections use the same range): chosen ports are chosen again.
            if attempt + 1 == attempts:
                raise BusUnavailable(f"the embedded server on {data_dir} did not start: {exc}") from None
            log.info("embedded_server_retry", error=str(exc))
    raise AssertionError("unreachable")


async def _provision_as_admin(nc: NATS, url: str, settings: Settings, identity: str) -> None:
    """The streams, created if missing, and the public key records, by the admin: over `nc` when it is the
    admin's, else over a connection of the admin's own for the length of it (the embedded server: its data dir
    holds the seeds; no other command's user may write the key records)."""
    admin = nc if identity == "admin" else await connect(
        url, "refbus-provision", settings.connect_timeout, reconnect=False,
        credentials=settings.nats_credentials("admin"), tls=settings.tls_context(),
    )
    try:
        await streams.provision(admin.jetstream(), replicas=settings.replicas, wait=settings.connect_timeout + 10)
        if (ring := settings.keyring()).can_certify():  # the public records, certified; the admin may write them
            try:
                await keys.publish(admin, ring, wait=2.0)
            except Exception as exc:  # a bus without REFBUS_KEYS: reads still work
                log.warning("keys_not_published", error=repr(exc))
    finally:
        if admin is not nc:
            await admin.close()


@asynccontextmanager
async def open_bus(
    settings: Settings,
    name: str = "refbus",
    *,
    provision: bool = True,
    exclusive: bool = False,
    announce: bool = True,
    identity: str = "admin",
) -> AsyncIterator[Bus]:
    """The bus of `settings`: its URL, else the data dir's running embedded server, else one started
    on the data dir for as long as the block runs, connected as `identity` (README "Identities and
    TLS" says which command is whom). `provision` creates missing streams, as the admin: on a server
    given by URL only a command that is the admin provisions, any other requires the streams.
    `exclusive` (up, demo) refuses a server another live command started. `announce` prints which
    server answered, one line on stderr."""
    server: EmbeddedNats | None = None
    record: ServerRecord | None = None
    data_dir = settings.data_dir
    credentials = settings.nats_credentials(identity)
    if settings.nats_url:
        url = settings.nats_url
        provision = provision and identity == "admin"
        nc = await connect(url, name, settings.connect_timeout, credentials=credentials, tls=settings.tls_context())
        server_name = (nc._server_info or {}).get("server_name", "?")
        description = f"using {safe_url(url)} (server {server_name})"
    else:
        if data_dir.exists() and not data_dir.is_dir():
            raise BusUnavailable(f"the data dir {data_dir} is not a directory")
        try:
            with file_lock(data_dir / "server.lock", _owner(), wait=settings.connect_timeout + 20):
                record = read_record(data_dir)
                if record is not None and not record.server_alive():
                    log.info("stale_server_record", pid=record.pid, data_dir=str(data_dir))
                    remove_record(data_dir)
                    record = None
                if record is not None and exclusive and record.owner_alive() and record.owner_pid != os.getpid():
                    raise BusUnavailable(
                        f"the server of {data_dir} was started by pid {record.owner_pid} ({record.owner}) and stops "
                        "with it: wait for it to end, then try again"
                    )
                if record is not None:
                    nc = await _attach(record, settings, name, credentials)
                    adopted = not record.owner_alive()
                    if adopted:  # its starter died: this command owns it now and stops it at the end
                        record.owner_pid, record.owner = os.getpid(), _owner()
                        write_record(data_dir, record)
                        server = EmbeddedNats.adopt(record)
                    description = (
                        f"using the embedded server of {data_dir} at {record.url} (monitoring {record.monitor_url}, "
                        f"pid {record.pid}), " + ("adopted" if adopted else f"started by pid {record.owner_pid} "
                                                  f"({record.owner})")
                    )
                else:
                    server = await _start_embedded(settings)
                    assert server.process is not None
                    record = ServerRecord(
                        url=server.url, port=server.port, monitor_port=server.monitor_port, pid=server.process.pid,
                        server_id=server.server_id or "", server_name=server.server_name or "",
                        data_dir=str(data_dir.resolve()), owner_pid=os.getpid(), owner=_owner(),
                        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    )
                    write_record(data_dir, record)
                    try:
                        nc = await connect(server.url, name, settings.connect_timeout, tls=settings.tls_context(),
                                           credentials=settings.nats_credentials(identity))
                    except BaseException:
                        remove_record(data_dir, record.pid)
                        await server.astop()
                        raise
                    description = (
                        f"started the embedded server of {data_dir} at {server.url} "
                        f"(monitoring {record.monitor_url}, pid {record.pid})"
                    )
        except Locked as exc:
            raise BusUnavailable(
                f"the data dir {data_dir} is busy starting a server ({exc.holder}); try again"
            ) from None
        url = record.url
    try:
        if provision:
            try:
                await _provision_as_admin(nc, url, settings, identity)
            except BusUnavailable:
                raise
            except Exception as exc:
                text = str(exc) or type(exc).__name__
                raise BusUnavailable(f"cannot provision the streams at {safe_url(url)}: {text}") from None
        else:
            await require_streams(nc, url)
        keys.install(settings.keyring())  # what this process writes is signed with the deployment's keys
        if announce:
            print(description, file=sys.stderr, flush=True)
        yield Bus(nc, url, server, description, record)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 5.0)
        if server is not None:
            if record is not None:
                remove_record(data_dir, record.pid)
            await server.astop()


def default_data_dir_url(data_dir: Path) -> str | None:
    """The URL of the running embedded server of `data_dir`, if any."""
    record = read_record(data_dir)
    return record.url if record is not None and record.server_alive() else None
