"""Read models rebuilt from the log: open referrals per receiving sector, outcomes per vulnerability
dimension, time to decision per sector pair. Rebuilt from position zero by `refbus replay`,
resumable from a checkpoint, and deterministic: the same log gives the same bytes (sorted keys, no
wall-clock time inside, times from the events themselves)."""

import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import msgspec

from refbus.contracts.events import STATUS_AFTER, ReferralEvent, ReferralRequested
from refbus.contracts.vocabulary import TERMINAL_STATUSES, Status
from refbus.services.eventstore.records import StoredEvent

CHECKPOINT_EVERY = 50_000


class OpenReferral(msgspec.Struct, array_like=True):
    referrer: str
    receiver: str
    dimension: str
    requested_at: datetime
    status: str = Status.REQUESTED.value
    decided: bool = False


class Projections(msgspec.Struct, kw_only=True):
    last_seq: int = 0
    events: int = 0
    open_by_sector: dict[str, int] = {}
    outcomes_by_dimension: dict[str, dict[str, int]] = {}
    "Per dimension: how many referrals ended in each terminal status or outcome."
    decision_seconds: dict[str, dict[str, int]] = {}
    "Per 'referrer->receiver': seconds from request to accept/reject (rounded) -> how many."
    referrals: dict[str, OpenReferral] = {}
    "Open referrals (the working set; closed ones live on in the counts only)."

    def apply(self, stored: StoredEvent) -> None:
        self.last_seq = stored.seq
        self.events += 1
        event = stored.event
        if not isinstance(event, ReferralEvent):
            return
        rid = str(event.referral_id)
        if isinstance(event, ReferralRequested):
            assert event.to_sector is not None
            self.referrals[rid] = OpenReferral(event.from_sector.value, event.to_sector.value, str(event.dimension),
                                               event.occurred_at)
            self._open(event.to_sector.value, +1)
            return
        referral = self.referrals.get(rid)
        status = STATUS_AFTER.get(type(event))
        if referral is None or status is None:
            return
        referral.status = status.value
        if not referral.decided and status in (Status.ACCEPTED, Status.REJECTED):
            referral.decided = True
            pair = f"{referral.referrer}->{referral.receiver}"
            seconds = str(round((event.occurred_at - referral.requested_at).total_seconds()))
            histogram = self.decision_seconds.setdefault(pair, {})
            histogram[seconds] = histogram.get(seconds, 0) + 1
        if status in TERMINAL_STATUSES:
            result = str(getattr(event, "outcome", None) or status.value)
            counts = self.outcomes_by_dimension.setdefault(referral.dimension, {})
            counts[result] = counts.get(result, 0) + 1
            self._open(referral.receiver, -1)
            del self.referrals[rid]

    def _open(self, sector: str, delta: int) -> None:
        self.open_by_sector[sector] = self.open_by_sector.get(sector, 0) + delta

    def report(self) -> dict[str, object]:
        """The read models (without the working set), times to decision summarised."""
        def summary(histogram: dict[str, int]) -> dict[str, float]:
            values = sorted((int(s), c) for s, c in histogram.items())
            n = sum(histogram.values())
            total = sum(s * c for s, c in values)
            median, seen = 0, 0
            for seconds, count in values:
                seen += count
                if seen * 2 >= n:
                    median = seconds
                    break
            return {"decisions": n, "mean_s": round(total / n, 1) if n else 0.0, "median_s": median,
                    "max_s": values[-1][0] if values else 0}

        return {
            "last_seq": self.last_seq, "events": self.events,
            "open_referrals_by_sector": dict(sorted(self.open_by_sector.items())),
            "outcomes_by_dimension": {
                d: dict(sorted(c.items())) for d, c in sorted(self.outcomes_by_dimension.items())
            },
            "time_to_decision_by_pair": {p: summary(h) for p, h in sorted(self.decision_seconds.items())},
        }


_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(Projections)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def rebuild(
    replay: Callable[[int], AsyncIterator[StoredEvent]],
    folder: Path,
    *,
    restart: bool = False,
    progress: Callable[[int], None] | None = None,
    stop_after: int | None = None,
) -> Projections:
    """Rebuild the projections into `folder` (projections.json), from position zero or from the
    checkpoint there. `stop_after`: stop (checkpointed) after so many events, as an interruption."""
    checkpoint = folder / "checkpoint.json"
    state = Projections()
    if not restart and checkpoint.exists():
        state = _decoder.decode(checkpoint.read_bytes())
    done = 0
    async for stored in replay(state.last_seq + 1):
        state.apply(stored)
        done += 1
        if done % CHECKPOINT_EVERY == 0:
            _atomic_write(checkpoint, _encoder.encode(state))
            if progress is not None:
                progress(stored.seq)
        if stop_after is not None and done >= stop_after:
            break
    _atomic_write(checkpoint, _encoder.encode(state))
    _atomic_write(folder / "projections.json", _encoder.encode(state.report()) + b"\n")
    return state
