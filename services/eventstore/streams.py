"""The streams refbus owns, and the one place that creates them.

Only `provision` declares streams (services and FastStream subscribers declare nothing), so no
process can silently rewrite the log's configuration.
"""

import asyncio

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    PersistMode,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ServiceUnavailableError

from refbus.contracts import subjects
from refbus.services.eventstore import jetstream

# Dedup by Nats-Msg-Id is a short-term guard against retried publishes; lasting idempotency
# comes from the per-child expected-sequence check, so the window (and its memory) stays modest.
DUPLICATE_WINDOW_S = 120.0

# Exhausted deliveries are captured next to our own dead letters, so nothing set aside is lost.
MAX_DELIVERIES_ADVISORY = jetstream.max_deliveries_advisory(subjects.STREAM)


def _append_only(**kwargs: object) -> StreamConfig:
    return StreamConfig(
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,  # a full stream refuses writes; it never drops old history
        max_age=0,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
        **kwargs,  # type: ignore[arg-type]
    )


def log_config(replicas: int = 1, max_bytes: int = -1) -> StreamConfig:
    return _append_only(
        name=subjects.STREAM,
        description="refbus: every referral and case event, append-only",
        subjects=[subjects.LOG_SUBJECTS],
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
        max_bytes=max_bytes,
        allow_atomic=True,
    )


def child_index_config(replicas: int = 1) -> StreamConfig:
    src, dest = subjects.CHILD_INDEX_TRANSFORM
    # The index is derived: after a crash it re-sources whatever it lost from REFBUS. So, on a single
    # node, it skips the fsync per message that would cap it below the log's own group-committed
    # rate (ADR-56 async persistence; R1 only). On a cluster, replication is its durability.
    persistence = {"persist_mode": PersistMode.ASYNC} if replicas == 1 else {}
    return _append_only(
        **persistence,
        name=subjects.CHILD_INDEX_STREAM,
        description="refbus: REFBUS re-keyed by child, for reading one child's history",
        # Sourced, not mirrored: a mirror of a direct-get stream is forced to mirror_direct and then
        # answers direct gets addressed to REFBUS with its re-keyed subjects (bench/results/subject_layouts.md).
        sources=[StreamSource(name=subjects.STREAM, subject_transforms=[SubjectTransform(src=src, dest=dest)])],
        num_replicas=replicas,
    )


def pages_config(replicas: int = 1) -> StreamConfig:
    # Derived like the index, so the same asynchronous persistence on one node. Unlike the log and
    # the index, the pager deletes what a merge has superseded: pages are a cache, not the record.
    # Work-queue retention, for its smaller message blocks (docs/decisions/0004-history-pages.md).
    # Nothing is ever removed by that retention: no consumer reads
    # REFBUS_PAGES (readers use direct gets) and no user but the admin may create one.
    persistence = {"persist_mode": PersistMode.ASYNC} if replicas == 1 else {}
    config = _append_only(
        **persistence,
        name=subjects.PAGES_STREAM,
        description="refbus: history pages, one child's events many to a message (derived from the index)",
        subjects=list(subjects.PAGES_SUBJECTS),
        num_replicas=replicas,
    )
    config.deny_delete = False
    config.retention = RetentionPolicy.WORK_QUEUE
    return config


def dead_letter_config(replicas: int = 1) -> StreamConfig:
    return _append_only(
        name=subjects.DEAD_LETTER_STREAM,
        description="refbus: messages set aside for operators, with the reason",
        subjects=[subjects.DEAD_LETTER_SUBJECTS, MAX_DELIVERIES_ADVISORY],
        num_replicas=replicas,
    )


def seals_config(replicas: int = 1) -> StreamConfig:
    return _append_only(
        name=subjects.SEALS_STREAM,
        description="refbus: the bus's signed seals of the log (services/audit/seal.py)",
        subjects=[subjects.SEAL_SUBJECT],
        num_replicas=replicas,
    )


def keys_config(replicas: int = 1) -> StreamConfig:
    return _append_only(
        name=subjects.KEYS_STREAM,
        description="refbus: public signing keys, certified by the bus; the newest record per key wins",
        subjects=[subjects.KEYS_SUBJECTS],
        num_replicas=replicas,
    )


def access_config(replicas: int = 1) -> StreamConfig:
    return _append_only(
        name=subjects.ACCESS_STREAM,
        description="refbus: who read which child's history or export, why (signed, append-only)",
        subjects=[subjects.ACCESS_SUBJECTS],
        num_replicas=replicas,
    )


def webhooks_bucket_config(replicas: int = 1) -> KeyValueConfig:
    # A KV bucket (nats-py's conventions: stream KV_<bucket>, subjects $KV.<bucket>.<key>): each sector
    # system's webhook registration (services/gateway/registration.py). A few revisions are kept, so an
    # operator can see what a registration was before it changed.
    return KeyValueConfig(
        bucket=subjects.WEBHOOKS_BUCKET,
        description="refbus: where each sector system asked its webhook deliveries to go",
        history=8,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=True,
        max_value_size=4096,
    )


def child_keys_config(replicas: int = 1) -> StreamConfig:
    # The children's wrapped data keys (services/privacy/keystore.py), outside the log: a KV bucket
    # (nats-py binds to it by name) with history 1 that refuses a second write to a key and any rollup,
    # so no sector can overwrite or purge a key; only the admin's message-delete API erases one.
    return StreamConfig(
        name=subjects.CHILD_KEYS_STREAM,
        description="refbus: each child's data keys, wrapped for each reader (erased by refbus erase)",
        subjects=[subjects.CHILD_KEYS_SUBJECTS],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        allow_rollup_hdrs=False,
        deny_delete=False,
        deny_purge=True,
        allow_direct=True,
        max_msg_size=1024,
        num_replicas=replicas,
    )


async def provision(js: JetStreamContext, replicas: int = 1, max_bytes: int = -1, wait: float = 60.0) -> None:
    """Create the streams that do not exist yet; leave existing ones exactly as they are.
    On a cluster still forming (no quorum, too few peers), retry for up to `wait` seconds."""
    deadline = asyncio.get_running_loop().time() + wait
    for config in (
        log_config(replicas, max_bytes),
        child_index_config(replicas),
        pages_config(replicas),
        dead_letter_config(replicas),
        seals_config(replicas),
        keys_config(replicas),
        access_config(replicas),
        child_keys_config(replicas),
    ):
        while True:
            try:
                try:
                    await js.stream_info(config.name)  # type: ignore[arg-type]
                except NotFoundError:
                    await js.add_stream(config)
                break
            except (ServiceUnavailableError, BadRequestError, TimeoutError) as exc:
                retryable = not isinstance(exc, BadRequestError) or exc.err_code == jetstream.NO_PEERS_YET
                if not retryable or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
    while True:
        try:
            try:
                await js.key_value(subjects.WEBHOOKS_BUCKET)
            except BucketNotFoundError:
                await js.create_key_value(webhooks_bucket_config(replicas))
            return
        except (ServiceUnavailableError, BadRequestError, TimeoutError) as exc:
            retryable = not isinstance(exc, BadRequestError) or exc.err_code == jetstream.NO_PEERS_YET
            if not retryable or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
