"""Values and data mistakes of docs/bad_inputs.md, section "Values and data (more)": each is refused before any
file is written (exit 2, one `error:` line naming the fix), or works; one case per row of that section."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_errors import SINE, refused

from lightning_meta.data import FolderDataModule, TaskSetTasks
from lightning_meta.data.episode import EpisodeBatches
from lightning_meta.errors import ConfigError, DataError
from lightning_meta.evaluate import default_json_path
from lightning_meta.evaluate import main as eval_main
from lightning_meta.run import main as train_main

REPO = Path(__file__).resolve().parent.parent
DDP3 = ["trainer.strategy=ddp", "trainer.devices=3", "trainer.accelerator=cpu", "data.meta_batch_size=3"]
TASKSET = ["data=taskset", "data.factory=examples.synthetic_taskset:tasksets", "model=conv4", "model.hidden=4"]

TRAIN = [
    pytest.param(["trainer.val_check_interval=0"], ["trainer.val_check_interval=0", "1 or more"], id="val-check-0"),
    pytest.param(["data.num_workers=-1"], ["data.num_workers=-1", "0"], id="num-workers-negative"),
    pytest.param(["algorithm.chunk_size=0"], ["algorithm.chunk_size=0", "1 or more"], id="chunk-size-0"),
    pytest.param(["algorithm=imaml", "algorithm.chunk_size=0"], ["algorithm.chunk_size=0"], id="chunk-size-0-imaml"),
    pytest.param(["model.hidden=[0]"], ["model.hidden=[0]", "at least 1 unit"], id="mlp-hidden-0"),
    pytest.param(["model.hidden=0"], ["model.hidden=0", "expects Sequence"], id="mlp-hidden-int"),
    pytest.param(["model.out_features=3"], ["model.out_features=3", "model.out_features=1"], id="sine-out-features"),
    pytest.param(["data.eval_batch_size=0"], ["data.eval_batch_size=0", "1 or more"], id="eval-batch-0"),
    pytest.param(["data.test_episodes=0"], ["data.test_episodes=0: nothing to evaluate; give 1 or more"],
                 id="train-test-episodes-0"),
    pytest.param([*DDP3, "data.val_episodes=2", "data.test_episodes=3"], ["data.val_episodes=2", "3 processes"],
                 id="ddp-val-episodes"),
    pytest.param([*DDP3, "data.val_episodes=3", "data.test_episodes=2"], ["data.test_episodes=2", "3 or more"],
                 id="ddp-test-episodes"),
    pytest.param([*TASKSET, "model.hidden=0"], ["model.hidden=0", "at least 1"], id="conv4-hidden-0"),
    pytest.param(["callbacks.model_checkpoint._target_=0"], ["_target_=0 is not a dotted path"],
                 id="target-not-a-string"),
    pytest.param([*TASKSET, "model.out_features=3"], ["data.ways=5", "model.out_features=3"], id="ways-above-outputs"),
]  # fmt: skip


@pytest.mark.parametrize("argv, words", TRAIN)
def test_train_refuses_before_writing(argv, words, tmp_path, capsys, snapshot):
    (tmp_path / "keep.txt").write_text("an existing file\n")
    before = snapshot(tmp_path)
    refused(train_main, [*SINE, *argv, f"output_dir={tmp_path / 'run'}"], capsys, *words)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


# ----------------------------------------------------------------- eval.py's default JSON name
def _default(**changes) -> str:
    data = dict(task="classification", ways=5, shots=1, test_episodes=600, seed=0, image_size=28)
    config = {"data": {"ways": 5, "image_size": 28, "num_workers": 0}, "model": {"in_channels": 1}, "seed": 0}
    for key, value in changes.items():
        group, _, name = key.partition("__")
        if name:
            config[group] = {**config[group], name: value}
            data.update({name: value} if group == "data" and name in data else {})
        else:
            config[group] = value
            data.update({group: value} if group in data else {})
    learner = SimpleNamespace(transductive=True, eval_inner=SimpleNamespace(steps=10), hparams={"config": config})
    return default_json_path("/runs/a/checkpoints/last.ckpt", SimpleNamespace(**data), learner).name


def test_default_json_name_tells_every_setting_apart():
    base = _default()
    assert re.fullmatch(r"eval_last_5way-1shot_10steps_600ep_transductive_28px_seed0_[0-9a-f]{8}\.json", base), base
    others = [_default(data__image_size=32), _default(seed=1), _default(data__shots=5), _default(model__in_channels=3)]
    assert len({base, *others}) == 5, others
    assert "_32px_" in others[0] and "_seed1_" in others[1]
    assert _default(data__num_workers=4) == base  # a setting that cannot change the figures keeps the name


@pytest.fixture(scope="module")
def sine_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("values") / "run"
    assert train_main([*SINE, f"output_dir={out}"]) == 0
    return out / "checkpoints" / "last.ckpt"


def test_eval_default_names_differ_with_the_seed(sine_ckpt, capsys):
    written = []
    for extra in ([], ["seed=1"], ["algorithm.eval_inner.lr=0.5"], []):
        assert eval_main([f"ckpt_path={sine_ckpt}", *extra]) == 0
        written.append(capsys.readouterr().out.splitlines()[-1])
    assert len(set(written[:3])) == 3 and written[3] == written[0], written  # the same evaluation: the same name


# ----------------------------------------------------------------- data
def test_split_files_naming_a_missing_file(tmp_path):
    for c in range(4):
        (tmp_path / f"c{c}").mkdir()
        from PIL import Image

        Image.new("L", (4, 4)).save(tmp_path / f"c{c}" / "0.png")
    (tmp_path / "train.txt").write_text("c0\nc1\n")
    dm = FolderDataModule(root=str(tmp_path), image_size=4, ways=2, shots=1, queries=0,
                          split_files={"train": "train.txt", "test": "tset.txt"})  # fmt: skip
    with pytest.raises(DataError, match=r"data\.split_files\.test=tset\.txt: .*tset\.txt is not a file"):
        dm.setup()
    dm = FolderDataModule(root=str(tmp_path), image_size=4, ways=2, shots=1, queries=0,
                          split_files={"train": "train.txt", "tests": "train.txt"})  # fmt: skip
    with pytest.raises(ConfigError, match=r"'tests' is not a split; give the keys train, val"):
        dm.setup()


class Returns:
    def __init__(self, value) -> None:
        self.value = value

    def sample(self):
        return self.value


@pytest.mark.parametrize("value", ["abc", (["a", "b"], ["c", "d"]), ("ab", "cd")], ids=["str", "lists", "pair"])
def test_taskset_returning_strings(value):
    tasks = TaskSetTasks(Returns(value), "data.factory=pkg:make, split train")
    with pytest.raises(DataError, match=r"Returns\.sample\(\) \(data\.factory=pkg:make, split train\) returned"):
        tasks.draw(torch.Generator().manual_seed(0))


class FailsOnThird:
    calls = 0

    def sample(self):
        FailsOnThird.calls += 1
        if FailsOnThird.calls == 3:
            raise ZeroDivisionError("the user's bug")
        return torch.zeros(4, 2), torch.tensor([0, 0, 1, 1])


def test_taskset_exception_keeps_its_traceback_and_names_factory_split_episode():
    tasks = TaskSetTasks(FailsOnThird(), "data.factory=pkg:make, split val")
    batches = EpisodeBatches(tasks, 0, "val", (1, 1), range(4), 4)
    with pytest.raises(ZeroDivisionError, match="the user's bug") as info:
        batches[0]
    notes = info.value.__notes__
    assert notes == ["raised by FailsOnThird.sample() (data.factory=pkg:make, split val)",
                     "while drawing episode 2 of the val split (seed 0)"]  # fmt: skip
    assert info.traceback[-1].name == "sample"  # the user's frame is kept


def test_taskset_exception_through_train_py(tmp_path, monkeypatch):
    """The real entry point: a bug in the user's taskset leaves `main` with its own traceback (train.py: exit 1)
    and the note naming the factory and split; nothing is written."""
    (tmp_path / "bad_factory.py").write_text(
        "class Boom:\n    def sample(self):\n        raise ValueError('user bug')\n\n"
        "def make():\n    return {'train': Boom(), 'test': Boom()}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="user bug") as info:
        train_main([*SINE, "data=taskset", "data.factory=bad_factory:make", "data.ways=2", "model=mlp",
                    f"output_dir={tmp_path / 'run'}"])  # fmt: skip
    assert "raised by Boom.sample() (data.factory=bad_factory:make, split train)" in info.value.__notes__
    assert info.traceback[-1].name == "sample" and not (tmp_path / "run").exists()


# ----------------------------------------------------------------- the table
def test_every_case_is_a_row_of_the_table(rows_cover):
    """docs/bad_inputs.md lists each case id of this file once, and no id that is not a case here."""
    rows_cover(__file__)
