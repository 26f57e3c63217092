"""The app in a real browser, as a visitor meets it: headless Chromium driven by Playwright, at a 1280 × 900 desktop
and a 390 × 844 phone viewport. A result is on screen at load; every caption lies inside its card; nothing is wider
than the viewport; no bar is 0 px wide; moving τ changes a borderline prediction and the test accuracy shown; the
first generation shows progress before any image is made.

One app for the module (a tiny model with a stored τ curve and long-tail pictures, a tiny generator), one page
per viewport. Skips with the reason when Playwright or a Chromium binary is missing (never downloads a browser:
`playwright install` is not used; set LONGTAIL_CHROMIUM to a browser binary if it is not /usr/bin/chromium).
"""

import os
import re
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

import app
from studio_app.blocks import build_blocks
from tests.helpers_onnx import make_card, tiny_net_path, write_model
from tests.helpers_servers import gradio_launched

CHROMIUM = os.environ.get("LONGTAIL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytestmark = pytest.mark.skipif(not os.path.isfile(CHROMIUM),
                                reason=f"no Chromium binary at {CHROMIUM} (apt-get install chromium, or set LONGTAIL_CHROMIUM)")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
# The contract's τ curve, made up: overall falls away from τ = 0, the tail rises with τ.
TAU_CURVE = [{"tau": t, "overall": 70.0 - 4 * t * t, "groups": {"head": 90.0 - 10 * t, "medium": 70.0, "tail": 40.0 + 10 * t},
              "ece": 5.0, "group_ece": {"head": 3.0, "medium": 5.0, "tail": 41.0}} for t in [k / 4 for k in range(-4, 9)]]
LONG_TAIL = {"class_accuracy": [90.0, 70.0, 40.0], "confusion": [[90, 5, 5], [20, 70, 10], [50, 10, 40]],
             "calibration": {g: {"ece": 5.0, "bins": [{"confidence": 100 * (b + 0.5) / 15, "accuracy": 60.0, "count": 1}
                                                      for b in range(15)]} for g in ("head", "medium", "tail")}}

# What the page looks like, measured in it: the captions against their cards, anything past the right edge (outside
# a box that scrolls sideways by itself), and the width of every visible bar and its fill.
MEASURE = """() => {
  const visible = e => e.offsetParent !== null && e.getBoundingClientRect().width > 0;
  const scrollsInside = e => { for (let p = e.parentElement; p; p = p.parentElement) {
      if (["auto", "scroll"].includes(getComputedStyle(p).overflowX) && p.scrollWidth > p.clientWidth) return true; }
    return false; };
  const captions = [...document.querySelectorAll(".lt-caption")].filter(visible).map(c => {
    const box = c.getBoundingClientRect(), card = c.closest(".lt-card").getBoundingClientRect();
    return {text: c.innerText, inside: box.left >= card.left - 0.5 && box.right <= card.right + 0.5 &&
            box.bottom <= card.bottom + 0.5 && c.scrollWidth <= c.clientWidth + 1 && c.scrollHeight <= c.clientHeight + 1};
  });
  const past = [...document.querySelectorAll("body *")].filter(e => visible(e) &&
    e.getBoundingClientRect().right > window.innerWidth + 1 && !scrollsInside(e)).map(e => e.tagName + "." + e.className);
  const bars = [...document.querySelectorAll(".lt-bar, .lt-fill")].filter(visible).map(e => e.getBoundingClientRect().width);
  return {captions, past, bars, pageWidth: document.documentElement.scrollWidth, width: window.innerWidth};
}"""


