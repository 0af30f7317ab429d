"""The docs' screenshots, from the real product: `make screenshots`.

Starts the service as `make run` does (`bgremove serve configs/local.yaml`, the models it
serves), drives the studio in headless Chromium (Debian's chromium + chromium-driver, through
Selenium) on a real photo (scikit-image's astronaut) and a clip made from it (a slow camera
move over the photo, the whole person in view), writes `docs/screenshots/*.png` and
`docs/screenshots/manifest.json` (which models each screenshot shows; `tests/test_docs.py`
refuses test models there), then stops the service.

    .venv/bin/python bench/screenshots.py [--url http://localhost:8000]   # --url: use a running one
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from media import photo  # noqa: E402

OUT = REPO / "docs" / "screenshots"


def healthy(url: str) -> bool:
    try:
        r = httpx.get(f"{url}/health", timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.json().get("status") in ("healthy", "degraded")


def start_service(url: str) -> subprocess.Popen:
    env = {**os.environ, "BGR_DATA_DIR": tempfile.mkdtemp(prefix="bgr-shots-"),
           "BGR_AUTH_ENABLED": "false"}  # as `make run`
    service = subprocess.Popen([str(Path(sys.executable).with_name("bgremove")), "serve",
                                "configs/local.yaml"], cwd=REPO, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while not healthy(url):
        if service.poll() is not None or time.monotonic() > deadline:
            sys.exit("the service did not become healthy")
        time.sleep(2)
    return service


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1050", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def wait(driver, condition, timeout=300):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.3).until(condition)


def person_clip(path: Path, frames: int = 20) -> Path:
    """A 640x360 H.264 clip: a slow tilt down the astronaut photo, her face always in view."""
    import av
    import numpy as np

    rgb = np.asarray(Image.open(photo("astronaut.png")).convert("RGB").resize((640, 640)))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i in range(frames):
            window = np.ascontiguousarray(rgb[2 * i: 2 * i + 360])
            for packet in stream.encode(av.VideoFrame.from_ndarray(window, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def capture(url: str, work: Path) -> dict[str, dict]:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shown: dict[str, dict] = {}
    picture = work / "astronaut.png"
    Image.open(photo("astronaut.png")).convert("RGB").save(picture)
    driver = browser()
    try:
        driver.get(f"{url}/studio")
        # The shotgun: every served model on the photo, the compare view on the first result.
        driver.find_element(By.ID, "image-file").send_keys(str(picture))
        cards = wait(driver, lambda d: len(c := d.find_elements(
            By.CSS_SELECTOR, ".card:not(.failed)")) >= 2 and c)
        models = [c.get_attribute("data-model") for c in cards]
        # the pro model beside the light one, where both are served: the difference people see
        a = "isnet-imgly-medium" if "isnet-imgly-medium" in models else models[0]
        b = "u2netp" if "u2netp" in models and a != "u2netp" else models[1]
        cards[models.index(a)].find_element(By.TAG_NAME, "img").click()
        wait(driver, lambda d: d.find_element(By.ID, "compare").is_displayed())
        driver.find_element(By.CSS_SELECTOR, "#backgrounds button[data-bg=black]").click()
        Select(driver.find_element(By.ID, "compare-b")).select_by_value(b)
        time.sleep(1)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(OUT / "studio-shotgun.png"))
        shown["studio-shotgun.png"] = {"photo": "astronaut", "models": [a, b]}
        # The same two at 2x on the edge of the hair and the flag.
        driver.find_element(By.CSS_SELECTOR, "#zooms button[data-zoom='2']").click()
        time.sleep(1)
        driver.execute_script("const p = document.getElementById('pane-a');"
                              "p.scrollLeft = 0; p.scrollTop = 80;")
        driver.execute_script("document.getElementById('compare').scrollIntoView()")
        driver.save_screenshot(str(OUT / "studio-compare.png"))
        shown["studio-compare.png"] = {"photo": "astronaut", "models": [a, b]}
        ActionChains(driver).send_keys("\ue00c").perform()  # Esc

        # An effect with the default model.
        driver.find_element(By.CSS_SELECTOR, "nav button[data-tab=effects]").click()
        driver.find_element(By.ID, "effect-file").send_keys(str(picture))
        Select(driver.find_element(By.ID, "effect")).select_by_value("color")
        driver.find_element(By.ID, "apply-effect").click()
        wait(driver, lambda d: "done" in d.find_element(By.ID, "notice").text)
        model = driver.execute_script("return window.lastEffectModel || null")
        driver.save_screenshot(str(OUT / "studio-effect.png"))
        shown["studio-effect.png"] = {"photo": "astronaut", "models": [model] if model else []}

        # A real clip, processed with its progress, then played.
        driver.find_element(By.CSS_SELECTOR, "nav button[data-tab=video]").click()
        driver.find_element(By.ID, "video-file").send_keys(str(person_clip(work / "tilt.mp4")))
        driver.find_element(By.ID, "video-color").send_keys("30,144,255")
        driver.find_element(By.ID, "submit-video").click()
        wait(driver, lambda d: d.find_element(By.ID, "video-result").is_displayed(), 900)
        driver.execute_script("const v = document.getElementById('video-result');"
                              "v.currentTime = 1.0; v.pause();")
        time.sleep(1.5)
        model = driver.execute_script("return window.lastVideoModel || null")
        driver.save_screenshot(str(OUT / "studio-video.png"))
        shown["studio-video.png"] = {"clip": "astronaut tilt",
                                     "models": [model] if model else []}
    finally:
        driver.quit()
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service (default: start configs/local.yaml)")
    args = parser.parse_args()
    url = args.url or "http://localhost:8000"
    service = None if args.url else start_service(url)
    try:
        served = [m["id"] for m in httpx.get(f"{url}/models", timeout=10).json()
                  if m["available"]]
        OUT.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            shown = capture(url, Path(work))
    finally:
        if service is not None:
            os.killpg(service.pid, signal.SIGINT)
            service.wait(60)
    manifest = {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "config": "configs/local.yaml", "served": served, "screenshots": shown}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
