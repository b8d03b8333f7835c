"""The interactive few-shot demo: draw a few new classes and a test character, watch a meta-trained model classify
it (`python demo.py`). `render` turns drawings into training images, `fewshot` adapts and classifies, `server`
serves the page and the JSON API."""

from lightning_meta.demo.fewshot import Demo, load_demo
from lightning_meta.demo.render import DrawingError, drawing_to_image, render_strokes

__all__ = ["Demo", "DrawingError", "drawing_to_image", "load_demo", "render_strokes"]
