"""Every bad input of docs/bad_inputs.md, one case per row (the case ids are the table's): exit status 2, one line
`error: ...` with the key words of the fix, no traceback, and no file written or altered (hashes before/after).

Most cases run `main()` in this process (the checks run before any data is read or any file written, so they take
milliseconds); `test_scripts_*` run the real `train.py`/`eval.py` to check the exit status, the absence of a
traceback, and `LIGHTNING_META_DEBUG=1`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_meta.evaluate import main as eval_main
from lightning_meta.run import main as train_main

REPO = Path(__file__).resolve().parent.parent

SINE = [
    "data=sinusoid", "model.hidden=[8]", "trainer.max_steps=4", "trainer.val_check_interval=2",
    "data.val_episodes=2", "data.test_episodes=2", "data.meta_batch_size=2", "algorithm.eval_inner.steps=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]  # fmt: skip


def refused(main, argv: list[str], capsys, *words: str) -> str:
    """Run `main(argv)`; assert exit 2, exactly one `error:` line holding `words`, no traceback; return the line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


# ----------------------------------------------------------------- config and command line (train.py)
CONFIG = [
    pytest.param(["data.way=3"], ["unknown key data.way", "did you mean ways"], id="unknown-key"),
    pytest.param(["algorithm=reptil"], ["no algorithm named 'reptil'", "reptile"], id="unknown-member"),
    pytest.param(["experiment=../train"], ["no experiment named '../train'", "valid:"], id="member-as-path"),
    pytest.param(["data.ways=abc"], ["data.ways='abc'", "expects int"], id="wrong-type"),
    pytest.param(["trainer.precision=bf17"], ["'bf16-mixed'", "'32-true'"], id="precision-value"),
    pytest.param(["data.ways=${nope}"], ["cannot resolve the config", "'nope' not found"], id="interpolation"),
    pytest.param(["data.ways"], ["cannot read argument 'data.ways'", "key=value"], id="no-equals"),
    pytest.param(["--hepl"], ["unknown option --hepl", "--help"], id="unknown-option"),
    pytest.param(["sed=3"], ["unknown key sed", "seed"], id="unknown-run-key"),
    pytest.param(["trainer.logger=false"], ["trainer.logger", "logger=none"], id="trainer-logger"),
    pytest.param(["trainer.callbacks=[]"], ["trainer.callbacks is set by train.py itself"], id="provided-key"),
    pytest.param(["logger=csvv"], ["no logger named 'csvv'", "csv"], id="unknown-logger"),
    pytest.param(["-m", "seed=0,1", "ckpt_path=x.ckpt"], ["sweep cannot resume"], id="sweep-resume"),
    pytest.param(["-m", "trainer.devices=2", "trainer.strategy=ddp", "seed=0,1"], ["one process", "submitit_slurm"],
                 id="sweep-ddp"),
    pytest.param(["seed=-1"], ["seed=-1; give an integer from 0 to 2**32 - 1"], id="seed-negative"),
    pytest.param(["threads=0"], ["threads=0; give the number of CPU threads (1 or more), or null for torch's default"],
                 id="threads-0"),
    pytest.param(["algorithm.outer.anneal_over=time"], ["algorithm.outer.anneal_over=time anneals over "
                 "trainer.max_time, which is not set; give trainer.max_time"], id="anneal-time-without-max-time"),
    pytest.param(["algorithm.inner=0.1"], ["algorithm.inner=0.1 is not a mapping", "algorithm.inner.steps="],
                 id="dataclass-scalar"),
    pytest.param(["algorithm.eval_curve_steps=[1,2"], ["cannot read argument 'algorithm.eval_curve_steps=[1,2'",
                                                      "no viable alternative"], id="unclosed-bracket"),
]
VALUES = [
    pytest.param(["data.ways=0"], ["data.ways=0"], id="ways-0"),
    pytest.param(["data.shots=0"], ["data.shots=0", "at least 1"], id="shots-0"),
    pytest.param(["data.meta_batch_size=0"], ["data.meta_batch_size=0", "at least 1"], id="meta-batch-0"),
    pytest.param(["algorithm.inner.steps=-1"], ["algorithm.inner.steps=-1"], id="inner-steps-negative"),
    pytest.param(["data.queries=0"], ["data.queries=0", "data.queries=1 or more"], id="queries-0"),
    pytest.param(["trainer.max_steps=0"], ["trainer.max_steps=0", "1 or more"], id="max-steps-0"),
    pytest.param(
        ["callbacks.last_checkpoint.every_n_steps=0"], ["callbacks.last_checkpoint.every_n_steps=0"],
        id="checkpoint-every-0",
    ),
    pytest.param(["trainer.precision=16-mixed"], ["16-mixed needs a CUDA GPU", "bf16-mixed"], id="fp16-on-cpu"),
    pytest.param(["trainer.accumulate_grad_batches=2"], ["data.meta_batch_size"], id="accumulate"),
    pytest.param(["trainer.inference_mode=true"], ["trainer.inference_mode=false"], id="inference-mode"),
    pytest.param(["trainer.accelerator=gpu"], ["gpu", "trainer.accelerator=auto"], id="no-gpu"),
    pytest.param(
        ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "data.meta_batch_size=3"],
        ["data.meta_batch_size=3", "multiple of 2"],
        id="ddp-meta-batch",
    ),
]


