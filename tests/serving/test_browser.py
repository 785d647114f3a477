"""The chat page in headless Chromium (selenium + the system chromedriver): it lists the models,
streams an answer into the page as text, and never renders model or user text as HTML."""

from __future__ import annotations

import os
import re
import shutil
from importlib import resources

import httpx
import pytest
from serving_support import live_server, load_engine, make_runs

MESSAGE = 'Sort <b>these</b> <img src=x onerror="document.title=1"> numbers: 5, 3, 9'
MAX_TOKENS = 40


def _browser_paths() -> tuple[str, str]:
    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    if chromium is None or driver is None:
        missing = " and ".join(
            name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
        )
        pytest.skip(
            f"headless browser test needs {missing}: install the Debian packages chromium and "
            "chromium-driver (`make install` tries apt-get)"
        )
    return chromium, driver


@pytest.fixture(scope="module")
def url(tiny_model_dir, tmp_path_factory):
    engine = load_engine(make_runs(tiny_model_dir, tmp_path_factory.mktemp("browser-runs")))
    with live_server(engine) as base_url:
        yield base_url


@pytest.fixture
def browser():
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1100,800")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_streams_an_answer_as_text(browser, url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    expected = httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "local",
            "messages": [{"role": "user", "content": MESSAGE}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        },
        timeout=60,
    ).json()
    answer, tokens = expected["choices"][0]["message"]["content"], expected["usage"]
    assert answer and tokens["completion_tokens"] > 1

    browser.get(url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3)
    picker = Select(browser.find_element(By.ID, "model"))
    assert [o.get_attribute("value") for o in picker.options] == ["base", "global", "local"]
    assert picker.first_selected_option.get_attribute("value") == "global"
    picker.select_by_value("local")
    for field, value in (("temperature", "0"), ("max-tokens", str(MAX_TOKENS))):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    # Record the answer's length at every DOM change, to see it grow while streaming.
    browser.execute_script(
        "window.lengths = [];"
        "new MutationObserver(() => { const a = document.querySelector('.msg.assistant .text');"
        " if (a) window.lengths.push(a.textContent.length); })"
        ".observe(document.getElementById('log'), {childList: true, subtree: true,"
        " characterData: true});"
    )
    browser.find_element(By.ID, "prompt").send_keys(MESSAGE)
    browser.find_element(By.ID, "send").click()

    item = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant[data-state=done]"))
    text = item.find_element(By.CSS_SELECTOR, ".text").get_property("textContent")
    assert text == answer
    assert int(item.get_attribute("data-chunks")) == tokens["completion_tokens"]
    lengths = [n for n in browser.execute_script("return window.lengths") if n]
    assert len(set(lengths)) > 1 and lengths[-1] == len(answer)  # it grew chunk by chunk
    status = browser.find_element(By.ID, "status").text
    prompt_tokens, completion_tokens = tokens["prompt_tokens"], tokens["completion_tokens"]
    assert status == f"{prompt_tokens} prompt + {completion_tokens} completion tokens"

    user = browser.find_element(By.CSS_SELECTOR, ".msg.user .text")
    assert user.get_property("textContent") == MESSAGE  # shown as text, not parsed
    assert browser.find_elements(By.CSS_SELECTOR, "#log img, #log b") == []
    assert browser.title == "fedit chat"  # the onerror handler never ran

    screenshot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 5000


def test_page_never_parses_text_as_html(url):
    script = (resources.files("fedit.serving") / "static" / "chat.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
    assert "textContent" in script
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert '<script src="/chat.js"></script>' in response.text
    script_type = httpx.get(f"{url}/chat.js", timeout=10).headers["content-type"]
    assert script_type.startswith("text/javascript")
