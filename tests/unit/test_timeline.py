"""The timeline page: self-contained (no network), and it renders in headless Chromium (a
screenshot is saved and must show more than a blank page)."""

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from refbus.contracts.events import ReferralAccepted, ReferralCompleted, ReferralReceived, ReferralRejected
from refbus.contracts.vocabulary import Dimension, Outcome, RejectReason, Sector
from refbus.services.audit import keys
from refbus.services.audit.timeline import render_html
from refbus.services.eventstore.memory import InMemoryEventStore
from tests.factories import answer, new_child, request


async def _page(tmp_path: Path) -> tuple[str, str]:
    store = InMemoryEventStore(keys.ensure(tmp_path))
    child = new_child()
    done = request(child)
    refused = request(child, frm=Sector.EDUCATION, to=Sector.JUSTICE, service="probation_support",
                      dimension=Dimension.FAMILY_AND_SOCIAL)
    await store.transact(child, lambda _s: [done])
    await store.transact(child, lambda _s: [answer(ReferralReceived, done), answer(ReferralAccepted, done)])
    await store.transact(child, lambda _s: [refused])
    await store.transact(child, lambda _s: [answer(ReferralRejected, refused, reason=RejectReason.NOT_ELIGIBLE)])
    await store.transact(child, lambda _s: [answer(ReferralCompleted, done, outcome=Outcome.SERVICE_DELIVERED)])
    return child, render_html(child, await store.history(child), "6 events; every signature and chain holds", True)


async def test_the_page_is_self_contained(tmp_path: Path) -> None:
    child, page = await _page(tmp_path)
    assert child in page and "VERIFIED" in page and page.count("<line ") == 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "@import" not in page


async def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    _, page = await _page(tmp_path)
    html_file = tmp_path / "timeline.html"
    html_file.write_text(page)
    shot = tmp_path / "timeline.png"
    await asyncio.to_thread(
        subprocess.run,
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,1000",
         html_file.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000  # a blank 1400x1000 page compresses to ~5 kB
    keep = os.environ.get("REFBUS_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "timeline.png")