def textured(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return str(path)


class HeldGeneration:
    """A runner that makes its images only once the test has seen the progress on the page."""

    def __init__(self):
        self.progress_seen = threading.Event()

    def __call__(self, *args):
        assert self.progress_seen.wait(120), "the page showed no progress while the generation waited"
        return app.run_generation(*args)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from conftest import write_tiny_generator

    folder = tmp_path_factory.mktemp("zoo")
    write_model(tiny_net_path(tmp_path_factory), folder / "tiny.onnx", make_card(tau_curve=TAU_CURVE, long_tail=LONG_TAIL))
    generator = write_tiny_generator(tmp_path_factory.mktemp("generator") / "tiny", ["cat", "dog", "bird"])
    examples = tmp_path_factory.mktemp("examples")
    for seed, name in enumerate(["cat", "dog", "bird"]):
        textured(examples / f"cifar10_test_000{seed}_{name}.png", seed)
    runner = HeldGeneration()
    demo = build_blocks(app.build_studio(folder, generator), examples, run_generation=runner, project_dir=app.APP_DIR)
    with gradio_launched(demo) as url:
        yield url, runner


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def open_page(browser, url, viewport):
    context = browser.new_context(viewport=VIEWPORTS[viewport])
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return context, page


def assert_readable(page, cards: int | None = None):
    page.wait_for_timeout(300)  # the last layout pass after an update
    seen = page.evaluate(MEASURE)
    if cards is not None:
        assert len(seen["captions"]) == cards, seen["captions"]
    assert all(caption["inside"] for caption in seen["captions"]), seen["captions"]
    assert seen["pageWidth"] <= seen["width"] and seen["past"] == [], seen["past"]
    assert all(width > 0 for width in seen["bars"]), seen["bars"]
    return seen


def set_tau(page, value: str):
    box = page.locator("#lt-tau input[type=number]")
    box.fill(value)
    box.press("Enter")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_classify_is_readable_and_tau_moves_a_borderline_prediction(served, browser, viewport, tmp_path):
    url, _ = served
    context, page = open_page(browser, url, viewport)
    try:
        # A result at load: the tail example (bird), with its caption, group badge, count and probability.
        page.locator(".lt-card").first.wait_for()
        [caption] = assert_readable(page, cards=1)["captions"]
        assert re.fullmatch(r"(cat|dog|bird) (head|medium|tail)\n[\d,]+ training images? · \d+%", caption["text"])
        effect = page.locator("#lt-tau-effect")
        assert "On the test set at τ = 0: 70.0% overall" in effect.inner_text()

        set_tau(page, "2")
        page.get_by_text("On the test set at τ = 2: 54.0% overall").wait_for()
        page.locator(".lt-caption", has_text="bird").first.wait_for()
        moved = assert_readable(page, cards=1)["captions"][0]["text"]
        assert moved.startswith("bird tail") and moved != caption["text"], (caption, moved)
        assert "tail 60.0%" in effect.inner_text() and "As trained (τ = 0): 70.0% overall" in effect.inner_text()

        set_tau(page, "0")
        files = [textured(tmp_path / f"photo {i}.png", 10 + i) for i in range(8)]
        page.locator("input[type=file]").first.set_input_files(files)
        page.wait_for_function("document.querySelectorAll('.lt-card').length >= 9")
        assert_readable(page, cards=9)  # the example and the 8 uploads
    finally:
        context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_the_model_card_fits(served, browser, viewport):
    url, _ = served
    context, page = open_page(browser, url, viewport)
    try:
        page.get_by_role("tab", name="Model card").click()
        page.locator("#lt-pictures .lt-chart").first.wait_for()
        assert page.locator("#lt-pictures .lt-chart").count() == 3
        assert_readable(page)
        assert page.locator("#lt-histogram .lt-bar").count() == 3
    finally:
        context.close()


def test_generation_shows_progress_before_the_images_and_fits_a_phone(served, browser):
    url, runner = served
    context, page = open_page(browser, url, "phone")
    try:
        page.get_by_role("tab", name="Generate").click()
        page.get_by_label("Class (tail classes first)").click()
        page.get_by_role("option", name=re.compile(r"^bird · tail · 7 training images")).click()
        page.get_by_role("button", name="Generate", exact=True).click()
        # The runner holds the images back until this text is on the page: progress shows from the start.
        page.get_by_text(re.compile("Loading the generator|Starting")).first.wait_for()
        runner.progress_seen.set()
        page.locator("#lt-generated .lt-card").first.wait_for()
        seen = assert_readable(page, cards=4)
        assert all(re.fullmatch(r"recognised as (cat|dog|bird) · \d\.\d\d( \(bird \d\.\d\d\))?", c["text"])
                   for c in seen["captions"])
        assert page.get_by_text(re.compile(r"\d of 4 recognised as bird")).first.is_visible()
        assert page.get_by_text(re.compile(r"4 images asked for, seed 0, \d+ steps")).is_visible()
    finally:
        context.close()
