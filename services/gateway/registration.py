"""Where a sector's webhook deliveries go, as its own system registers it over the gateway
(`PUT|GET|DELETE /v1/{sector}/webhook`), and the delivery that follows the registration.

The registration is kept in the bus, a KV bucket (REFBUS_WEBHOOKS, one key per sector), not in the
data dir: a deployed sector service has no lasting disk of its own (read-only, a tmpfs), and every
replica of a sector must follow the same registration; each gateway reads its key every `poll_s`
(one direct get) and applies what changed. No key yet: the environment's default
(REFBUS_WEBHOOK_<SECTOR>). A key whose url is None: its system unregistered, nothing is delivered.

Stopping keeps the durable consumer `webhook-<sector>` and its position, so a registration made
again resumes exactly where deliveries stopped: nothing addressed to the sector meanwhile is lost.
The signing secret is not part of the registration: it stays in the data dir (or the environment)
and changes only when a PUT asks for it (`rotate_secret`).
"""

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from refbus.contracts import subjects
from refbus.contracts.commands import Refusal, WebhookRecord, WebhookRegistration, WebhookState
from refbus.contracts.vocabulary import Sector
from refbus.services.gateway import credentials
from refbus.services.gateway.core import refusal

log = structlog.get_logger(__name__)


class RegistrationUnavailable(Exception):
    """The bucket cannot be read or written (missing, or the bus unreachable)."""


class Records(Protocol):
    async def read(self, sector: Sector) -> WebhookRecord | None: ...
    async def write(self, sector: Sector, record: WebhookRecord) -> None: ...


class KvRecords:
    """The registrations in the bus's REFBUS_WEBHOOKS bucket (made by streams.provision)."""

    def __init__(self, nc: NATS, timeout: float = 5.0) -> None:
        self.js = nc.jetstream(timeout=timeout)
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(subjects.WEBHOOKS_BUCKET)
            except BucketNotFoundError:
                raise RegistrationUnavailable(
                    f"the bus has no {subjects.WEBHOOKS_BUCKET} bucket: provision it (refbus up, or the provision job)"
                ) from None
        return self._kv

    async def read(self, sector: Sector) -> WebhookRecord | None:
        try:
            entry = await (await self._bucket()).get(subjects.webhook_registration_key(sector))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise RegistrationUnavailable(f"the registration could not be read: {type(exc).__name__}") from None
        try:
            return msgspec.json.decode(entry.value or b"", type=WebhookRecord)
        except msgspec.DecodeError:  # not ours: treated as never registered, and said
            log.warning("webhook_registration_unreadable", sector=sector.value, revision=entry.revision)
            return None

    async def write(self, sector: Sector, record: WebhookRecord) -> None:
        try:
            await (await self._bucket()).put(subjects.webhook_registration_key(sector), msgspec.json.encode(record))
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise RegistrationUnavailable(f"the registration could not be stored: {type(exc).__name__}") from None


class MemoryRecords:
    """Registrations in memory: for a gateway without a bus (the OpenAPI contract's test app)."""

    def __init__(self) -> None:
        self.records: dict[Sector, WebhookRecord] = {}

    async def read(self, sector: Sector) -> WebhookRecord | None:
        return self.records.get(sector)

    async def write(self, sector: Sector, record: WebhookRecord) -> None:
        self.records[sector] = record


class Delivery(Protocol):
    url: str
    secret: str

    async def stop(self, pause: bool = False) -> None: ...


Starter = Callable[[str, str], Awaitable[Delivery]]
"(url, secret) -> a delivery, started."


