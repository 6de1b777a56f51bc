"""The playground page at / in Debian's chromium (headless, under selenium, as the attention
page's test): it loads with no console error, streams a completion whose tokens are coloured by
probability with the alternatives on hover, shows beam search's best beam, and Stop cancels
the request on the server."""

from __future__ import annotations

import threading
import time

import httpx2 as httpx
import pytest

from conftest import browser, serving, wait_ready


def wait_for(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.e2e
def test_the_playground_streams_colours_and_stops(tiny_lm, chromium_tmp):
    from selenium.webdriver.common.by import By

    with serving(lambda: tiny_lm, slots=1, max_queue=32) as (url, app):
        wait_ready(url)
        driver = browser(chromium_tmp)
        try:
            driver.get(url + "/")
            wait_for(lambda: "tiny" in driver.find_element(By.ID, "model").text)
            field = driver.find_element(By.ID, "max_tokens")
            field.clear()
            field.send_keys("12")
            driver.find_element(By.ID, "generate").click()
            status = wait_for(
                lambda: (
                    driver.find_element(By.ID, "status").text.startswith("done")
                    and driver.find_element(By.ID, "status").text
                )
            )
            assert status == "done: 12 tokens (length)"
            spans = driver.find_elements(By.CSS_SELECTOR, "#output .token")
            assert len(spans) == 12
            assert all("background" in s.get_attribute("style") for s in spans)
            tip = spans[0].get_attribute("data-tip").splitlines()
            assert tip[0].startswith('"') and "p = " in tip[0] and len(tip) == 6  # + 5 alternatives

            # Beam search (vLLM's extension): the best beam at the end, the library's own.
            beams = driver.find_element(By.ID, "beams")
            beams.clear()
            beams.send_keys("3")
            driver.find_element(By.ID, "generate").click()
            status = wait_for(lambda: "beams" in driver.find_element(By.ID, "status").text)
            prompt = driver.find_element(By.ID, "prompt").get_attribute("value")
            (best,) = tiny_lm.beam_search(tiny_lm.encode(prompt), num_beams=3, length=12,
                                          num_return_sequences=1)  # fmt: skip
            shown = driver.execute_script("return document.getElementById('output').textContent")
            assert shown == prompt + tiny_lm.encoder.decode(best)
            finish = "length" if len(best) == 12 else "stop"
            status = driver.find_element(By.ID, "status").text
            assert status == f"done: {len(best)} tokens ({finish}, best of 3 beams)"
            beams.clear()
            beams.send_keys("0")

            # The one slot busy with 16 x 60 tokens: the page's request waits in the queue, and
            # Stop cancels it there; it never runs.
            state = app.state.server
            before = state.metrics.completion_tokens
            busy = threading.Thread(
                target=httpx.post,
                args=(url + "/v1/completions",),
                kwargs={
                    "json": {"prompt": "Hi", "max_tokens": 60, "min_tokens": 60, "n": 16},
                    "timeout": 120,
                },
            )
            busy.start()
            wait_for(lambda: state.scheduler.load()[1] == 1)
            driver.find_element(By.ID, "generate").click()
            wait_for(lambda: driver.find_element(By.ID, "status").text == "generating…")
            driver.find_element(By.ID, "stop").click()
            wait_for(lambda: driver.find_element(By.ID, "status").text.startswith("stopped"))
            busy.join(120)
            wait_for(lambda: state.scheduler.load() == (0, 0))
            time.sleep(0.5)  # a sequence the Stop missed would have started by now
            assert state.scheduler.load() == (0, 0)
            assert state.metrics.completion_tokens - before == 16 * 60  # the page's never ran
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            driver.quit()
