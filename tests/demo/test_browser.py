"""End to end in headless Chromium: draw on the page's canvases with mouse events, press Classify, read the bars."""

from __future__ import annotations

import math
import os

import torch

from lightning_meta.demo.render import drawing_to_image


def circle(cx: int, cy: int, r: int) -> list[list[int]]:
    return [[round(cx + r * math.cos(a * math.pi / 16)), round(cy + r * math.sin(a * math.pi / 16))] for a in range(33)]


# Three new classes drawn on the 140-pixel class canvases (canvas pixels): a vertical bar, a ring, a cross; the test
# drawing is another ring, on the 200-pixel test canvas.
CLASSES = [
    [[[70, 20], [70, 70], [70, 120]]],
    [circle(70, 70, 45)],
    [[[25, 25], [70, 70], [115, 115]], [[115, 25], [70, 70], [25, 115]]],
]
TEST = [circle(104, 96, 56)]


def check_class_buttons(browser) -> None:
    """The page opens with three classes; Add class stops at five, Remove class takes them away again."""
    count = "document.querySelectorAll('canvas[data-role=class]').length"
    assert browser.evaluate(count) == 3
    for _ in range(3):
        browser.click("#add-class")
    assert browser.evaluate(count) == 5 and browser.evaluate("document.querySelector('#add-class').disabled")
    browser.click("#remove-class")
    browser.click("#remove-class")
    assert browser.evaluate(count) == 3


def check_sent_strokes(sent: dict) -> None:
    """The page sends what was drawn: its strokes are the mouse's path (to the sub-pixel offset of the canvas on the
    page), at the canvases' sizes."""
    drawn = [*CLASSES, TEST]
    recorded = [*(c[0] for c in sent["classes"]), sent["test"]]
    assert [d["size"] for d in recorded] == [140, 140, 140, 200]
    for strokes, drawing in zip(drawn, recorded, strict=True):
        offsets = torch.tensor(drawing["strokes"][0]) - torch.tensor(strokes[0])  # first strokes, point by point
        assert [len(s) for s in drawing["strokes"]] == [len(s) for s in strokes] and offsets.abs().max() <= 1


def check_seen_image(browser, sent: dict) -> None:
    """The "what the model sees" image of class 1 is the API's rendering of its drawing (up to rounding)."""
    seen = browser.evaluate("Array.from(document.querySelector('.seen').getContext('2d')"
                            ".getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0))")  # fmt: skip
    ink = 1 - torch.tensor(seen, dtype=torch.float32).view(28, 28) / 255
    assert (ink - drawing_to_image(sent["classes"][0][0])[0]).abs().max() <= 0.5 / 255 + 1e-3


def save_screenshot(browser, tmp_path) -> None:
    png = browser.screenshot()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "demo.png").write_bytes(png)
    if os.environ.get("DEMO_SCREENSHOT"):  # e.g. DEMO_SCREENSHOT=/tmp/demo.png to look at the page
        with open(os.environ["DEMO_SCREENSHOT"], "wb") as out:
            out.write(png)


def test_drawing_on_the_page_and_classifying_shows_the_probabilities(browser, demo_url, client, tmp_path):
    browser.send("Page.navigate", url=f"{demo_url}/")
    browser.wait_for("document.body.dataset.state === 'ready'")
    check_class_buttons(browser)

    browser.click("#classify")
    assert browser.evaluate("document.querySelector('#status').textContent") == "Draw an example of class 1 first."
    for i, strokes in enumerate(CLASSES):
        browser.draw(f".card.class:nth-child({i + 1}) canvas[data-role=class]", strokes)
    browser.draw("#test-canvas", TEST)
    browser.click("#classify")
    browser.wait_for("document.querySelector('.bar').dataset.probability !== ''")

    shown = browser.evaluate("[...document.querySelectorAll('.bar')].map(b => [b.dataset.probability, "
                             "b.querySelector('.value').textContent])")  # fmt: skip
    sent = browser.evaluate("({classes: pads.map(p => [p.toDrawing()]), test: testPad.toDrawing()})")
    check_sent_strokes(sent)
    # The API answers the page's drawings with the numbers the bars show.
    expected = client.call(f"{demo_url}/api/classify", sent)[1]["probabilities"]
    assert [float(p) for p, _ in shown] == expected
    assert [text for _, text in shown] == [f"{100 * p:.1f} %" for p in expected]
    assert expected.index(max(expected)) == 1 and max(expected) > 0.5  # the ring
    assert browser.evaluate("document.querySelector('.card.predicted h2').textContent") == "Class 2"
    check_seen_image(browser, sent)
    save_screenshot(browser, tmp_path)