@pytest.mark.parametrize("argv, words", CONFIG + VALUES)
def test_train_refuses_before_writing(argv, words, tmp_path, capsys, snapshot):
    (tmp_path / "keep.txt").write_text("an existing file\n")
    before = snapshot(tmp_path)
    refused(train_main, [*SINE, *argv, f"output_dir={tmp_path / 'run'}"], capsys, *words)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


# ----------------------------------------------------------------- data on disk (Omniglot)
@pytest.mark.parametrize(
    "argv, words",
    [
        pytest.param(["data.val_characters=1"], ["data.ways=5", "val split has only"], id="ways-above-classes"),
        pytest.param(["data.shots=10", "data.queries=15"], ["only 20 examples", "data.queries"], id="too-many-shots"),
    ],
)
def test_omniglot_shape_mistakes(argv, words, shrink, tmp_path, capsys, snapshot):
    before = snapshot(tmp_path)
    refused(train_main, [*shrink, *argv], capsys, *words)
    assert snapshot(tmp_path) == before


def test_missing_data_folder(tmp_path, capsys, snapshot):
    argv = ["data.root=" + str(tmp_path / "nowhere"), "data.download=false", f"output_dir={tmp_path / 'run'}"]
    refused(train_main, argv, capsys, str(tmp_path / "nowhere"), "images_background.zip")
    assert snapshot(tmp_path) == {}


def test_corrupt_archive(tmp_path, capsys, snapshot):
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for name in ("images_background.zip", "images_evaluation.zip"):
        (folder / name).write_bytes(b"not a zip file")
    before = snapshot(tmp_path)
    refused(train_main, [f"data.root={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}"], capsys, "zip")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------- checkpoints and resuming
@pytest.fixture(scope="session")
def sine_ckpt(tmp_path_factory) -> Path:
    """A finished 4-step sine run (trained once per session); tests copy it before touching it."""
    out = tmp_path_factory.mktemp("errors") / "run"
    assert train_main([*SINE, f"output_dir={out}"]) == 0
    return out


