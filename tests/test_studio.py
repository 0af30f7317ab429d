"""The web studio, end to end in headless Chromium (Debian's chromium + chromium-driver, driven
by Selenium) against the running app: the shotgun flow (pick, log, the win rate it makes), an
effect, the video flow with its progress and player, and the API's errors shown to people.

Screenshots of these runs (the tiny test models) go to a temporary folder only; the docs'
screenshots come from the real service (`make screenshots`, bench/screenshots.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import media

pytestmark = [pytest.mark.serve, pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver)")]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shots")


@pytest.fixture
def studio(browser, base_url, api_key):
    browser.get(f"{base_url}/studio")
    browser.execute_script("localStorage.setItem('bgremove-api-key', arguments[0])", api_key)
    browser.get(f"{base_url}/studio")
    return browser


def wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.open(media("astronaut")).convert("RGB").resize((384, 384)).save(path)
    return path


def test_shotgun_pick_and_log(studio, tmp_path, shots, base_url, api_key):
    from selenium.webdriver.common.by import By
    studio.find_element(By.ID, "image-file").send_keys(str(photo(tmp_path)))
    cards = wait(studio, lambda d: len(c := d.find_elements(
        By.CSS_SELECTOR, ".card:not(.failed) img")) >= 3 and c)
    assert "ms" in studio.find_element(By.CSS_SELECTOR, ".card .meta").text
    cards[0].click()
    chosen = studio.find_element(By.CSS_SELECTOR, ".card.selected").get_attribute("data-model")
    studio.find_element(By.ID, "category").send_keys("studio-e2e")
    studio.find_element(By.ID, "log-selection").click()
    notice = wait(studio, lambda d: (n := d.find_element(By.ID, "notice")).is_displayed() and n)
    assert notice.text.startswith("Logged:")
    studio.save_screenshot(str(shots / "studio-shotgun.png"))
    stats = httpx.get(f"{base_url}/selections/stats", params={"category": "studio-e2e"},
                      headers={"X-Api-Key": api_key}).json()["rows"]
    assert any(r["model_id"] == chosen and r["wins"] >= 1 for r in stats)

    studio.find_element(By.CSS_SELECTOR, "nav button[data-tab=wins]").click()
    wait(studio, lambda d: "studio-e2e" in d.find_element(By.ID, "wins").text)


def test_compare_view_backgrounds_zoom_keys_and_pick(studio, tmp_path, base_url, api_key):
    """A result opened large: on black, at 2x, the next model by key, beside another one, the
    original photo by key, and the pick logged from there with Enter."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    studio.find_element(By.ID, "image-file").send_keys(str(photo(tmp_path)))
    cards = wait(studio, lambda d: len(c := d.find_elements(
        By.CSS_SELECTOR, ".card:not(.failed)")) >= 3 and c)
    models = [c.get_attribute("data-model") for c in cards]
    cards[0].find_element(By.TAG_NAME, "img").click()
    compare = wait(studio, lambda d: (c := d.find_element(By.ID, "compare")).is_displayed() and c)
    big = studio.find_element(By.ID, "compare-a")
    assert big.get_attribute("alt") == models[0]
    assert big.get_attribute("src").startswith("data:image/")

    studio.find_element(By.CSS_SELECTOR, "#backgrounds button[data-bg=black]").click()
    assert "bg-black" in studio.find_element(By.ID, "pane-a").get_attribute("class")
    studio.find_element(By.CSS_SELECTOR, "#zooms button[data-zoom='2']").click()
    wait(studio, lambda d: d.execute_script(
        "const i = document.getElementById('compare-a');"
        "return i.naturalWidth > 0 && i.getBoundingClientRect().width === 2 * i.naturalWidth;"))

    keys = ActionChains(studio)
    keys.send_keys("2").perform()  # the second model, same background and zoom
    assert studio.find_element(By.ID, "compare-a").get_attribute("alt") == models[1]
    assert "bg-black" in studio.find_element(By.ID, "pane-a").get_attribute("class")
    Select(studio.find_element(By.ID, "compare-b")).select_by_value(models[2])
    assert studio.find_element(By.ID, "pane-b").is_displayed()
    assert studio.find_element(By.ID, "compare-b-img").get_attribute("alt") == models[2]
    keys.send_keys("o").perform()
    assert studio.find_element(By.ID, "compare-a").get_attribute("alt") == "original"
    keys.send_keys("o").perform()
    assert studio.find_element(By.ID, "compare-a").get_attribute("alt") == models[1]

    keys.send_keys("\n").perform()  # Enter: use the one shown
    notice = wait(studio, lambda d: (n := d.find_element(By.ID, "notice")).is_displayed() and n)
    assert notice.text.startswith("Logged:")
    assert compare.is_displayed()
    stats = httpx.get(f"{base_url}/selections/stats", headers={"X-Api-Key": api_key}).json()
    assert any(r["model_id"] == models[1] and r["wins"] >= 1 for r in stats["rows"])


