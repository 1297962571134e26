"""`refbus monitor` during a demo, on a real server of the test's own: the snapshot shows flows
between sectors, the funnel and the services, and nothing that names a child. And the dashboard in a
real headless browser (Debian's chromium + chromedriver, driven by Selenium): its numbers move while
the demo runs; a screenshot is saved under the test's tmp dir.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from refbus.services.runtime.embedded import EmbeddedNats, free_port, port_open

pytestmark = pytest.mark.integration

REFBUS = [sys.executable, "-m", "refbus.cli"]
CHILD_REF = re.compile(r"c[0-9a-f]{16}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("REFBUS_")} | {"REFBUS_LOG_LEVEL": "WARNING"}


@pytest.fixture
def demo(own_server: EmbeddedNats, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`refbus demo` against the test's own server: a community whose referrals take a while (the
    simulated sectors at their own pace) so that the monitor sees them move."""
    process = subprocess.Popen(
        [*REFBUS, "demo", "--nats-url", own_server.url, "--data-dir", str(tmp_path / "demo"),
         "--children", "150", "--sim-speed", "0.2", "--timeout", "120"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=(tmp_path / "demo.log").open("wb"),
    )
    yield process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _snapshot(server: EmbeddedNats, *extra: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [*REFBUS, "monitor", "--once", "--json", "--nats-url", server.url, *extra],
        env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert not CHILD_REF.search(out), "a child reference in the monitor's output"
    assert not UUID.search(out), "an id in the monitor's output"
    return json.loads(out)


def test_once_json_during_a_demo_shows_flows_and_names_no_child(
    own_server: EmbeddedNats, demo: subprocess.Popen[bytes]
) -> None:
    monitoring = f"http://127.0.0.1:{own_server.monitor_port}"
    deadline = time.monotonic() + 60
    while True:
        snapshot = _snapshot(own_server, "--monitor-url", monitoring)
        busy_pairs = [f for f in snapshot["flows"] if f["referrals"] > 0]
        if len(busy_pairs) >= 3 and snapshot["funnel"]["accepted"] > 0:
            break
        assert time.monotonic() < deadline, f"too few flows after 60 s: {snapshot['flows']}"
        time.sleep(1)
    assert demo.poll() is None, "the demo ended before the monitor saw it: make it longer"
    assert snapshot["log"]["counted_to_seq"] >= 1 and snapshot["log"]["events"] == snapshot["log"]["counted_to_seq"]
    assert snapshot["funnel"]["requested"] >= snapshot["funnel"]["received"] > 0
    assert snapshot["jetstream"]["source"] == "jsz"
    services = ["social", "health", "education", "justice", "pager", "deadlines"]
    assert snapshot["services"] == dict.fromkeys(services, "up")
    # --once counts the log up to where it ended when the server was read: at least that far.
    assert 0 < snapshot["streams"]["REFBUS"]["messages"] <= snapshot["log"]["counted_to_seq"]
    fields = {"pending", "ack_pending", "redelivered", "waiting"}
    assert all(set(inbox) == fields for inbox in snapshot["inboxes"].values())

    # Without the monitoring endpoint, the JetStream API gives the same backlogs (not who is connected).
    by_api = _snapshot(own_server, "--monitor-url", "http://127.0.0.1:1")
    assert by_api["jetstream"]["source"] == "api"
    assert set(by_api["inboxes"]["health"]) == {"pending", "ack_pending", "redelivered", "waiting"}
    assert by_api["inboxes"]["health"]["pending"] is not None
    assert sum(f["referrals"] for f in by_api["flows"]) >= sum(f["referrals"] for f in snapshot["flows"])


def test_exporter_serves_jetstream_state(own_server: EmbeddedNats, demo: subprocess.Popen[bytes]) -> None:
    port = free_port()
    process = subprocess.Popen(
        [*REFBUS, "exporter", "--port", str(port), "--nats-url", own_server.url,
         "--monitor-url", f"http://127.0.0.1:{own_server.monitor_port}"],
        env=_env(), stdout=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        deadline = time.monotonic() + 30
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if 'refbus_service_connected{service="health"} 1.0' in text:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
        assert "refbus_jetstream_up 1.0" in text
        assert 'refbus_jetstream_stream_messages{stream="REFBUS"}' in text
        assert 'refbus_jetstream_consumer_num_pending{consumer="inbox-health",stream="REFBUS"}' in text
        assert 'refbus_dead_letter_stream_messages{sector="social"}' in text
        assert not CHILD_REF.search(text)
    finally:
        process.terminate()
        process.wait(10)


def _wait_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not port_open(port):
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.1)


# -- the dashboard in a real browser ---------------------------------------------------------------


def _browser_binaries() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def test_dashboard_numbers_move_in_a_real_browser(
    own_server: EmbeddedNats, demo: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    binaries = _browser_binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing: .ci/run installs them (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    web = subprocess.Popen(
        [*REFBUS, "monitor", "--web", "--port", str(port), "--nats-url", own_server.url,
         "--monitor-url", f"http://127.0.0.1:{own_server.monitor_port}"],
        env=_env(), stdout=subprocess.DEVNULL,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = binaries[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = None
    try:
        _wait_port(port)
        driver = webdriver.Chrome(service=Service(executable_path=binaries[1]), options=options)
        driver.get(f"http://127.0.0.1:{port}/")
        assert "refbus" in driver.title

        def events_total() -> int:
            return int(driver.find_element(By.ID, "events-total").text.replace(",", "") or 0)

        WebDriverWait(driver, 30).until(lambda d: events_total() > 0)
        first = events_total()
        first_received = int(driver.find_element(By.ID, "funnel-received").text.replace(",", ""))
        WebDriverWait(driver, 30, poll_frequency=0.5).until(lambda d: events_total() > first)
        assert demo.poll() is None, "the demo ended before the page was read twice"
        WebDriverWait(driver, 30).until(
            lambda d: int(d.find_element(By.ID, "funnel-received").text.replace(",", "")) >= first_received
        )
        # The page updated itself (no reload): the same document, newer numbers.
        assert driver.execute_script("return performance.getEntriesByType('navigation').length") == 1
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "service-health").text == "up")
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#flows line")) >= 3)
        html = driver.page_source
        assert not CHILD_REF.search(html) and not UUID.search(html)
        # No resource from anywhere else: the page is self-contained.
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith(f"http://127.0.0.1:{port}/") for u in urls), urls
        time.sleep(1.5)  # let the bars finish their transition for the picture
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("REFBUS_SCREENSHOT_TO"):
            shutil.copy(shot, os.environ["REFBUS_SCREENSHOT_TO"])
    finally:
        if driver is not None:
            driver.quit()
        web.terminate()
        web.wait(10)