@pytest.fixture
def run_copy(sine_ckpt, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(sine_ckpt, out)
    return out


def _foreign_files(folder: Path) -> dict[str, Path]:
    """Files that are not checkpoints train.py can resume: text, a truncated checkpoint, a config-less one."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.ckpt").write_text("not a checkpoint\n")
    torch.save({"state_dict": {}}, folder / "plain.ckpt")
    return {"text": folder / "notes.ckpt", "plain": folder / "plain.ckpt"}


@pytest.mark.parametrize(
    "kind, words",
    [
        pytest.param("missing", ["does not exist"], id="ckpt-missing"),
        pytest.param("text", ["is not a checkpoint train.py can read", "last.ckpt"], id="ckpt-not-a-checkpoint"),
        pytest.param("truncated", ["is not a checkpoint train.py can read", "truncated"], id="ckpt-truncated"),
        pytest.param("plain", ["has no saved run config"], id="ckpt-without-config"),
    ],
)
@pytest.mark.parametrize("script", ["train", "eval"])
def test_bad_checkpoint_files(kind, words, script, run_copy, tmp_path, capsys, snapshot):
    files = _foreign_files(tmp_path / "other")
    files["missing"] = tmp_path / "nope.ckpt"
    data = (run_copy / "checkpoints" / "last.ckpt").read_bytes()
    files["truncated"] = tmp_path / "other" / "cut.ckpt"
    files["truncated"].write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    main = train_main if script == "train" else eval_main
    extra = SINE if script == "train" else []
    line = refused(main, [*extra, f"ckpt_path={files[kind]}"], capsys, *words)
    assert "weights_only" not in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "argv, words",
    [
        pytest.param(["data.ways=1", "model.hidden=[16]"], ["model.hidden=[16]", "trained with"], id="resume-model"),
        pytest.param(
            ["algorithm=fomaml"],
            ["trained with algorithm=reptile", "add algorithm=reptile"],
            id="resume-other-algorithm",
        ),
        pytest.param(["algorithm.outer.optimizer=adam"], ["algorithm.outer.optimizer"], id="resume-outer-optimizer"),
        pytest.param(["algorithm.outer.lr_final=null"], ["algorithm.outer.lr_final"], id="resume-schedule"),
    ],
)
def test_resume_that_does_not_fit_the_checkpoint(argv, words, run_copy, tmp_path, capsys, snapshot):
    before = snapshot(tmp_path)
    args = [*SINE, *argv, f"ckpt_path={run_copy / 'checkpoints' / 'last.ckpt'}"]
    refused(train_main, args, capsys, *words)
    assert snapshot(tmp_path) == before


def test_resume_without_the_data_member(run_copy, tmp_path, capsys, snapshot):
    """The run was trained with data=sinusoid; a resume that forgets it would build an Omniglot learner."""
    before = snapshot(tmp_path)
    args = [a for a in SINE if not a.startswith(("data", "model"))]
    refused(
        train_main,
        [*args, f"ckpt_path={run_copy / 'checkpoints' / 'last.ckpt'}"],
        capsys,
        "trained with data=sinusoid",
        "add data=sinusoid",
    )
    assert snapshot(tmp_path) == before


def test_resume_into_another_runs_directory(run_copy, sine_ckpt, tmp_path, capsys, snapshot):
    other = tmp_path / "other"
    shutil.copytree(sine_ckpt, other)
    before = snapshot(tmp_path)
    args = [*SINE, f"ckpt_path={run_copy / 'checkpoints' / 'last.ckpt'}", f"output_dir={other}"]
    refused(train_main, args, capsys, f"output_dir={other} holds another run's checkpoints", "leave output_dir out")
    assert snapshot(tmp_path) == before


def test_fresh_run_into_a_directory_with_checkpoints(run_copy, tmp_path, capsys, snapshot):
    before = snapshot(tmp_path)
    refused(train_main, [*SINE, f"output_dir={run_copy}"], capsys, "already holds checkpoints", "ckpt_path=")
    assert snapshot(tmp_path) == before


def test_nonfinite_resume_keeps_the_last_good_checkpoint(run_copy, capsys, snapshot):
    """A step size that diverges stops at the first step with the step, the quantity and the fix; the
    checkpoints on disk are the ones from before (never overwritten by non-finite weights)."""
    before = snapshot(run_copy / "checkpoints")
    args = [*SINE, "trainer.max_steps=8", "callbacks.last_checkpoint.every_n_steps=1", "algorithm.inner.lr=1e10",
            f"ckpt_path={run_copy / 'checkpoints' / 'last.ckpt'}"]  # fmt: skip
    line = refused(train_main, args, capsys, "step 5", "not finite", "algorithm.inner.lr (now 1e+10)", "is kept")
    assert "last.ckpt (step 4) is kept" in line
    assert snapshot(run_copy / "checkpoints") == before


def test_nonfinite_fresh_run_writes_no_checkpoint(tmp_path, capsys):
    args = [*SINE, "algorithm.inner.lr=1e10", "callbacks.last_checkpoint.every_n_steps=1",
            f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    refused(train_main, args, capsys, "step 1", "meta-gradient is not finite", "lower algorithm.inner.lr")
    assert not list((tmp_path / "run").rglob("*.ckpt"))


# ----------------------------------------------------------------- eval.py
@pytest.mark.parametrize(
    "argv, words",
    [
        pytest.param([], ["give the checkpoint to evaluate"], id="eval-no-ckpt"),
        pytest.param(["data.test_episodes=0"], ["data.test_episodes=0", "1 or more"], id="eval-no-episodes"),
        pytest.param(["algorithm=maml"], ["cannot change", "override its keys"], id="eval-group"),
        pytest.param(["model.hidden=[16]"], ["do not fit"], id="eval-model"),
        pytest.param(["model.in_features=3"], ["model.in_features=3 has no effect", "drop the override"],
                     id="eval-input-override"),
        pytest.param(["allow_nonfinite=maybe"], ["allow_nonfinite=true or false"], id="eval-allow-value"),
        pytest.param(
            ["json_path={tmp}/keep.txt/e.json"], ["json_path=", "not a writable folder"], id="eval-json-unwritable"
        ),
        pytest.param(["json_path={tmp}"], ["is a folder"], id="eval-json-folder"),
        pytest.param(
            ["algorithm.eval_inner.optimizer=sgd", "algorithm.eval_inner.lr=1e10"],
            ["2 of 2 test episodes", "non-finite", "allow_nonfinite=true"],
            id="eval-nonfinite",
        ),
    ],
)
def test_eval_refuses(argv, words, run_copy, tmp_path, capsys, snapshot):
    (tmp_path / "keep.txt").write_text("an existing file\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    ckpt = [] if "give the checkpoint" in words[0] else [f"ckpt_path={run_copy / 'checkpoints' / 'last.ckpt'}"]
    before = snapshot(tmp_path)
    refused(eval_main, [*ckpt, *argv], capsys, *words)
    assert snapshot(tmp_path) == before


def test_eval_allow_nonfinite_reports_the_count(run_copy, tmp_path, capsys):
    json_path = tmp_path / "e.json"
    argv = [f"ckpt_path={run_copy / 'checkpoints' / 'last.ckpt'}", "algorithm.eval_inner.optimizer=sgd",
            "algorithm.eval_inner.lr=1e10", "allow_nonfinite=true", f"json_path={json_path}"]  # fmt: skip
    assert eval_main(argv) == 0
    metrics = json.loads(json_path.read_text())["metrics"]
    assert metrics["test/nonfinite_episodes"] == 2 and metrics["test/episodes"] == 2


# ----------------------------------------------------------------- the real scripts
def _script(args: list[str], **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, words",
    [
        pytest.param(["train.py", "data.ways=0"], ["error: data.ways=0"], id="script-train"),
        pytest.param(["eval.py", "ckpt_path=nowhere.ckpt"], ["error: ckpt_path=nowhere.ckpt"], id="script-eval"),
    ],
)
def test_scripts_exit_2_without_traceback(args, words, tmp_path):
    done = _script([*args, f"output_dir={tmp_path / 'run'}"] if args[0] == "train.py" else args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [done.stderr.strip()]
    assert all(word in done.stderr for word in words) and not (tmp_path / "run").exists()


def test_debug_variable_shows_the_traceback(tmp_path):
    done = _script(["train.py", "data.ways=0", f"output_dir={tmp_path / 'run'}"], LIGHTNING_META_DEBUG="1")
    assert done.returncode == 2 and "Traceback" in done.stderr and "error: data.ways=0" in done.stderr


# ----------------------------------------------------------------- the table
def test_every_case_is_a_row_of_the_table(rows_cover):
    """docs/bad_inputs.md lists each case id of this file once, and no id that is not a case here."""
    rows_cover(__file__)
