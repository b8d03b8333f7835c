"""The demo's model side: a trained learner that adapts to a few drawn classes and classifies a test drawing.

JSON API (served by `lightning_meta.demo.server`, documented in docs/evaluation.md, "Interactive demo"):

    GET  /api/info      -> {"ways", "min_ways", "image_size", "pen_width", "checkpoint", "algorithm",
                            "inner_steps", "transductive"}
    POST /api/classify  {"classes": [[drawing, ...], ...], "test": drawing, "return_images": false}
                        -> {"probabilities": [p_0, ...], "predicted": i, "shots": [k_0, ...],
                            "images": {"classes": [[image, ...], ...], "test": image}   (with return_images)}

A drawing is `{"strokes": [[[x, y], ...], ...], "size": 280}` (points on a square canvas of side `size`) or
`{"image": rows}` (image_size rows of ink values in [0, 1]); `render.drawing_to_image` turns either into the
training images' form. Mistakes in a request raise `DrawingError` with a message that names the fix.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_meta.build import load
from lightning_meta.demo.render import PEN_WIDTH, SOURCE_SIZE, DrawingError, drawing_to_image, short
from lightning_meta.errors import CheckpointError

MIN_WAYS = 2
# Bounds on the work one request asks for (10,000 two-point drawings took 15 s and 2 GB before them). Omniglot has 20
# drawings of each character, and the page sends one per class; a character drawn on the page is a few hundred
# points (one per pointer event: ~5 s of drawing at 60-120 events a second), so 50,000 points in all fit 5 classes
# of 20 drawings each, and the test drawing, at ~500 points each. At the bounds a request takes a few seconds.
MAX_SHOTS = 20  # drawings per class
MAX_TOTAL_POINTS = 50_000  # stroke points of all drawings of a request together
KEYS = ("classes", "test", "return_images")


class Demo:
    """A trained few-shot classifier of drawings: adapt to the drawn classes, then score the test drawing.

    Args:
        learner: a trained `MetaLearner` (e.g. from `lightning_meta.build.load_learner`).
        ways: the most classes the network can tell apart (its output count).
        image_size: side of the training images.
        checkpoint: where the learner came from (shown on the page).
    """

    def __init__(self, learner, ways: int, image_size: int, checkpoint: str = "") -> None:
        self.learner, self.ways, self.image_size, self.checkpoint = learner, ways, image_size, checkpoint
        self._lock = threading.Lock()  # one adaptation at a time: the server answers requests in threads

    def info(self) -> dict:
        """What the page needs to know: class limits, image size, pen width (a fraction of the canvas side)."""
        return {
            "ways": self.ways,
            "min_ways": MIN_WAYS,
            "image_size": self.image_size,
            "pen_width": PEN_WIDTH / SOURCE_SIZE,
            "checkpoint": self.checkpoint,
            "algorithm": type(self.learner).__name__,
            "inner_steps": self.learner.eval_inner.steps,
            "transductive": self.learner.transductive,
        }

    def probabilities(self, support: Sequence[Sequence[Tensor]], test: Tensor) -> Tensor:
        """Class probabilities of a test image after adapting to the support images of each class.

        Shapes:
            support: per class, a list of (1, S, S) images; test (1, S, S) -> (len(support),).
        """
        support_x = torch.stack([image for images in support for image in images])  # (N*K, 1, S, S)
        support_y = torch.cat([torch.full((len(images),), c) for c, images in enumerate(support)])  # (N*K,)
        with self._lock:
            predictor = self.learner.adapt(support_x, support_y)  # a copy of the meta-weights, adapted
            logits = predictor(test[None])[0, : len(support)]  # the network's first N outputs are the N classes
        return logits.float().softmax(-1).cpu()

    def classify(self, request: dict) -> dict:
        """Answer a `POST /api/classify` body (see the module docstring)."""
        if not isinstance(request, dict) or not {"classes", "test"} <= set(request):
            raise DrawingError('the request must be an object with "classes" and "test"')
        unknown = sorted(set(request) - set(KEYS))
        if unknown:
            raise DrawingError(f"unknown key {short(unknown[0])} in the request; its keys are {', '.join(KEYS)}")
        return_images = request.get("return_images", False)
        if not isinstance(return_images, bool):
            raise DrawingError(f'"return_images" must be true or false (a JSON boolean), not {short(return_images)}')
        classes = request["classes"]
        if not isinstance(classes, list) or not MIN_WAYS <= len(classes) <= self.ways:
            count = len(classes) if isinstance(classes, list) else short(classes)
            raise DrawingError(f'"classes" must list {MIN_WAYS} to {self.ways} classes (the model\'s ways), '
                               f"not {count}")  # fmt: skip
        for c, drawings in enumerate(classes):
            if isinstance(drawings, list) and len(drawings) > MAX_SHOTS:
                raise DrawingError(f"class {c + 1} has {len(drawings)} drawings; send at most {MAX_SHOTS} per class")
        points = sum(_points(d) for drawings in classes if isinstance(drawings, list) for d in drawings)
        points += _points(request["test"])
        if points > MAX_TOTAL_POINTS:
            raise DrawingError(f"the request has {points} stroke points in all; send at most {MAX_TOTAL_POINTS} "
                               "(fewer drawings, or fewer points per stroke)")  # fmt: skip
        support = [self._class_images(c, drawings) for c, drawings in enumerate(classes)]
        test = self._image(request["test"], "the test drawing")
        probabilities = self.probabilities(support, test)
        answer = {
            "probabilities": [round(float(p), 6) for p in probabilities],
            "predicted": int(probabilities.argmax()),
            "shots": [len(images) for images in support],
        }
        if return_images:
            as_rows = lambda image: [[round(float(v), 3) for v in row] for row in image[0]]
            answer["images"] = {"classes": [[as_rows(i) for i in images] for images in support], "test": as_rows(test)}
        return answer

    def _class_images(self, c: int, drawings) -> list[Tensor]:
        if not isinstance(drawings, list) or not drawings:
            raise DrawingError(f"class {c + 1} must be a list of one or more drawings")
        return [self._image(d, f"class {c + 1}'s drawing {i + 1}") for i, d in enumerate(drawings)]

    def _image(self, drawing, name: str) -> Tensor:
        try:
            return drawing_to_image(drawing, self.image_size)
        except DrawingError as error:
            raise DrawingError(f"{name}: {error}") from None


def _points(drawing) -> int:
    """The stroke points of a drawing of the JSON API (0 for one that is not strokes: refused later)."""
    strokes = drawing.get("strokes") if isinstance(drawing, dict) else None
    return sum(len(s) for s in strokes if isinstance(s, list)) if isinstance(strokes, list) else 0


def load_demo(ckpt_path: str | Path, overrides: Sequence[str] = ()) -> Demo:
    """The demo of a train.py checkpoint of greyscale image classification; `overrides` use eval.py's grammar.

    The learner predicts non-transductively (`algorithm.transductive=false`, overridable): the test drawing is
    classified together with the support drawings, never normalised by its own batch of one.
    """
    cfg, datamodule, learner = load(ckpt_path, ["algorithm.transductive=false", *overrides])
    channels = cfg.model.get("in_channels", 1)
    if datamodule.task != "classification" or channels != 1 or "image_size" not in cfg.data:
        raise CheckpointError(
            f"{ckpt_path} is not a greyscale image classifier (task {datamodule.task}, {channels} input channels); "
            "the demo needs one trained on Omniglot, e.g. python train.py experiment=demo_omniglot"
        )
    ways = cfg.model.get("out_features") or datamodule.ways
    return Demo(learner, int(ways), int(cfg.data.image_size), str(ckpt_path))
