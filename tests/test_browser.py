"""The app in a real browser: headless Chromium driven by Playwright uploads an image, sees the head /
medium / tail indicator, then generates a sample and sees what the model recognises in it.

Skips with the reason when Playwright or a Chromium binary is missing (never downloads a browser:
`playwright install` is not used; set LONGTAIL_CHROMIUM to a browser binary if it is not /usr/bin/chromium).
"""

import os
import re
import shutil

import pytest
from PIL import Image

import app
from tests.helpers_onnx import make_card, tiny_net_path, write_model
from tests.helpers_servers import gradio_launched

CHROMIUM = os.environ.get("LONGTAIL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytestmark = pytest.mark.skipif(not os.path.isfile(CHROMIUM),
                                reason=f"no Chromium binary at {CHROMIUM} (apt-get install chromium, or set LONGTAIL_CHROMIUM)")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from conftest import write_tiny_generator

    folder = tmp_path_factory.mktemp("zoo")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card())
    generator = write_tiny_generator(tmp_path_factory.mktemp("generator") / "tiny", ["cat", "dog", "bird"])
    demo = app.build_app(folder, examples_dir=tmp_path_factory.mktemp("no_examples"), generator=generator)
    with gradio_launched(demo) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url, tmp_path_factory):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(app_url)
        yield page
        context.close()
        browser.close()


def test_upload_shows_the_group_indicator(page, tmp_path):
    image = tmp_path / "red square.png"
    Image.new("RGB", (48, 48), (210, 40, 40)).save(image)
    page.get_by_role("tab", name="Classify").click()
    page.locator("input[type=file]").first.set_input_files(str(image))
    caption = page.locator(".caption-label, figcaption").filter(has_text=re.compile(r"(head|medium|tail) class"))
    caption.first.wait_for()
    assert re.search(r"^(cat|dog|bird) · (head|medium|tail) class · \d+ training images? · \d\.\d\d( · ⚠ .+)?$",
                     caption.first.inner_text().strip())
    bars = page.locator(".lt-legend").first
    assert all(word in bars.inner_text() for word in ("head", "medium", "tail"))


def test_generate_one_sample(page):
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Class (tail classes first)").click()
    page.get_by_role("option", name=re.compile(r"^bird · tail · 7 training images")).click()
    count = page.get_by_label("number input for Number of images")
    count.fill("1")
    count.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    caption = page.locator(".caption-label, figcaption").filter(has_text="recognised as")
    caption.first.wait_for()
    assert re.fullmatch(r"recognised as (cat|dog|bird) · \d\.\d\d( \(bird \d\.\d\d\))?", caption.first.inner_text().strip())
    assert caption.count() == 1
    assert page.get_by_text(re.compile(r"1 image, seed 0, \d+ steps")).is_visible()
