"""An installed wheel stands on its own: it carries configs/ (as lightning_meta/configs/), the Hydra plugins and the
demo's checkpoint, and its console scripts train, evaluate and serve from a folder that is not the checkout.

The wheel is built from a copy of the project's files (building in the checkout writes build/ there, and a stale
build/lib can slip files into the wheel) and installed, without its dependencies, into a fresh virtual environment
whose only way to this interpreter's packages is a `.pth` line naming its site-packages: a path line, so the `.pth`
files there (the editable install's finder among them) are not run, and the checkout's code cannot leak in."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "lightning-meta-train": "lightning_meta.run:main",
    "lightning-meta-eval": "lightning_meta.evaluate:main",
    "lightning-meta-demo": "lightning_meta.demo.server:main",
}
SHIPPED = (
    "lightning_meta/configs/train.yaml",
    "lightning_meta/configs/experiment/maml_sinusoid.yaml",
    "lightning_meta/demo/omniglot_5way.ckpt",
    "hydra_plugins/lightning_meta/__init__.py",
)
# Without git: what the copy leaves out (at the top level, and anywhere).
NOT_SOURCE_TOP = {".git", ".venv", "data", "build", "dist", "outputs", "multirun", "lightning_logs"}
NOT_SOURCE = {"__pycache__", ".pytest_cache", ".ruff_cache"}
# A sine run shrunk to seconds, its logs in CSV (nothing to import but the package and its dependencies).
SINES = [
    "data=sinusoid", "model.hidden=[8,8]", "trainer.max_steps=2", "trainer.val_check_interval=1",
    "data.val_episodes=2", "data.test_episodes=2", "data.eval_batch_size=2", "data.meta_batch_size=2",
    "trainer.enable_progress_bar=false", "logger=csv",
]  # fmt: skip


def source_files() -> list[Path]:
    """The project's files relative to the checkout: what git tracks or would add, else a walk that skips outputs,
    environments and caches."""
    if shutil.which("git") and (REPO / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
        return sorted({Path(name) for name in listed.split("\0") if name and (REPO / name).is_file()})
    return sorted(
        path.relative_to(REPO) for path in REPO.rglob("*")
        if path.is_file() and path.relative_to(REPO).parts[0] not in NOT_SOURCE_TOP
        and not NOT_SOURCE & set(path.parts) and not any(part.endswith(".egg-info") for part in path.parts)
    )  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would point a child interpreter at the checkout or at this environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
         str(src)],
        check=True, capture_output=True, text=True, env=clean_env(),
    )  # fmt: skip
    (built,) = (tmp / "dist").glob("lightning_meta-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel; this interpreter's site-packages serve its dependencies."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, env=clean_env(),
    )  # fmt: skip
    # After the install, so that pip sees an empty environment (not this one's editable lightning_meta).
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True, env=clean_env(),
    ).stdout.strip()  # fmt: skip
    outer = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(site) / "_outer_site_packages.pth").write_text("".join(f"{path}\n" for path in outer))
    return env_dir


def run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=clean_env(), timeout=timeout)


def test_wheel_carries_configs_plugins_checkpoint_and_scripts(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    configs = {f"lightning_meta/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")}
    assert sorted(configs - names) == [], "configs/ files missing from the wheel"
    assert not any(name.startswith(("configs/", "hydra_plugins/__init__")) for name in names)
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in scripts


def test_installed_wheel_is_what_runs(installed, tmp_path):
    """The fresh environment imports the wheel's package, plugins and configs, none of the checkout's."""
    probe = (
        "import json, lightning_meta, hydra_plugins.lightning_meta as plugins; from pathlib import Path\n"
        "from lightning_meta.config import CONFIG_DIR\n"
        "print(json.dumps([lightning_meta.__file__, plugins.__file__, str(CONFIG_DIR),\n"
        "                  (Path(lightning_meta.__file__).parent / 'configs' / 'train.yaml').is_file()]))"
    )
    done = run([installed / "bin" / "python", "-c", probe], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    package, plugins, config_dir, has_train_yaml = json.loads(done.stdout.splitlines()[-1])
    root = installed.resolve()
    for path in (package, plugins, config_dir):
        assert Path(path).resolve().is_relative_to(root), f"{path} is not the installed wheel's (under {root})"
    assert has_train_yaml


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_console_scripts_answer_help(installed, script, tmp_path):
    done = run([installed / "bin" / script, "--help"], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, f"{script} --help: exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_console_script_trains_a_sine_run(installed, tmp_path):
    work, out = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    done = run([installed / "bin" / "lightning-meta-train", *SINES, f"output_dir={out}"], cwd=work)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert (out / "config.yaml").is_file()
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert math.isfinite(metrics["test/mse"])
