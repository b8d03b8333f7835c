"""Drawings to the training images' form, the one conversion every path of the demo uses (page and JSON API).

Omniglot's drawings were drawn on a canvas and stored as 105 x 105 binary images, black ink on white;
`decode_omniglot` (lightning_meta/data/omniglot.py) shrinks them to `image_size` with Lanczos and inverts them, so
ink = 1 after /255. A demo drawing takes the same road: its strokes are drawn as binary lines of Omniglot's pen
width on a 105 x 105 page, then shrunk and inverted the same way. The pen width is calibrated on the real drawings
(tests/demo/test_render.py): their skeletons, redrawn here, have the ink fraction of the originals.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

SOURCE_SIZE = 105  # side of Omniglot's drawings, in pixels
# Omniglot's stroke width in those pixels. The skeletons of 150 real drawings redrawn at width 5 carry 0.98 times the
# originals' ink after decoding, with the smallest mean pixel difference (0.008) of widths 3 to 6 in half steps
# (width 4: 0.83, 6: 1.15 times the ink); ink area / skeleton length of the originals gives 5.4. tests/demo checks it.
PEN_WIDTH = 5
SUPERSAMPLE = 4  # draw at 4 x 105 pixels, then average 4 x 4 blocks: exact pen width at any angle
MAX_POINTS = 20_000  # per drawing: a bound on the work one request can ask for


class DrawingError(ValueError):
    """A drawing the demo cannot read; the message says what is wrong with it."""


def short(value, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for messages about values a request sent."""
    cut = reprlib.Repr()
    cut.maxlevel, cut.maxstring, cut.maxother = 3, limit, limit
    try:
        text = cut.repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}..."


def render_strokes(
    strokes: Sequence[Sequence[Sequence[float]]], size: float = 1.0, image_size: int = 28, pen_width: float = PEN_WIDTH
) -> Tensor:
    """Strokes, as drawn on a square canvas of side `size`, as a training image.

    Args:
        strokes: each stroke a list of [x, y] points (x to the right, y down, 0..size); a one-point stroke is a dot.
        size: the canvas side in the points' units (e.g. 280 for a 280 x 280 pixel canvas, 1 for coordinates in
            0..1).
        image_size: side of the training images (`data.image_size`).
        pen_width: stroke width in pixels of the 105 x 105 page.

    Shapes:
        -> (1, image_size, image_size), float32 in [0, 1], ink = 1.
    """
    return page_to_image(render_page(strokes, size, pen_width), image_size)


def render_page(strokes: Sequence[Sequence[Sequence[float]]], size: float = 1.0, pen_width: float = PEN_WIDTH):
    """The strokes on a binary 105 x 105 page, black ink on white, as Omniglot's drawings are stored."""
    side = SOURCE_SIZE * SUPERSAMPLE
    page = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(page)
    scale, radius = side / size, pen_width * SUPERSAMPLE / 2
    for stroke in strokes:
        points = [(x * scale - 0.5, y * scale - 0.5) for x, y in stroke]  # PIL puts pixel i's centre at i
        for start, end in zip(points, points[1:], strict=False):
            draw.polygon(_band(start, end, radius), fill=0)
        for x, y in points:  # round caps and joins, and a dot for a one-point stroke
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=0)
    binary = page.reduce(SUPERSAMPLE).point(lambda v: 0 if v < 128 else 255)  # Omniglot's pages are binary
    return binary


def _band(start: tuple[float, float], end: tuple[float, float], radius: float) -> list[tuple[float, float]]:
    """The rectangle of a pen of half-width `radius` moved straight from `start` to `end`."""
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    nx, ny = -(y1 - y0) / length * radius, (x1 - x0) / length * radius  # normal, `radius` long
    return [(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)]


def page_to_image(page: Image.Image, image_size: int = 28) -> Tensor:
    """A 105 x 105 page (black ink on white) shrunk and inverted exactly as `decode_omniglot` does.

    Shapes:
        -> (1, image_size, image_size), ink = 1.
    """
    grey = page.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
    ink = 255 - torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8)
    return ink.view(1, image_size, image_size).float().div(255.0)


def drawing_to_image(drawing: dict, image_size: int = 28) -> Tensor:
    """A drawing of the JSON API as a training image: `{"strokes": [[[x, y], ...], ...], "size": 280}` is
    rendered by `render_strokes`; `{"image": [[...], ...]}` (image_size rows of ink values in [0, 1]) is taken as
    it is. An empty drawing is an error: the network would see a blank page.

    Shapes:
        -> (1, image_size, image_size), ink = 1.
    """
    if not isinstance(drawing, dict) or ("strokes" in drawing) == ("image" in drawing):
        raise DrawingError('a drawing is an object with either "strokes" (and "size") or "image"')
    if "image" in drawing:
        image = _image(drawing["image"], image_size)
    else:
        image = render_strokes(_strokes(drawing["strokes"]), _size(drawing.get("size", 1.0)), image_size)
    if not image.any():
        raise DrawingError("the drawing is empty; draw something first")
    return image


def _strokes(strokes) -> list[list[tuple[float, float]]]:
    if not isinstance(strokes, list) or not all(isinstance(s, list) and s for s in strokes):
        raise DrawingError('"strokes" must be a list of strokes, each a non-empty list of [x, y] points')
    if sum(len(s) for s in strokes) > MAX_POINTS:
        raise DrawingError(f"the drawing has {sum(len(s) for s in strokes)} points; send at most {MAX_POINTS}")
    point = lambda p: isinstance(p, list) and len(p) == 2 and _number(p[0]) and _number(p[1])
    if not all(point(p) for s in strokes for p in s):  # JSON numbers only: no strings, booleans or nulls
        raise DrawingError("each point of a stroke must be [x, y], two finite numbers")
    return [[(float(x), float(y)) for x, y in s] for s in strokes]


def _size(size) -> float:
    if not _number(size) or size <= 0:
        raise DrawingError(f'"size" must be a positive number (the canvas side), not {short(size)}')
    return float(size)


def _image(rows, image_size: int) -> Tensor:
    shape_ok = isinstance(rows, list) and len(rows) == image_size
    shape_ok = shape_ok and all(isinstance(r, list) and len(r) == image_size for r in rows)
    if not shape_ok or not all(_number(v) for r in rows for v in r):
        raise DrawingError(f'"image" must be {image_size} rows of {image_size} numbers (ink values in [0, 1])')
    image = torch.tensor(rows, dtype=torch.float32)
    if image.min() < 0 or image.max() > 1:
        raise DrawingError('"image" values must lie in [0, 1] (ink = 1, paper = 0)')
    return image[None]


def _number(value) -> bool:
    """A finite JSON number (not a boolean; an int too large for a float is not finite)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False
