"""The adapt-and-predict API: meta-weights untouched, the predictor equals a hand-written fine-tune, and it
works on a learner loaded from a train.py checkpoint (with the example script built on it)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from lightning_meta.algorithms import Reptile
from lightning_meta.build import load, load_learner
from lightning_meta.data.episode import Episode
from lightning_meta.models import Conv4

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def task(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(6, 1, 8, 8, generator=g),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.rand(9, 1, 8, 8, generator=g),
    )


def learner(**kwargs) -> Reptile:
    torch.manual_seed(0)
    return Reptile(Conv4(out_features=3, hidden=8, image_size=8), eval_inner=dict(batch_size=None, **kwargs))


def fine_tune_by_hand(backbone: torch.nn.Module, x, y, steps: int, lr: float, adam: bool) -> torch.nn.Module:
    """Plain autograd on a deep copy: SGD, or Adam with beta1 = 0 (the Reptile paper's inner optimizer)."""
    model = copy.deepcopy(backbone)
    params = list(model.parameters())
    second = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            for p, g, v in zip(params, grads, second, strict=True):
                if adam:
                    v.mul_(0.999).add_(0.001 * g * g)
                    p.sub_(lr * g / ((v / (1 - 0.999**t)).sqrt() + 1e-8))
                else:
                    p.sub_(lr * g)
    return model


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_predictor_equals_a_hand_written_fine_tune_and_meta_weights_stay_bit_identical(optimizer):
    meta = learner(optimizer=optimizer, lr=0.05, steps=3)
    before = {k: v.clone() for k, v in meta.state_dict().items()}
    support_x, support_y, query_x = task()
    predictor = meta.adapt(support_x, support_y)
    for name, value in meta.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in meta.parameters())
    reference = fine_tune_by_hand(meta.backbone, support_x, support_y, 3, 0.05, adam=optimizer == "adam")
    with torch.no_grad():
        torch.testing.assert_close(predictor(query_x), reference(query_x), rtol=1e-4, atol=1e-5)
    assert torch.equal(predictor.classify(query_x), predictor(query_x).argmax(-1))
    assert (predictor(query_x) - meta(query_x)).abs().max() > 1e-3  # it did adapt


def test_predictor_keeps_its_own_copy_of_the_weights():
    meta = learner(steps=0)  # fast weights = meta-weights: the predictor must still not alias them
    support_x, support_y, query_x = task()
    predictor = meta.adapt(support_x, support_y)
    expected = predictor(query_x)
    with torch.no_grad():
        for p in meta.parameters():
            p.add_(1.0)  # e.g. further meta-training
    assert torch.equal(predictor(query_x), expected)


def test_learner_loaded_from_a_checkpoint_adapts_like_the_test_protocol(omniglot_run):
    ckpt = torch.load(omniglot_run.best, map_location="cpu", weights_only=True)
    cfg, datamodule, meta = load(omniglot_run.best)
    assert not meta.training
    for name, value in meta.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name]), name
    datamodule.setup("test")
    batch = datamodule.eval_batches("test", 2)[0]
    for t in range(2):
        episode = Episode(*(field[t] for field in batch))
        predictor = meta.adapt(episode.support_x, episode.support_y)
        accuracy = (predictor.classify(episode.query_x) == episode.query_y).float().mean()
        assert accuracy == meta.evaluate_task(meta.params(), episode)["query_metric"]
    for name, value in meta.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name]), name
    assert load_learner(omniglot_run.best, ["algorithm.eval_inner.steps=7"]).eval_inner.steps == 7


def run_example(argv, capsys) -> tuple[int, str, str]:
    spec = importlib.util.spec_from_file_location("adapt_omniglot", REPO / "examples" / "adapt_omniglot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_example_without_checkpoint_says_how_to_get_one(capsys):
    code, out, err = run_example([], capsys)
    assert code == 2 and out == ""
    assert err.startswith("adapt_omniglot: no checkpoint given. Meta-train one first")
    assert "--ckpt outputs/omniglot/checkpoints/last.ckpt" in err


def test_example_classifies_drawings_of_unseen_characters(omniglot_run, omniglot_root, capsys):
    argv = ["--ckpt", str(omniglot_run.best), "--root", str(omniglot_root), "--queries", "3", "--seed", "1"]
    code, out, _ = run_example(argv, capsys)
    assert code == 0
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith("query")]
    assert len(rows) == 5 * 3  # 5-way (the checkpoint's), 3 queries each
    right = sum(line.endswith(" ok") for line in rows)
    assert lines[-1] == f"accuracy {right / 15:.0%} on 15 drawings (chance 20%)"
    ids = [int(i) for i in lines[0].split("ids [")[1].split("]")[0].split(", ")]
    _, datamodule, _ = load(omniglot_run.best, [f"data.root={omniglot_root}"])
    assert set(ids) <= set(datamodule.character_split()["test"].tolist())  # unseen in meta-training