def test_effect(studio, tmp_path, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    studio.find_element(By.CSS_SELECTOR, "nav button[data-tab=effects]").click()
    studio.find_element(By.ID, "effect-file").send_keys(str(photo(tmp_path)))
    Select(studio.find_element(By.ID, "effect")).select_by_value("blur")
    studio.find_element(By.ID, "apply-effect").click()
    wait(studio, lambda d: (d.find_element(By.ID, "effect-result").get_attribute("src")
                            or "").startswith("blob:"))
    assert "blur: done" in studio.find_element(By.ID, "notice").text
    studio.save_screenshot(str(shots / "studio-effect.png"))

    # Shift+click on the result: a "remove" click, sent as background_points; the cut-out is
    # redone with it (or, without the prompt model, the API's reason is shown).
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    result = studio.find_element(By.ID, "effect-result")
    first = result.get_attribute("src")
    (ActionChains(studio).key_down(Keys.SHIFT).move_to_element(result).click()
     .key_up(Keys.SHIFT).perform())
    assert studio.find_element(By.ID, "clicks").text == "0 keep, 1 remove"
    wait(studio, lambda d: d.find_element(By.ID, "effect-result").get_attribute("src") != first
         or d.find_element(By.ID, "error").is_displayed())
    if studio.find_element(By.ID, "error").is_displayed():
        assert "mobilesam" in studio.find_element(By.ID, "error").text
    else:
        assert "blur: done" in studio.find_element(By.ID, "notice").text
    studio.find_element(By.ID, "clear-clicks").click()
    assert studio.find_element(By.ID, "clicks").text == ""

    # output options: the mask alone (a grey image where the effect was in colour)
    grey = ("const i = document.getElementById('effect-result');"
            "if (!i.naturalWidth) return null;"
            "const c = document.createElement('canvas'); c.width = i.naturalWidth;"
            "c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0);"
            "const d = g.getImageData(0, 0, c.width, c.height).data;"
            "for (let k = 0; k < d.length; k += 4) if (d[k] !== d[k+1] || d[k] !== d[k+2])"
            "  return false; return true;")
    wait(studio, lambda d: d.execute_script(grey) is False)  # the blurred photo: in colour
    Select(studio.find_element(By.ID, "output")).select_by_value("mask")
    studio.find_element(By.ID, "apply-effect").click()
    wait(studio, lambda d: d.execute_script(grey) is True)


def test_video_progress_and_player(studio, tmp_path, shots):
    from selenium.webdriver.common.by import By
    from test_video_api import make_clip
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_clip(2.0, size=(160, 96)))
    studio.find_element(By.CSS_SELECTOR, "nav button[data-tab=video]").click()
    studio.find_element(By.ID, "video-file").send_keys(str(clip))
    studio.find_element(By.ID, "video-color").send_keys("0,128,255")
    studio.find_element(By.ID, "submit-video").click()
    player = wait(studio, lambda d: (v := d.find_element(By.ID, "video-result")).is_displayed()
                  and v, timeout=120)
    assert player.get_attribute("src").startswith("blob:")
    assert studio.find_element(By.ID, "video-progress").get_attribute("value") == "100"
    studio.save_screenshot(str(shots / "studio-video.png"))


def test_errors_are_shown_in_words(studio, browser, tmp_path, base_url):
    from selenium.webdriver.common.by import By
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a picture")
    studio.find_element(By.ID, "image-file").send_keys(str(junk))
    error = wait(studio, lambda d: (e := d.find_element(By.ID, "error")).is_displayed() and e)
    assert "image" in error.text.lower() and "400" not in error.text
    # without a key: the service's own 401 sentence
    browser.execute_script("localStorage.removeItem('bgremove-api-key')")
    browser.get(f"{base_url}/studio")
    browser.find_element(By.ID, "image-file").send_keys(str(photo(tmp_path)))
    error = wait(browser, lambda d: (e := d.find_element(By.ID, "error")).is_displayed() and e)
    assert error.text == "Missing API key: send it in the X-Api-Key header."
