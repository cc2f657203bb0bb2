"""The editor page in a real browser: `conceptvae serve` started as a user starts it, driven by
Playwright in the system's Chromium (Debian's `chromium` package; Playwright's own browser
download is not used).

Skipped only where Chromium (or Playwright) is missing AND the environment variable CI is unset;
in CI a missing browser is a failure, so this test never silently disappears there (.ci/run
installs chromium).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_edit import face_photo

MAKE = 0x010F  # EXIF tag: camera make
SCREENSHOT = os.environ.get("CONCEPTVAE_SERVE_SCREENSHOT")  # also save it here when set


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    why = None
    if found is None:
        why = "no chromium on PATH (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "playwright is not installed (pip install -e '.[test]')"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"conceptvae serve exited early:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "api/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("conceptvae serve did not answer in time")


def _img_bytes(page) -> bytes:
    """The bytes of the image the page shows now (a blob: URL)."""
    data = page.evaluate(
        """async () => {
            const r = await fetch(document.getElementById('photo').src);
            return Array.from(new Uint8Array(await r.arrayBuffer()));
        }"""
    )
    return bytes(data)


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_edit_a_photo_in_the_browser(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    photo = face_photo(size=(400, 480), centre=(240, 190), scale=1.3)
    exif = Image.Exif()
    exif[MAKE] = "BrowserTestCam"
    src = tmp_path / "portrait.jpg"
    Image.fromarray(photo).save(src, "JPEG", quality=95, exif=exif.tobytes())

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    exe = Path(sys.executable).with_name("conceptvae")
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_ready(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            assert page.locator(".slider-row").count() >= 36

            # upload; the detected face is outlined
            page.set_input_files("#file", str(src))
            box = page.locator(".face-box").first
            expect(box).to_be_visible(timeout=120_000)
            before = _rgb(_img_bytes(page))
            assert before.shape == photo.shape

            # the filter box narrows the sliders
            page.fill("#filter", "smil")
            expect(page.locator(".slider-row:not([hidden])")).to_have_count(1)
            page.fill("#filter", "")

            # Smiling to +1.5: the preview changes in the face, and not far from it
            slider = page.locator(".slider-row[data-name='Smiling'] input[type=range]")
            slider.evaluate(
                "el => { el.value = '1.5'; el.dispatchEvent(new Event('input', {bubbles: true})); }"
            )
            page.wait_for_function(
                "() => Number(document.getElementById('photo').dataset.seq) > 0",
                timeout=120_000,
            )
            page.wait_for_function("() => document.getElementById('photo').complete")
            expect(page.locator("#status")).to_contain_text("+1.5*Smiling")
            after = _rgb(_img_bytes(page))
            info = page.evaluate("() => state.photo")
            x, y, w, h = info["faces"][0]["box"]
            diff = np.abs(after - before).max(-1)
            inside = diff[y : y + h, x : x + w]
            far = np.ones_like(diff, bool)
            m = w // 2
            far[max(0, y - m) : y + h + m, max(0, x - m) : x + w + m] = False
            assert inside.mean() > 1.0 and (inside > 8).sum() > 200  # the face changed
            assert diff[far].max() <= 2  # pixels far from the face did not (JPEG noise aside)

            # before/after toggle shows the original
            page.check("#before")
            assert np.abs(_rgb(_img_bytes(page)) - before).max() == 0
            page.uncheck("#before")

            # a bad expression: the bank's did-you-mean inline; then a good one is applied
            page.fill("#expr", "Smilng+1")
            expect(page.locator("#expr-error")).to_contain_text("did you mean 'Smiling'")
            seq = int(page.locator("#photo").get_attribute("data-seq"))
            page.fill("#expr", "Male-0.5")
            expect(page.locator("#expr-error")).to_be_hidden()
            expect(page.locator("#expr-ok")).to_contain_text("-0.5*Male")
            page.wait_for_function(
                f"() => Number(document.getElementById('photo').dataset.seq) > {seq}",
                timeout=120_000,
            )
            expect(page.locator("#status")).to_contain_text("-0.5*Male")

            # download: the full-size edited photo, JPEG like the upload, EXIF kept
            with page.expect_download(timeout=120_000) as dl:
                page.click("#download")
            out = tmp_path / dl.value.suggested_filename
            dl.value.save_as(out)
            assert out.name == "portrait_edited.jpg"
            with Image.open(out) as im:
                assert im.format == "JPEG" and im.size == (photo.shape[1], photo.shape[0])
                assert im.getexif().get(MAKE) == "BrowserTestCam"
                edited = np.asarray(im.convert("RGB")).astype(int)
            assert np.abs(edited - photo).max(-1)[y : y + h, x : x + w].mean() > 1.0

            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot))
            with Image.open(shot) as im:
                assert im.size == (1280, 860)
            if SCREENSHOT:
                shutil.copyfile(shot, SCREENSHOT)
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out_text, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out_text, _ = proc.communicate()
    assert proc.returncode == 0, out_text
    assert f"at {url}" in out_text and "stopped" in out_text
