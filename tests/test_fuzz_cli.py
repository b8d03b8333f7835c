"""Command-line fuzzing of train.py (Hypothesis): overrides built from the real config tree, with values of the
wrong type, out of range, or broken YAML/Hydra fragments, run through `lightning_meta.run.main` in this process.

Every case must either run (exit 0) or be refused before anything is written: exactly one `error:` line on stderr,
exit status 2, no traceback, and an empty output_dir. The shrunk sine settings come last, so a fuzzed key that
would make a run long (trainer.max_steps, the episode counts) is overridden by them; values that could make a run
long or heavy through another key (inner steps, shots, worker processes, DDP) are kept small or left out.

Reproducible: `derandomize=True` draws the same cases on every run (CI sees the same ones; a failure found here
becomes a deterministic row of tests/test_values.py). Budget: about 35 s on one CPU thread; the counts are
printed at the end (`CLI fuzz: N cases, K refused, M ran`).
"""

from __future__ import annotations

import atexit
import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from lightning_meta.config import load_config  # noqa: E402
from lightning_meta.run import main as train_main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHRUNK = [
    "data=sinusoid", "trainer.max_steps=1", "data.val_episodes=2", "data.test_episodes=2", "data.meta_batch_size=2",
    "data.eval_batch_size=2", "model.hidden=[4]", "algorithm.eval_inner.steps=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "logger=csv",
]  # fmt: skip
# Keys left out: where a run that passes the checks would start processes, reach the network or another folder.
SKIPPED = {"output_dir", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.accelerator"}
# Keys whose large values make a run long or heavy: only small positive values are drawn for them.
SMALL_ONLY = {"algorithm.inner.steps", "algorithm.eval_inner.steps", "algorithm.eval_curve_steps", "data.shots",
              "data.queries", "data.train_shots", "data.train_queries", "data.num_workers",
              "algorithm.inner.batch_size", "algorithm.eval_inner.batch_size"}  # fmt: skip
# Config groups and members a fuzz case may select (plus non-members); the others need data or the network.
GROUPS = {
    "algorithm": ["maml", "fomaml", "reptile", "imaml", "metasgd", "gradient_combination", "mam1", ""],
    "model": ["mlp", "conv4", "conv4_rgb", "mlp2", "../mlp"],
    "callbacks": ["default", "early_stopping", "lr_monitor", "none_such"],
    "debug": ["default", "limit", "fdr", "nope"],
    "logger": ["csv", "none", "tensorboard", "csvv"],
    "experiment": ["maml_sinusoid", "no_experiment"],
    "data_algorithm": ["sinusoid_maml", "sinusoid_reptile_x"],
}


def _keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        child = node._get_node(key)
        if OmegaConf.is_dict(child):
            keys += _keys(child, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


KEYS = sorted(k for k in _keys(load_config(["data=sinusoid"])) if k not in SKIPPED)
COUNTS = {"cases": 0, "refused": 0, "ran": 0}


def _report() -> None:
    if COUNTS["cases"]:
        print(f"CLI fuzz: {COUNTS['cases']} cases, {COUNTS['refused']} refused, {COUNTS['ran']} ran",
              file=sys.__stdout__)  # fmt: skip


atexit.register(_report)

NUMBERS = st.sampled_from([0, -1, -7, 1, 2, 0.5, -0.5, 1e-9, 10**12, 2**63, 1e308, "nan", "inf", "-inf"])
WRONG = st.sampled_from(["abc", "true", "false", "null", "''", '""', "[]", "{}", "[1,2]", "{a: 1}", "[[1]]", "0x10",
                         "1_000", "🙂", " ", "a b", "'quoted'", '"x"'])  # fmt: skip
FRAGMENTS = st.sampled_from(["[1,", "{a:", "${x}", "${data.ways}", "${oc.env:NOPE}", "'", '"', "]", "}", "=", "a=b",
                             "${", "\\", "[1,2]]", ",", "${now:}", "1,2", "range(1,3)"])  # fmt: skip


@st.composite
def value_for(draw, key: str) -> str:
    kind = draw(st.sampled_from(["number", "wrong", "fragment"]))
    if kind == "fragment":
        return draw(FRAGMENTS)
    if kind == "wrong":
        return draw(WRONG)
    value = draw(NUMBERS)
    if key in SMALL_ONLY and isinstance(value, (int, float)) and value > 3:
        value = 3
    return str(value)


@st.composite
def override(draw) -> str:
    shape = draw(st.sampled_from(["set", "set", "set", "add", "remove", "group", "bare", "unknown"]))
    if shape == "group":
        group = draw(st.sampled_from(sorted(GROUPS)))
        return f"{group}={draw(st.sampled_from(GROUPS[group]))}"
    if shape == "unknown":
        return f"{draw(st.sampled_from(['data.way', 'sed', 'trainer.max_step', 'x.y.z', '']))}={draw(NUMBERS)}"
    key = draw(st.sampled_from(KEYS))
    if shape == "remove":
        return f"~{key}"
    if shape == "bare":
        return key
    value = draw(value_for(key))
    return f"+{key}={value}" if shape == "add" else f"{key}={value}"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def check_case(overrides: list[str], out: Path) -> None:
    """Run train.py's main on the overrides; exit 0, or one `error:` line, exit 2, no traceback, nothing written."""
    err, sink = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(sink):
        code = train_main([*overrides, *SHRUNK, f"output_dir={out}"])
    text = err.getvalue()
    COUNTS["cases"] += 1
    assert "Traceback" not in text, (overrides, text[-3000:])
    if code == 0:
        COUNTS["ran"] += 1
        return
    COUNTS["refused"] += 1
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, (overrides, code, text[-3000:])
    assert _files(out.parent) == [], (overrides, lines[0], _files(out.parent))


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(overrides=st.lists(override(), min_size=1, max_size=3), dry=st.booleans())
def test_train_cli_fuzz(overrides, dry, tmp_path_factory):
    """Random override lists; `dry` cases stop after composing and checking the config (`--cfg job`)."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    check_case([*overrides, *(["--cfg", "job"] if dry else [])], out)
