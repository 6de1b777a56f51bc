"""The attention view: the maps (causal, rows summing to one, the model's own attention; the
reference tier checks them against transformers), the page it writes, and the page in a real
headless browser (Debian's chromium, driven by selenium): it renders, switching the head
changes the drawing, hovering a token shows only its lines, and nothing is logged as an error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import browser, chromium_leftovers, run_in_process

TEXT = "The quick brown fox jumps over the lazy dog. Быстрая рыжая лиса."


@pytest.fixture(scope="module")
def page(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("attention") / "view.html"
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.attention",
            "--prompt",
            TEXT,
            "--model_name",
            tiny_model_dir,
            "--out",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stderr
    return out


def test_maps_are_causal_distributions(tiny_model_dir):
    import gpt2_tf2
    from gpt2_tf2.core.attention_maps import attention_maps

    lm = gpt2_tf2.load(tiny_model_dir)
    tokens = lm.encoder.encode(TEXT)
    maps = attention_maps(lm.model, tokens)
    n = len(tokens)
    assert maps.shape == (lm.hparams.n_layer, lm.hparams.n_head, n, n)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(np.ones((n, n)), 1)[None, None] * maps == 0)
    assert len({maps[0, h].round(4).tobytes() for h in range(lm.hparams.n_head)}) > 1


def test_page_is_self_contained(page):
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<script src" not in html
    assert 'name="generator" content="gpt2_tf2.attention"' in html


def test_writes_only_its_own_files(page, tiny_model_dir, tmp_path):
    args = ["-m", "gpt2_tf2.attention", "--prompt", "Hello", "--model_name", tiny_model_dir]
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    done = run_in_process([*args, "--out", str(mine)])
    assert done.returncode == 2 and "not written by gpt2_tf2.attention" in done.stderr
    assert mine.read_text() == "my notes"
    copy = tmp_path / "again.html"
    shutil.copy(page, copy)
    done = run_in_process([*args, "--out", str(copy)])  # a page written here before: replaced
    assert done.returncode == 0, done.stderr
    assert "Hello" in copy.read_text(encoding="utf-8")
    bad = run_in_process([*args, "--out", str(tmp_path / "x.html"), "--layer", "7"])
    assert bad.returncode == 2 and "--layer must be in 0..1" in bad.stderr
    assert (
        run_in_process(["-m", "gpt2_tf2.attention", "--model_name", tiny_model_dir]).returncode == 2
    )


def test_heat_map_png(tiny_model_dir, tmp_path):
    out = tmp_path / "heat.png"
    done = run_in_process(
        [
            "-m",
            "gpt2_tf2.attention",
            "--prompt",
            TEXT,
            "--model_name",
            tiny_model_dir,
            "--out",
            str(tmp_path / "v.html"),
            "--png",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"gpt2_tf2.attention" in out.read_bytes()[:4096]


@pytest.mark.e2e
def test_page_in_a_headless_browser(page, chromium_tmp):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    before = chromium_leftovers()
    driver = browser(chromium_tmp)
    try:
        driver.get(page.as_uri())
        tokens = driver.execute_script(
            "return JSON.parse(document.getElementById('data').textContent).tokens.length"
        )
        assert tokens > 10
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg text")) == 2 * tokens

        def drawing():
            return driver.execute_script(
                "return Array.from(document.querySelectorAll('svg line'))"
                ".map(l => l.dataset.from + '>' + l.dataset.to + ':' + l.dataset.weight)"
            )

        first = drawing()
        assert len(first) >= tokens  # every token attends somewhere
        Select(driver.find_element(By.ID, "head")).select_by_index(1)
        second = drawing()
        assert second and second != first
        Select(driver.find_element(By.ID, "layer")).select_by_index(0)
        assert drawing() != second
        Select(driver.find_element(By.ID, "head")).select_by_value("mean")
        assert drawing()
        # Hovering the fifth token's query leaves only its lines.
        driver.execute_script(
            "document.querySelector('svg text[data-side=query][data-index=\"4\"]')"
            ".dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))"
        )
        hovered = drawing()
        assert hovered and all(line.startswith("4>") for line in hovered)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()
    assert chromium_leftovers() == before  # nothing left in the machine's temporary directory
