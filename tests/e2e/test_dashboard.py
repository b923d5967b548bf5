"""The live dashboard in a real browser (Debian's Chromium driven by Playwright) during a running demo: it loads
from the coordinator alone, vehicles appear and move, the heatmap renders, an alert injected over MQTT shows
up, a viewer's command is refused and an operator's is sent; a screenshot is saved."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocols import Channel, RecordClass, TelemetryBatch, TelemetryRecord, encode, topic_for
from tests.harness import ROOT, _env, free_port

playwright = pytest.importorskip("playwright.sync_api", reason="playwright comes with the dev extra")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install.sh "
                                                         "--dev installs it)")


class Demo:
    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "demo.log"
        self.port = free_port()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sim_hw", "demo", "--vehicles", "4", "--orders-every", "2", "--speedup", "8",
                 "--api-port", str(self.port), "--workdir", str(tmp_path / "demo"), "--duration", "170"],
                cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (found := re.search(r"dashboard: (\S+)", self.text)) or "started 4 simulated" not in self.text:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the demo did not start: {self.text[-3000:]}")
            time.sleep(0.2)
        self.url = found.group(1)
        operator = re.search(r"operator key, to send vehicles from the dashboard: (\S+)\)", self.text)
        mqtt_port = re.search(r"MQTT on 127\.0\.0\.1:(\d+)", self.text)
        assert operator and mqtt_port, self.text
        self.operator_key = operator.group(1)
        self.mqtt_port = int(mqtt_port.group(1))

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(60)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path)
    try:
        yield running
    finally:
        running.stop()
        print(f"--- the demo's output ---\n{running.text[-6000:]}")  # pytest shows it when the test fails
    assert running.process.returncode == 0 and "demo stopped cleanly" in running.text, running.text[-3000:]


def inject_alert(port: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alert-injector")
    client.connect("127.0.0.1", port)
    client.loop_start()
    batch = TelemetryBatch(vehicle_id="inspector-1", records=[
        TelemetryRecord(seq=1, ts=time.time(), kind="test.injected", cls=RecordClass.ALERT,
                        data={"note": "raised by the dashboard test"})])
    client.publish(topic_for("inspector-1", Channel.TELEMETRY), encode(batch), qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def positions(page: object) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = page.evaluate(  # type: ignore[attr-defined]
        "() => Object.fromEntries([...document.querySelectorAll('circle.vehicle')]"
        ".map(c => [c.dataset.id, [c.dataset.lat, c.dataset.lon]]))")
    return found


def test_the_dashboard_shows_the_fleet_live(demo: Demo, tmp_path: Path) -> None:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            # What the page said, shown when the test fails.
            page.on("console", lambda m: print(f"console {m.type}: {m.text}"))
            page.on("pageerror", lambda e: print(f"page error: {e}"))
            page.on("response", lambda r: r.status >= 400 and print(f"HTTP {r.status} {r.url}"))
            page.goto(demo.url)
            assert "#key=" not in page.url  # the key leaves the address bar
            try:
                page.wait_for_function("document.querySelectorAll('circle.vehicle').length >= 4", timeout=60_000)
            except playwright.TimeoutError:
                print("the page:", page.evaluate(
                    "() => ({link: document.getElementById('link').textContent, "
                    "login: !document.getElementById('login').hidden, view: state.view, "
                    "snapshot: state.snapshot && {ts: state.snapshot.ts, vehicles: state.snapshot.vehicles}})"))
                raise
            first = positions(page)
            page.wait_for_function(
                "(before) => [...document.querySelectorAll('circle.vehicle')].some("
                "c => before[c.dataset.id] && before[c.dataset.id][0] !== c.dataset.lat)", arg=first, timeout=60_000)
            assert page.locator("#link").inner_text() == "live"
            assert page.locator("[data-kpi='vehicles online'] b").inner_text() == "4/4"
            page.wait_for_function("document.querySelectorAll('polygon.cell').length > 0", timeout=30_000)

            inject_alert(demo.mqtt_port)
            page.locator("#alerts li[data-kind='test.injected'][data-vehicle='inspector-1']").wait_for(timeout=30_000)

            page.locator("circle.vehicle").first.dispatch_event("click")
            page.locator("#detail-title").wait_for()
            vehicle = page.locator("#detail-title").inner_text()
            page.locator("#detail-telemetry li[data-kind='position']").first.wait_for(timeout=10_000)
            page.locator("#send-home").click()
            page.wait_for_function("document.getElementById('command-result').textContent.startsWith('refused')")
            assert "403" in page.locator("#command-result").inner_text()
            assert "operator" in page.locator("#command-result").inner_text()

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 20_000
            artifacts = os.environ.get("FLEETEDGE_ARTIFACTS")
            if artifacts:
                Path(artifacts).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(artifacts) / "dashboard.png")
            # Everything came from the coordinator: no CDN, no map tiles.
            assert requests and all(u.startswith(demo.url.split("/dashboard")[0]) for u in requests), requests

            # An operator key may send the vehicle home; this page's first stream never answers (a stuck
            # connection), so it must give up on it and open another.
            operator = browser.new_page()
            streams: list[object] = []

            def first_stream_hangs(route: object) -> None:
                streams.append(route)
                if len(streams) > 1:
                    route.continue_()  # type: ignore[attr-defined]

            operator.route("**/v1/stream*", first_stream_hangs)
            operator.goto(demo.url.split("#")[0] + f"#key={demo.operator_key}")
            operator.wait_for_function("document.querySelectorAll('circle.vehicle').length >= 4", timeout=30_000)
            assert len(streams) == 2
            operator.locator(f"circle.vehicle[data-id='{vehicle}']").dispatch_event("click")
            operator.locator("#send-home").click()
            operator.wait_for_function(
                "document.getElementById('command-result').textContent.startsWith('return_to_launch sent')")
        finally:
            browser.close()
