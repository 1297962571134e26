"""The children's wrapped data keys in the bus: KV bucket REFBUS_CHILD_KEYS, outside the log.

One entry per (child, reader, key id), written once: the bucket keeps one message per key (history 1)
and refuses a second (discard new per subject), and allows no rollup, so a KV purge or an overwrite
by a sector's client is refused by the server; only the admin's message-delete API removes an entry.
`erase` does that with the server's secure erase (the stored bytes overwritten, not merely marked
deleted), then leaves a delete marker in its place: readers see `erased`, and no history keeps the
key (docs/decisions/0021-sealed-content.md).
"""

from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import jetstream
from refbus.services.privacy.sealing import WrappedKey

_KV_OPERATION = "KV-Operation"
_decoder = msgspec.json.Decoder(WrappedKey)
_encoder = msgspec.json.Encoder()


class KeysUnavailable(ConnectionError):
    """The bucket cannot be read or written (not provisioned, or the bus unreachable): for the
    gateway's transports, as the log being unreachable is (503, retry)."""


class Erased:
    """The entry was destroyed by an erasure: a delete marker stands where the wrapped key was."""


ERASED = Erased()


def _key(child: str, reader: Sector | str, key_id: str) -> str:
    return subjects.child_key_subject(child, reader, key_id).removeprefix(f"$KV.{subjects.CHILD_KEYS_BUCKET}.")


@dataclass
class ErasureReport:
    destroyed: int
    "Wrapped keys removed by this erasure."
    already_erased: int
    "Entries an earlier erasure had destroyed."


class ChildKeys:
    def __init__(self, nc: NATS, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self.js = nc.jetstream(timeout=timeout)
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(subjects.CHILD_KEYS_BUCKET)
            except BucketNotFoundError:
                raise KeysUnavailable(f"the bus has no {subjects.CHILD_KEYS_BUCKET} bucket: provision it "
                                      "(refbus up, or the provision job)") from None
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                raise KeysUnavailable(f"the {subjects.CHILD_KEYS_BUCKET} bucket could not be read: {exc!r}") from None
        return self._kv

    async def put(self, child: str, reader: Sector | str, key_id: str, wrapped: WrappedKey) -> None:
        """Keep one wrap; acknowledged by JetStream (the server refuses a second write of the entry)."""
        bucket = await self._bucket()
        try:
            await bucket.create(_key(child, reader, key_id), _encoder.encode(wrapped))
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise KeysUnavailable(f"a wrapped key could not be stored: {exc!r}") from None

    async def get(self, child: str, reader: Sector | str, key_id: str) -> WrappedKey | Erased | None:
        """The reader's wrap of one data key of the child; ERASED after an erasure; None if the reader
        was never given it."""
        bucket = await self._bucket()
        try:
            entry = await bucket.get(_key(child, reader, key_id))
        except KeyDeletedError:
            return ERASED
        except KeyNotFoundError as exc:  # nats-py reports a delete marker so, naming the operation
            return ERASED if exc.op is not None else None
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise KeysUnavailable(f"a wrapped key could not be read: {exc!r}") from None
        try:
            return _decoder.decode(entry.value or b"")
        except msgspec.DecodeError:
            return None  # not a wrap of ours: nothing this reader can open

    async def _entries(self, child: str) -> list[Msg]:
        gets = jetstream.BatchedDirectGet(self.nc)
        try:
            return await gets.all_on(subjects.CHILD_KEYS_STREAM, subjects.child_keys_filter(child), 1, self.timeout)
        except (RuntimeError, TimeoutError, nats.errors.Error) as exc:
            raise KeysUnavailable(f"the child's keys could not be listed: {exc!r}") from None

    async def live(self, child: str) -> int:
        """How many wrapped keys of `child` are still there (not erased)."""
        return sum(1 for msg in await self._entries(child) if not (msg.headers or {}).get(_KV_OPERATION))

    async def erase(self, child: str) -> ErasureReport:
        """Destroy every wrapped key of `child` (the admin's right alone: the message-delete API)."""
        found = await self._entries(child)
        bucket = await self._bucket()
        report = ErasureReport(destroyed=0, already_erased=0)
        for msg in found:
            if (msg.headers or {}).get(_KV_OPERATION):
                report.already_erased += 1
                continue
            seq = jetstream.stored_sequence(msg)
            key = jetstream.stored_subject(msg).removeprefix(f"$KV.{subjects.CHILD_KEYS_BUCKET}.")
            try:
                # Erase, not just delete: the server overwrites the stored bytes (no_erase false).
                await jetstream.api_request(
                    self.nc, jetstream.message_delete_subject(subjects.CHILD_KEYS_STREAM),
                    {"seq": seq, "no_erase": False}, self.timeout,
                )
                await bucket.delete(key)  # the marker readers see as `erased`
            except (jetstream.ApiError, nats.errors.Error, TimeoutError, OSError) as exc:
                raise KeysUnavailable(f"a key could not be erased: {exc!r}") from None
            report.destroyed += 1
        return report
