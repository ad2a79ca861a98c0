"""The app in a real headless browser (Debian's chromium through Playwright for Python): upload an
image, run an analysis, check that the answers and the plots appear, move the step slider, and
see a bad upload answered with a readable message. Screenshots go to ``test-artifacts/``."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.backbones import EMBEDDED_DIR
from app_helpers import free_port, start_server, stop_server, tiny_model_dir

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium is not installed")
    pytest.importorskip("playwright.sync_api")
    d = tmp_path_factory.mktemp("browser-app")
    # what a visitor sees: the shipped model (a random tiny one where it is missing)
    model = str(EMBEDDED_DIR) if (EMBEDDED_DIR / "config.json").exists() else tiny_model_dir(d / "model")
    port = free_port()
    env = {"ADAPT_MODEL": model, "ADAPT_CACHE": str(d / "cache"), "ADAPT_APP_SCRATCH": str(d / "scratch"),
           "ADAPT_ADMIN_TOKEN": ""}
    proc = start_server(env, port, log_path=d / "server.log")
    yield f"http://127.0.0.1:{port}/"
    stop_server(proc)


@pytest.fixture(scope="module")
def page(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    args=ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1100})
        pg.set_default_timeout(60_000)
        pg.goto(url)
        pg.wait_for_selector("#adapt-run")
        yield pg
        browser.close()


def test_upload_analyse_and_see_answers_and_plots(page, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    img = tmp_path / "upload.png"
    Image.fromarray((np.random.RandomState(3).rand(60, 80, 3) * 255).astype("uint8")).save(img)
    page.locator("#adapt-image input[type=file]").set_input_files(str(img))
    page.wait_for_selector("#adapt-image img")
    page.fill("#adapt-question textarea", "describe the image in detail.")
    page.click("#adapt-run")
    page.wait_for_selector("#adapt-amc .js-plotly-plot")
    for sel in ("#adapt-signals .js-plotly-plot", "#adapt-criteria .js-plotly-plot", "#adapt-layers img",
                "#adapt-maps img", "#adapt-align table"):
        page.wait_for_selector(sel)
    summary = page.inner_text("#adapt-summary")
    assert "Backbone" in summary and "layers" in summary
    for run in ("unsteered", "steered"):
        text = page.inner_text(f"#adapt-answer-{run}")
        assert len(text.strip()) > 0
    # the AMC chart has the τ line and the mean trace
    assert page.locator("#adapt-amc .scatterlayer .trace").count() >= 2
    # move the step slider: both step maps follow
    box = page.locator("#adapt-step input[type=number]")
    box.fill("2")
    box.press("Enter")
    page.wait_for_function("() => [...document.querySelectorAll('label, span')].some(e => /step 2 ·/.test(e.textContent))")
    _load_lazy_images(page)
    page.screenshot(path=str(ARTIFACTS / "app-inspect.png"), full_page=True)


def test_corrupt_upload_gives_a_readable_message(page, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    page.locator("#adapt-image input[type=file]").set_input_files(str(bad))
    page.wait_for_timeout(500)
    page.click("#adapt-run")
    toast = page.get_by_text("not a readable image").first
    toast.wait_for()
    page.screenshot(path=str(ARTIFACTS / "app-error.png"))
    assert "Traceback" not in page.content()
    page.reload()  # a fresh page for the next test, without the toast
    page.wait_for_selector("#adapt-run")


def test_random_trap_scene_knows_its_ground_truth(page):
    page.click("#adapt-trap")
    page.get_by_text("In the image (ground truth):").first.wait_for()
    summary = page.inner_text("#adapt-summary")
    assert "Greedy hallucinates" in summary and "ADAPT-TF hallucinates" in summary
    _load_lazy_images(page)
    page.screenshot(path=str(ARTIFACTS / "app-trap-scene.png"), full_page=True)


def _load_lazy_images(page):
    """Galleries load their images lazily: scroll them into view before a full-page screenshot."""
    for sel in ("#adapt-maps", "#adapt-layers"):
        page.locator(sel).scroll_into_view_if_needed()
    page.wait_for_function("() => [...document.querySelectorAll('#adapt-layers img')].every(i => i.complete)")
    page.wait_for_timeout(300)


def test_one_click_example(page):
    from app.examples import load_presets

    presets = load_presets()
    if not presets:
        pytest.skip("no example scenes shipped yet")
    page.locator("#adapt-examples tbody tr td").first.click()
    truth = ", ".join(dict.fromkeys(presets[0]["objects"]))
    page.wait_for_function("t => document.querySelector('#adapt-summary').innerText.includes(t)", arg=truth)
    assert "Greedy hallucinates" in page.inner_text("#adapt-summary")
    _load_lazy_images(page)
    page.screenshot(path=str(ARTIFACTS / "app-example.png"), full_page=True)
