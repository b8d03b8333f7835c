"""Config composition and validation: errors name the fix, groups and overrides compose, Trainer args pass."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from lightning_meta.config import CONFIG_DIR, ConfigError, instantiate, load_config, named_nodes
from lightning_meta.models import MLP, Conv4
from lightning_meta.run import main

REPO = Path(__file__).resolve().parent.parent


def test_cli_unknown_key_exits_with_the_nearest_key(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "data.way=3", f"output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "error: unknown key data.way for lightning_meta.data.OmniglotDataModule; did you mean ways?" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["algorithm=reptil"], "no algorithm named 'reptil'; did you mean reptile?"),
        (["data=omniglt"], "no data named 'omniglt'; did you mean omniglot"),
        (["data.ways=abc"], "data.ways='abc' has the wrong type; lightning_meta.data.OmniglotDataModule "
                            "expects int"),
        (["trainer.max_steps=1.5"], "trainer.max_steps=1.5 has the wrong type; pytorch_lightning.Trainer "
                                    "expects int"),
        (["trainer.precision=bf17"], "trainer.precision='bf17' has the wrong type"),
        (["algorithm.chunk_sise=3"], "unknown key algorithm.chunk_sise for lightning_meta.algorithms."
                                   "Reptile; did you mean chunk_size"),
        (["seed=abc"], "seed='abc' has the wrong type; expected int"),
        (["data.ways"], "cannot read argument 'data.ways'; write key=value"),
        (["sed=3"], "unknown key sed; did you mean seed"),
        (["trainer.callbacks=[]"], "trainer.callbacks is set by train.py itself"),
    ],
)  # fmt: skip
def test_errors_name_the_key_and_the_fix(argv, message, tmp_path, capsys):
    with pytest.raises(ConfigError) as error:
        load_config(argv)
    assert message in str(error.value)
    out = tmp_path / "run"
    assert main([*argv, f"output_dir={out}"]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists(), "nothing may be written when the config is wrong"


def test_defaults_compose_to_reptile_on_omniglot():
    cfg = load_config([])
    assert cfg.algorithm._target_ == "lightning_meta.algorithms.Reptile"
    assert cfg.data._target_ == "lightning_meta.data.OmniglotDataModule"
    assert cfg.model._target_ == "lightning_meta.models.Conv4"
    assert cfg.model.out_features == cfg.data.ways and cfg.data.seed == cfg.seed  # interpolations resolved
    with pytest.raises(Exception, match="foo"):
        cfg.foo = 1  # struct mode: no silent new keys


def test_group_selection_and_overrides_compose():
    cfg = load_config(["model.hidden=[8,8]", "data=sinusoid", "data.shots=3", "seed=7"])
    assert cfg.selection.model == "mlp", "the sinusoid data member selects the MLP"
    assert cfg.model._target_ == "lightning_meta.models.MLP" and list(cfg.model.hidden) == [8, 8]
    assert cfg.data.shots == 3 and cfg.data.seed == 7 and cfg.seed == 7
    model = instantiate(cfg.model)
    assert isinstance(model, MLP) and model(torch.zeros(2, 1)).shape == (2, 1)
    assert [m.out_features for m in model.features if isinstance(m, torch.nn.Linear)] == [8, 8]


def test_command_line_group_beats_the_data_members_choice(tmp_path):
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    (config_dir / "model" / "mlp_wide.yaml").write_text("_target_: lightning_meta.models.MLP\nhidden: [64]\n")
    cfg = load_config(["data=sinusoid", "model=mlp_wide"], config_dir=config_dir)
    assert cfg.selection.model == "mlp_wide" and list(cfg.model.hidden) == [64]


def test_interpolated_sizes_follow_overrides():
    cfg = load_config(["data.ways=20", "model.hidden=8"])
    model = instantiate(cfg.model)
    assert isinstance(model, Conv4) and model(torch.zeros(2, 1, 28, 28)).shape == (2, 20)


def test_any_trainer_argument_can_be_set():
    cfg = load_config(["trainer.limit_val_batches=0.5", "trainer.gradient_clip_algorithm=norm"])
    assert cfg.trainer.limit_val_batches == 0.5 and cfg.trainer.gradient_clip_algorithm == "norm"
    provided = {"self", "callbacks", "logger", "default_root_dir"}
    params = inspect.signature(pl.Trainer.__init__).parameters
    for name, p in params.items():
        if name in provided:
            continue
        value = p.default
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert load_config([f"trainer.{name}={text}"]).trainer[name] == value, name


@pytest.mark.parametrize("group", ["algorithm", "data", "model", "trainer", "logger"])
def test_every_shipped_member_binds_to_its_signature(group):
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        cfg = load_config([f"{group}={path.stem}"])
        assert cfg.selection[group] == path.stem
        if group == "logger":  # one logger, several (logger=many) or none
            assert len(named_nodes(cfg.logger, "logger")) == {"none": 0, "many": 2}.get(path.stem, 1)
        else:
            assert OmegaConf.select(cfg, f"{group}._target_")


def test_existing_checkpoints_refuse_a_fresh_run(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert main([f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert f"resume with ckpt_path={out / 'checkpoints' / 'last.ckpt'} or choose another output_dir" in err
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "last.ckpt"]


def test_missing_checkpoint_is_an_error(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    assert main([f"ckpt_path={missing}"]) == 2
    assert f"ckpt_path={missing} does not exist" in capsys.readouterr().err
