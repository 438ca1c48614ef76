"""The dashboard in a real headless browser (Debian's chromium driven by playwright): it loads, shows every
device, and changes while a request runs."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.serve.conftest import LIMITS, NUM_DEVICES, load_engine
from wdmoe.serve import Engine, create_app
from wdmoe.serve.server import serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="needs Debian's chromium at /usr/bin/chromium: apt-get install -y chromium",
)


def test_dashboard_shows_every_device_and_updates_live(engine: Engine, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with serve_in_thread(create_app(engine, limits=LIMITS)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.querySelector('#conn').textContent === 'live'", timeout=20_000)
            page.wait_for_selector(".device", timeout=20_000)
            devices = page.locator(".device")
            assert devices.count() == engine.model.num_devices
            assert page.locator("#device-0 b.snr").inner_text().endswith("dB")  # link quality from the radio model
            steps_before = int(page.locator("#steps").inner_text())
            tokens_before = sum(int(devices.nth(d).locator("b.tokens").inner_text()) for d in range(devices.count()))

            request = threading.Thread(target=lambda: httpx.post(
                f"{url}/v1/completions", json={"prompt": "live", "max_tokens": 12, "temperature": 0}, timeout=60))
            request.start()
            page.wait_for_function(f"Number(document.querySelector('#steps').textContent) > {steps_before}",
                                   timeout=20_000)
            steps_during = int(page.locator("#steps").inner_text())
            request.join(timeout=60)
            page.wait_for_function("Number(document.querySelector('#requests').textContent) >= 1", timeout=20_000)

            tokens_after = sum(int(devices.nth(d).locator("b.tokens").inner_text()) for d in range(devices.count()))
            assert steps_during > steps_before and tokens_after > tokens_before
            assert page.locator("table.heat td.cell").count() == 2 * 8  # 2 MoE layers x 8 experts
            assert "MHz" in page.locator("#split").inner_html()  # the current bandwidth split
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        finally:
            browser.close()


def test_dashboard_paints_from_the_snapshot_with_history_and_dropped_experts(text_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    """With the live stream blocked, the first paint alone (GET /dashboard/state) fills every figure."""
    from playwright.sync_api import sync_playwright

    engine = load_engine(text_model_dir, name="wlr", theta=0.7)
    try:
        with serve_in_thread(create_app(engine, limits=LIMITS)) as url, sync_playwright() as pw:
            httpx.post(f"{url}/v1/completions", json={"prompt": "paint me", "max_tokens": 6, "temperature": 0},
                       timeout=60)
            state = httpx.get(f"{url}/dashboard/state").json()
            dropped = sum(sum(v) for v in state["dropped"].values())
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                page.route("**/dashboard/events", lambda route: route.abort())
                page.goto(url + "/")
                page.wait_for_selector(".device", timeout=20_000)

                assert page.locator("#model").inner_text() == "tiny-mixtral"
                assert page.locator("#steps").inner_text() == str(state["steps"]) == str(len(state["history"]))
                assert page.locator("#dropped").inner_text() == str(dropped) and dropped > 0
                assert page.locator(".device").count() == NUM_DEVICES
                assert page.locator("#device-0 b.band").inner_text().endswith("MHz")
                assert page.locator("table.heat .drop").count() > 0  # dropped pairs marked in the heatmap
                assert page.locator("#spark-latency polyline").count() == 2  # modeled and wall
                points = page.locator("#spark-air polyline").get_attribute("points") or ""
                assert len(points.split()) == len(state["history"])
                assert "kB" in page.locator("#spark-air .last").inner_text()
                assert page.locator("#conn").inner_text() != "live"  # the stream never opened: all from the snapshot
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        engine.close()
        engine.model.close()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(c) for c in row) for row in np.unique(pixels, axis=0)}
    for line in ((0xF7, 0x90, 0x09), (0x2E, 0x90, 0xFA), (0x12, 0xB7, 0x6A)):  # the three sparklines' strokes
        assert line in colours, f"no {line} in the screenshot: a sparkline was not drawn"
