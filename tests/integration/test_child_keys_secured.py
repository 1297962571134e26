"""The child-keys bucket under deploy/nats-server-secured.conf: a sector stores the wraps of a
referral it seals (for itself, the receiver and the auditors) and reads its own wraps only; nobody but
the admin can remove a wrap (the bucket refuses an overwrite and a KV purge; the delete API is the
admin's), and the admin's erasure leaves a marker the reader sees as `erased`."""

from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream import ApiError, api_request, message_delete_subject
from refbus.services.privacy import sealing
from refbus.services.privacy.keystore import ERASED, ChildKeys, KeysUnavailable
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import new_child
from tests.integration import secured
from tests.integration.secured import connect_as

pytestmark = pytest.mark.integration


@pytest.fixture
def secured_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured.secured_server(tmp_path, monkeypatch)


def a_wrap() -> sealing.WrappedKey:
    return sealing.WrappedKey(reader_key_id="content-health-0123456789abcdef", ephemeral_public=bytes(32),
                              ciphertext=bytes(48))


async def test_wraps_are_written_once_read_by_their_reader_and_erased_by_the_admin(
    secured_server: EmbeddedNats,
) -> None:
    admin = await connect_as(secured_server, "admin")
    await streams.provision(admin.jetstream())
    social, health, justice = [await connect_as(secured_server, s.value) for s in
                               (Sector.SOCIAL, Sector.HEALTH, Sector.JUSTICE)]
    child, key_id = new_child(), "00112233aabbccdd"
    try:
        for reader in (Sector.SOCIAL, Sector.HEALTH, subjects.AUDITORS):  # the referrer wraps for all three
            await ChildKeys(social).put(child, reader, key_id, a_wrap())
        assert await ChildKeys(health).get(child, Sector.HEALTH, key_id) == a_wrap()

        # Another sector's wrap is not readable: not even to learn that it exists.
        with pytest.raises(KeysUnavailable):
            await ChildKeys(justice, timeout=1.0).get(child, Sector.HEALTH, key_id)
        # Written once: neither an overwrite nor a KV purge (a rollup) is taken, from anyone.
        with pytest.raises(KeysUnavailable):
            await ChildKeys(justice).put(child, Sector.HEALTH, key_id, a_wrap())
        with pytest.raises(nats.errors.Error):
            await (await justice.jetstream().key_value(subjects.CHILD_KEYS_BUCKET)).purge(
                f"{child}.health.{key_id}")
        with pytest.raises((nats.errors.Error, TimeoutError, ApiError)):
            await api_request(justice, message_delete_subject(subjects.CHILD_KEYS_STREAM), {"seq": 1}, 1.0)
        assert await ChildKeys(health).get(child, Sector.HEALTH, key_id) == a_wrap()

        report = await ChildKeys(admin).erase(child)
        assert (report.destroyed, report.already_erased) == (3, 0)
        assert await ChildKeys(health).get(child, Sector.HEALTH, key_id) is ERASED
        assert (await ChildKeys(admin).erase(child)).destroyed == 0
    finally:
        for nc in (social, health, justice, admin):
            await nc.drain()
