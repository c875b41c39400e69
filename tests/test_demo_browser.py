"""The demo page in a real headless Chromium: upload, paint, inpaint, download.

Needs Debian's `chromium` package (/usr/bin/chromium, or LAMA_JAX_CHROMIUM)
and the `playwright` Python package, which drives that browser; `playwright
install` (a browser download) is never needed.
"""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from demo_support import SAMPLES, serving, write_tiny_checkpoint
from lama_jax import demo

CHROMIUM = pathlib.Path(os.environ.get("LAMA_JAX_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (or set LAMA_JAX_CHROMIUM)")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed (pip install playwright)")

PHOTO = SAMPLES / "chelsea.jpg"  # 770x512


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = demo.load_app(str(write_tiny_checkpoint(tmp_path_factory.mktemp("browser") / "tiny")))
    with serving(app) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        # CI containers run as root, where Chromium's sandbox refuses to start, and often have a tiny /dev/shm.
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def upload(page, path):
    page.set_input_files("#upload", str(path))
    page.wait_for_selector("#stack:not([hidden])")


def paint_stroke(page, start, end):
    """Drags the brush between two points given as fractions of the displayed photo; returns the box."""
    box = page.locator("#mask").bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=12)
    page.mouse.up()
    return box


def download(page, selector) -> np.ndarray:
    with page.expect_download() as info:
        page.click(selector)
    return np.asarray(Image.open(info.value.path()))


def test_paint_a_stroke_inpaint_and_download(page):
    upload(page, PHOTO)
    assert page.is_disabled("#inpaint")  # nothing painted yet
    box = paint_stroke(page, (0.3, 0.5), (0.6, 0.5))
    page.click("#inpaint")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    assert page.get_attribute("#result", "src").startswith("data:image/png;base64,")
    assert page.inner_text("#status").startswith("Inpainted 770x512 px in ")

    result = download(page, "#download-result")
    mask = download(page, "#download-mask")
    original = np.asarray(Image.open(PHOTO).convert("RGB"))
    assert result.shape == original.shape and mask.shape[:2] == original.shape[:2]
    hole = (mask[..., 0] if mask.ndim == 3 else mask) > 127

    # The hole is the stroke: a band around the dragged line, the brush's width across (40 screen px).
    height, width = hole.shape
    radius = 40 / 2 * width / box["width"]
    rows, cols = np.nonzero(hole)
    assert hole[height // 2, int(0.45 * width)]
    assert abs(rows - 0.5 * height).max() <= radius + 2
    assert cols.min() >= 0.3 * width - radius - 2 and cols.max() <= 0.6 * width + radius + 2
    assert hole.sum() > 0.25 * width * 2 * radius  # the stroke's length times its width, roughly

    np.testing.assert_array_equal(result[~hole], original[~hole])
    assert np.any(result[hole] != original[hole], axis=-1).mean() > 0.5

    page.click("#continue")  # the result becomes the next input, with a fresh mask
    sync_api.expect(page.locator("#status")).to_contain_text("Loaded chelsea_inpainted.png")
    assert page.is_disabled("#inpaint") and page.is_hidden("#result")


def test_undo_clear_and_erase_change_what_can_be_inpainted(page):
    upload(page, PHOTO)
    paint_stroke(page, (0.2, 0.2), (0.4, 0.3))
    assert page.is_enabled("#inpaint")
    page.click("#undo")
    assert page.is_disabled("#inpaint") and page.is_disabled("#undo")

    paint_stroke(page, (0.2, 0.2), (0.4, 0.3))
    page.click("#clear")
    assert page.is_disabled("#inpaint")
    page.keyboard.press("Control+z")  # clearing is undoable
    assert page.is_enabled("#inpaint")

    page.click("#erase")
    assert page.get_attribute("#erase", "aria-pressed") == "true"
    page.fill("#brush-size", "160")
    paint_stroke(page, (0.15, 0.15), (0.45, 0.35))  # a wide eraser over the whole stroke
    assert page.is_disabled("#inpaint")


def test_a_large_photo_is_shown_downscaled_and_masked_at_full_resolution(page, tmp_path):
    wide = tmp_path / "wide.png"
    gradient = np.linspace(0, 255, 2400, dtype=np.float32).astype(np.uint8)
    Image.fromarray(np.broadcast_to(gradient[None, :, None], (1000, 2400, 3)).copy()).save(wide)
    upload(page, wide)
    assert page.eval_on_selector("#photo", "canvas => [canvas.width, canvas.height]") == [1600, 667]
    assert page.inner_text("#input-size") == "2400×1000 px (shown downscaled)"
    paint_stroke(page, (0.5, 0.2), (0.5, 0.8))
    mask_size = page.evaluate("async () => { const b = await createImageBitmap(await maskPng()); "
                              "return [b.width, b.height]; }")
    assert mask_size == [2400, 1000]


def test_a_file_that_is_not_an_image_shows_an_error(page, tmp_path):
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("this is not a photo")
    page.set_input_files("#upload", str(not_a_photo))
    page.wait_for_selector("#status.error")
    assert "notes.jpg is not an image this browser can read" in page.inner_text("#status")
