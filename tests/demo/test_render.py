"""Drawings become training images the way Omniglot's drawings do: same decoding, same pen width, ink = 1."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_meta.data.omniglot import decode_omniglot
from lightning_meta.demo.render import (
    PEN_WIDTH,
    DrawingError,
    drawing_to_image,
    page_to_image,
    render_page,
    render_strokes,
)

CHARACTERS = set(range(0, 1623, 100))  # 17 characters spread over both archives


def test_page_to_image_equals_the_data_modules_decoding(omniglot_root, tmp_path):
    folder = omniglot_root / "omniglot"
    pages = []
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(folder / f"{name}.zip") as archive:
            member = sorted(m for m in archive.namelist() if m.endswith(".png"))[7]
            target = tmp_path / member
            target.parent.mkdir(parents=True)
            target.write_bytes(archive.read(member))
            pages.append(Image.open(io.BytesIO(target.read_bytes())))
    decoded = decode_omniglot(tmp_path, 28)["images"]  # (2, 28, 28) uint8, ink = 255, by character id
    ours = torch.cat([page_to_image(page) for page in pages])  # the background drawing has the lower id
    assert torch.equal(ours, decoded.float() / 255)


def test_redrawn_skeletons_have_the_ink_of_real_drawings(omniglot_root, drawings):
    originals = drawings.originals(omniglot_root / "omniglot", CHARACTERS)
    inks = [ink for per_drawer in originals.values() for ink in per_drawer[:3]]  # 51 drawings
    assert len(inks) == 51
    real = torch.stack([page_to_image(Image.fromarray(~ink)) for ink in inks])  # as decoded for training
    strokes = [drawings.strokes(ink) for ink in inks]
    rendered = {w: torch.stack([render_strokes(s, 280, 28, w) for s in strokes]) for w in (4, 5, 6)}
    ratio = {w: (images.sum() / real.sum()).item() for w, images in rendered.items()}
    error = {w: (images - real).abs().mean().item() for w, images in rendered.items()}
    assert PEN_WIDTH == 5
    assert abs(ratio[5] - 1) < 0.05  # 0.98 on 150 other drawings
    assert ratio[4] < 0.9 and ratio[6] > 1.1  # the neighbouring widths are off by more
    assert error[5] < min(error[4], error[6])


def test_a_line_lands_where_it_was_drawn_with_the_pen_width():
    image = render_strokes([[[0.2, 0.5], [0.8, 0.5]]])  # a horizontal line across the middle
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    rows = image[0].sum(1)
    centre = (rows * torch.arange(28)).sum() / rows.sum()
    assert centre.item() == pytest.approx(13.5, abs=0.1)  # y = 0.5: between rows 13 and 14
    page = np.asarray(render_page([[[0.2, 0.5], [0.8, 0.5]]])) < 128  # the 105 x 105 binary page
    capsule = 0.6 * 105 * PEN_WIDTH + math.pi * PEN_WIDTH**2 / 4
    assert page.sum() == pytest.approx(capsule, rel=0.03)
    assert page.any(1).sum() == PEN_WIDTH  # rows 50..54
    assert abs(page.any(0).sum() - (0.6 * 105 + PEN_WIDTH)) <= 1  # x from 21 - 2.5 to 84 + 2.5


def test_canvas_units_do_not_matter():
    strokes = [[[0.1, 0.2], [0.5, 0.9], [0.7, 0.3]], [[0.4, 0.4]]]
    in_pixels = [[[280 * x, 280 * y] for x, y in s] for s in strokes]
    assert torch.equal(render_strokes(strokes), render_strokes(in_pixels, size=280))
    assert torch.equal(drawing_to_image({"strokes": in_pixels, "size": 280}), render_strokes(strokes))
    assert render_strokes([[[0.4, 0.4]]]).sum() > 0  # a one-point stroke is a dot


def test_images_pass_through_unchanged():
    rows = torch.rand(28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawing_to_image({"image": rows.tolist()}), rows[None])


@pytest.mark.parametrize(
    "drawing, message",
    [
        ({"strokes": []}, "empty"),
        ({"image": [[0.0] * 28] * 28}, "empty"),
        ({"strokes": [[[1, 2]]], "image": []}, "either"),
        ([[1, 2]], "either"),
        ({"strokes": [[[1, 2, 3]]]}, "[x, y]"),
        ({"strokes": [[[1, float("nan")]]]}, "[x, y]"),
        ({"strokes": [[1, 2]]}, "[x, y]"),
        ({"strokes": [[[1, 2]]], "size": 0}, "positive"),
        ({"image": [[0.5] * 27] * 28}, "28 rows of 28"),
        ({"image": [[2.0] * 28] * 28}, "[0, 1]"),
        ({"strokes": [[[0.5, 0.5]] * 20_001]}, "at most 20000"),
    ],
)
def test_bad_drawings_are_refused_with_the_fix(drawing, message):
    with pytest.raises(DrawingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        drawing_to_image(drawing)
