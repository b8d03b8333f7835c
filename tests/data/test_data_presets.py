"""The Mini-ImageNet presets bind to their constructors and train a few steps, shrunk, on a pickle fixture."""

from __future__ import annotations

import pytest
import torch

from lightning_meta.config import CONFIG_DIR, load_config
from lightning_meta.run import train

PRESETS = sorted(p.stem for p in CONFIG_DIR.glob("experiment/*miniimagenet*.yaml"))
# Seconds-long runs: 20x20 images, a 4-filter network, 4 meta-iterations, 2-step evaluation on 4 episodes.
SHRINK = [
    "data.image_size=20", "model.hidden=4", "trainer.max_steps=4", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.test_episodes=4",
    "data.eval_batch_size=2", "data.meta_batch_size=2", "algorithm.eval_inner.steps=2",
]  # fmt: skip


def test_every_paper_setting_has_a_preset():
    assert PRESETS == [
        "fomaml_miniimagenet_5w1s", "fomaml_miniimagenet_5w5s", "imaml_miniimagenet_5w1s", "maml_miniimagenet_5w1s",
        "maml_miniimagenet_5w5s", "reptile_miniimagenet_5w1s", "reptile_miniimagenet_5w1s_transductive",
        "reptile_miniimagenet_5w5s",
    ]  # fmt: skip


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_when_shrunk(name, tmp_path, formats):
    formats.mini_pickles(tmp_path / "mini", classes=5, per_class=20, size=20)  # 20 >= train shots + queries
    full = load_config([f"experiment={name}"])
    val = ["data.val_episodes=2"] if full.data.val_episodes else []
    cfg = load_config([f"experiment={name}", *SHRINK, *val, f"data.root={tmp_path / 'mini'}",
                       f"output_dir={tmp_path / 'run'}"])  # fmt: skip
    assert cfg.selection.data == "miniimagenet" and cfg.selection.model == "conv4_rgb"
    assert (cfg.data.ways, cfg.data.shots, cfg.data.queries) == (full.data.ways, full.data.shots, full.data.queries)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["test/acc"]))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    model = checkpoint["hyper_parameters"]["config"]["model"]
    assert (model["in_channels"], model["image_size"], model["hidden"]) == (3, 20, 4)  # the network follows the data


@pytest.mark.parametrize("data", ["miniimagenet", "cifar_fs", "fc100"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_maml_family_gets_the_mini_imagenet_step_sizes_not_omniglots(data, algorithm):
    cfg = load_config([f"algorithm={algorithm}", f"data={data}"])
    assert (cfg.algorithm.inner.lr, cfg.algorithm.inner.steps) == (0.01, 5)
    assert (cfg.algorithm.eval_inner.lr, cfg.algorithm.eval_inner.steps) == (0.01, 10)
    assert load_config([f"algorithm={algorithm}", f"data={data}", "algorithm.inner.lr=0.1"]).algorithm.inner.lr == 0.1
