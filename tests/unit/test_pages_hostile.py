"""Issue 12, item 5 for history pages: whatever bytes sit in REFBUS_PAGES, decoding them raises
UnreadablePage and nothing else, so a reader falls back to the index."""

import pytest

from refbus.contracts import pages


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x91" * 1_000_000,  # an array in an array, a million deep
        b"\x94\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
        b'{"events": []}',
        pages.encode_checkpoint(pages.PagerCheckpoint(index_seq=7)),
        pages.encode_page(pages.HistoryPage(events=[(1, 2, b"x")]))[:-1],
    ],
    ids=["empty", "reserved byte", "deep", "huge length", "json", "a checkpoint", "truncated"],
)
def test_hostile_bytes_are_an_unreadable_page(data: bytes) -> None:
    with pytest.raises(pages.UnreadablePage):
        pages.decode_page(data)


def test_a_manifest_whose_runs_and_counts_disagree_is_unreadable() -> None:
    data = pages.encode_page(pages.HistoryPage(events=[], covered_index_seq=3, runs=[[1], [2]], run_events=[5]))
    with pytest.raises(pages.UnreadablePage, match="2 runs"):
        pages.decode_page(data)


@pytest.mark.parametrize("data", [b"", b"\x91" * 1_000_000, b"\x91\xa1x"])
def test_hostile_bytes_are_an_unreadable_checkpoint(data: bytes) -> None:
    with pytest.raises(pages.UnreadablePage):
        pages.decode_checkpoint(data)


def test_the_history_reader_already_falls_back_on_it() -> None:
    """EventLog.history_pages reads the index instead on RuntimeError (services/core/eventlog.py)."""
    assert issubclass(pages.UnreadablePage, RuntimeError) and issubclass(pages.UnreadablePage, ValueError)


def test_good_pages_still_round_trip() -> None:
    page = pages.HistoryPage(events=[(1, 2, b"{}"), (3, 4, b"[]")], covered_index_seq=9, runs=[[5, 6]], run_events=[2])
    assert pages.decode_page(pages.encode_page(page)) == page