def checked_url(url: str) -> Refusal | None:
    """Beyond the schema's pattern: an http(s) URL with a host, nothing a header could be split on."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError as exc:
        return refusal(422, "invalid", f"not a URL: {exc}", field="url")
    if parts.scheme.lower() not in ("http", "https"):
        return refusal(422, "invalid", "the webhook URL must be http or https", field="url")
    if not parts.hostname:
        return refusal(422, "invalid", "the webhook URL has no host", field="url")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return refusal(422, "invalid", "the webhook URL holds a space or a control character", field="url")
    return None


class WebhookControl:
    """One sector's webhook: the registration (bus record over the default), and its delivery."""

    def __init__(
        self,
        sector: Sector,
        records: Records,
        start_delivery: Starter,
        *,
        default_url: str | None,
        secret: str,
        secret_file: Path | None = None,
        poll_s: float = 2.0,
    ) -> None:
        self.sector = sector
        self.records = records
        self.start_delivery = start_delivery
        self.default_url = default_url
        self.secret = secret
        self.secret_file = secret_file
        self.poll_s = poll_s
        self.record: WebhookRecord | None = None
        self.delivery: Delivery | None = None
        self._lock = asyncio.Lock()
        self._follower: asyncio.Task[None] | None = None

    def _effective(self, record: WebhookRecord | None) -> tuple[str | None, str]:
        if record is not None:
            return record.url, "registered" if record.url else "unregistered"
        return self.default_url, "environment" if self.default_url else "none"

    async def start(self) -> None:
        try:
            record = await self.records.read(self.sector)
        except RegistrationUnavailable as exc:
            log.warning("webhook_registration_unavailable", sector=self.sector.value, reason=str(exc))
            record = None
        await self._apply(record)
        self._follower = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        async with self._lock:
            if self.delivery is not None:
                await self.delivery.stop()
                self.delivery = None

    async def _follow(self) -> None:
        """What another replica, or an operator, registered: applied within `poll_s`."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                record = await self.records.read(self.sector)
            except RegistrationUnavailable:
                continue  # keep delivering as registered last; the next read may succeed
            try:
                await self._apply(record)
            except Exception as exc:  # a delivery that could not start is tried again next round
                log.error("webhook_apply_failed", sector=self.sector.value, error=repr(exc))

    async def _apply(self, record: WebhookRecord | None) -> None:
        async with self._lock:
            self.record = record
            url, _ = self._effective(record)
            current = self.delivery
            if current is not None and (current.url, current.secret) == (url, self.secret):
                return
            if current is not None:
                await current.stop(pause=True)
                self.delivery = None
                log.info("webhook_delivery_stopped", sector=self.sector.value)
            if url:
                self.delivery = await self.start_delivery(url, self.secret)

    def state(self, secret: str | None = None) -> WebhookState:
        url, source = self._effective(self.record)
        updated = self.record.updated_at if self.record is not None else None
        return WebhookState(url=url, source=source, delivering=self.delivery is not None, updated_at=updated,
                            secret=secret)

    async def show(self) -> WebhookState:
        try:
            record = await self.records.read(self.sector)
        except RegistrationUnavailable:
            return self.state()  # as applied here last
        await self._apply(record)
        return self.state()

    async def register(self, registration: WebhookRegistration) -> WebhookState | Refusal:
        bad = checked_url(registration.url)
        if bad is not None:
            return bad
        if registration.rotate_secret:
            if self.secret_file is None:
                return refusal(409, "secret_managed_elsewhere", "this deployment sets the signing secret "
                               f"(REFBUS_WEBHOOK_SECRET_{self.sector.value.upper()}): rotate it there")
            self.secret = await asyncio.to_thread(credentials.rotate_webhook_secret, self.secret_file)
            log.info("webhook_secret_rotated", sector=self.sector.value)
        stored = await self._store(registration.url)
        return stored if isinstance(stored, Refusal) else self.state(secret=self.secret)

    async def unregister(self) -> WebhookState | Refusal:
        stored = await self._store(None)
        return stored if isinstance(stored, Refusal) else self.state()

    async def _store(self, url: str | None) -> WebhookRecord | Refusal:
        record = WebhookRecord(url=url, updated_at=dt.datetime.now(dt.UTC))
        try:
            await self.records.write(self.sector, record)
        except RegistrationUnavailable as exc:
            return refusal(503, "unavailable", str(exc))
        await self._apply(record)
        log.info("webhook_registration_stored", sector=self.sector.value, delivering=url is not None)
        return record
