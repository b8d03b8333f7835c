"""Shipped configs: every group YAML binds to its target's signature and instantiates; every experiment preset
names its paper number and command, lists only what differs, and trains a few steps when shrunk."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from omegaconf import OmegaConf

from lightning_meta.config import (
    CONFIG_DIR,
    PROVIDED,
    check_node,
    import_target,
    instantiate,
    load_config,
    signature_params,
)
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.run import train

GROUP_FILES = [
    (group, path.stem) for group in ("algorithm", "data", "model", "trainer")
    for path in sorted((CONFIG_DIR / group).glob("*.yaml"))
]  # fmt: skip
PRESETS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Shrinks a sine-wave preset to seconds (tests/conftest.py's SHRINK is for Omniglot, whose data needs a root).
SINE_SHRINK = [
    "model.hidden=[8]", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "data.val_episodes=4", "data.test_episodes=4", "data.eval_batch_size=2",
    "data.meta_batch_size=2", "algorithm.eval_inner.steps=2",
]  # fmt: skip


@pytest.mark.parametrize("group, name", GROUP_FILES)
def test_group_yaml_mirrors_its_constructor_and_instantiates(group, name, tmp_path):
    cfg = load_config([f"{group}={name}"])  # composes and validates every node
    node = cfg[group]
    check_node(node, group, PROVIDED.get(group, ()))
    target = import_target(node._target_)
    params = signature_params(target)  # with **kwargs, the parents' arguments too
    if group in ("data", "model"):  # configs mirror constructors: every argument is written down once
        missing = set(params) - {"self", *PROVIDED.get(group, ())} - set(node)
        assert not missing, f"configs/{group}/{name}.yaml lacks {sorted(missing)}"
    if group == "algorithm":  # one place per default: the file sets only what differs from its class's signature
        written = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml"))
        for key, value in written.items():
            default = params[key].default if key in params else None
            default = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
            assert key == "_target_" or value != default, f"configs/{group}/{name}.yaml repeats the default {key}"
        assert set(params) - {"self", *PROVIDED[group]} <= set(node), "the binder fills every argument in"
    if group == "algorithm":
        task = import_target(cfg.data._target_).task
        learner = instantiate(node, backbone=instantiate(cfg.model), task=task)
        for key in node:
            if key != "_target_":
                assert learner.hparams[key] == OmegaConf.to_object(node)[key], key
        assert learner.inner == type(learner.inner)(**node.inner)
    elif group == "data":
        datamodule = instantiate(node)
        assert isinstance(datamodule, EpisodicDataModule)
        assert (datamodule.shots, datamodule.meta_batch_size) == (node.shots, node.meta_batch_size)
    elif group == "model":
        model = instantiate(node)
        x_shape = (node.in_features,) if "in_features" in node else (node.in_channels, node.image_size, node.image_size)
        assert model(torch.zeros(2, *x_shape)).shape == (2, node.out_features)
    else:
        trainer = instantiate(node, callbacks=[], logger=False, default_root_dir=str(tmp_path))
        assert trainer.max_steps == node.max_steps


@pytest.mark.parametrize("name", PRESETS)
def test_preset_header_gives_paper_number_and_launch_command(name):
    text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    header = text.split("\ndefaults:")[0]
    assert all(line.startswith("#") for line in header.splitlines()), "the preset must open with a comment"
    assert f"# Launch: python train.py experiment={name}" in header.splitlines()
    assert re.search(r"\d+\.\d+ ± \d+\.\d+ %", header) or "Figure" in header, "cite the published number"


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("name", PRESETS)
def test_preset_lists_only_what_differs(name):
    preset = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "experiment" / f"{name}.yaml"))
    groups = {key.rpartition("/")[2]: member for entry in preset.pop("defaults", []) for key, member in entry.items()}
    without = load_config([f"{group}={member}" for group, member in groups.items()])
    with_preset = load_config([f"experiment={name}"])
    for key, value in _leaves(preset):
        assert OmegaConf.select(with_preset, key) == value, key
        assert OmegaConf.select(without, key) != value, f"{name} repeats the default {key}={value}"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_when_shrunk(name, request, tmp_path):
    full = load_config([f"experiment={name}"])
    if full.selection.data not in ("omniglot", "sinusoid"):
        pytest.skip("image datasets without local data train shrunk on fixtures in tests/data/test_data_presets.py")
    if full.selection.data == "omniglot":
        shrink = request.getfixturevalue("shrink")
    else:
        shrink = [*SINE_SHRINK, f"output_dir={tmp_path / 'run'}"]
    cfg = load_config([f"experiment={name}", *shrink])
    assert cfg.data.get("ways") == full.data.get("ways")  # 20-way stays 20-way
    metrics = train(cfg)
    metric = "test/acc" if full.selection.data == "omniglot" else "test/mse"
    assert torch.isfinite(torch.tensor(metrics[metric]))
    checkpoint = torch.load(cfg.output_dir + "/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
