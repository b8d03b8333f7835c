"""The README and the documentation site: the README stays short and its Quickstart runs as written (shrunk) and
writes the files it lists; every page is in the site's navigation and the site builds in strict mode; links,
pictures, the licence and CI's commands match what the docs say. tests/test_commands.py composes every command."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_meta.evaluate import main as eval_main
from lightning_meta.run import main as train_main

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"
MAX_README_LINES = 250


def section(title: str) -> str:
    """The README's `## title` section, up to the next `## ` heading."""
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_blocks(text: str, language: str = "bash") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_the_readme_is_read_in_five_minutes():
    lines = len(README.splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines, over {MAX_README_LINES}; move detail into docs/"


def test_the_readme_keeps_its_results_table_between_the_markers():
    results = section("Results")
    table = results.split("<!-- results:begin -->\n", 1)[1].split("<!-- results:end -->", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) >= 3 and rows[1].startswith("|---")


def test_the_readme_links_and_pictures_exist():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert "docs/index.md" in local and "LICENSE" in local
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    return [page for item in node for page in nav_pages(item)]


def test_every_page_is_in_the_site_navigation_and_every_entry_exists():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = nav_pages(config["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk
    assert len(pages) == len(set(pages))


def test_pictures_are_small_and_every_one_is_shown():
    shown = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", "".join(p.read_text() for p in DOCS.glob("*.md"))))
    pictures = {p.name for p in DOCS.glob("*.png")}
    assert pictures <= shown, f"pictures no page shows: {sorted(pictures - shown)}"
    assert {"episode_grid.png", "demo.png", "gradient_combinations.png", "search_fomaml_history.png"} <= pictures
    large = {p.name: p.stat().st_size for p in DOCS.glob("*.png") if p.stat().st_size >= 200_000}
    assert not large, f"pictures of 200 KB or more: {large}"


def test_the_license_and_the_package_description_say_what_the_readme_says():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["metadata"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 the lightning_meta authors\n")
    description = setup["metadata"]["description"]
    for name in ("Reptile", "FOMAML", "MAML", "Meta-SGD", "iMAML", "gradient combinations"):
        assert name in description
    assert {"mkdocs", "mkdocs-material", "mkdocstrings[python]"} <= {
        re.split(r"[<>=]", line.strip())[0] for line in setup["options.extras_require"]["docs"].split("\n") if line
    }


def test_ci_runs_the_readme_test_command_and_the_strict_docs_build():
    (command,) = [line for block in code_blocks(section("Tests")) for line in block.splitlines() if line]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci
    assert any(re.fullmatch(r"(\S+=\S+ )*mkdocs build --strict( --quiet)?", line) for line in ci)


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason='needs the docs extra: pip install -e ".[docs]"')
def test_the_site_builds_in_strict_mode(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "site" / "api" / "algorithms" / "index.html").read_text().count("MetaLearner") > 3
    assert (tmp_path / "site" / "evaluation" / "index.html").exists()


def quickstart() -> list[list[str]]:
    """The Quickstart's commands, as argument lists, comments dropped."""
    (block,) = code_blocks(section("Quickstart"))
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def listed_outputs() -> dict[str, str]:
    """The README's table of what a run writes: {path: what it holds}."""
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \|$", section("Quickstart"), re.M)
    return dict(rows)


def image_tags(folder: Path) -> set[str]:
    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"images": 0})
        events.Reload()
        tags |= set(events.Tags()["images"])
    return tags


def test_the_quickstart_runs_and_writes_what_the_readme_lists(shrink, tmp_path, monkeypatch, capsys):
    """Each `python train.py` of the Quickstart runs as written plus the tests' shrinking overrides (validation at
    the last of 4 meta-iterations, so that the best checkpoint is the last one), then its `python eval.py`, in a
    folder of its own; the files the README lists are there, and eval.py reproduces the run's test figure."""
    monkeypatch.chdir(tmp_path)
    shrunk = [a for a in shrink if not a.startswith("output_dir=")] + ["trainer.val_check_interval=4"]
    ran = []
    for words in quickstart():
        if words[:2] == ["python", "train.py"]:
            assert train_main([*words[2:], *shrunk]) == 0, capsys.readouterr().err
        elif words[:2] == ["python", "eval.py"]:
            capsys.readouterr()
            assert eval_main([*words[2:], next(a for a in shrink if a.startswith("data.root="))]) == 0
            printed = capsys.readouterr().out
        elif words[:2] == ["tensorboard", "--logdir"]:
            assert "test/episode" in image_tags(tmp_path / words[2] / "omniglot" / "tensorboard")
        else:
            pytest.fail(f"the Quickstart's command {shlex.join(words)} is not one this test knows how to run")
        ran.append(" ".join(words[:2]))
    assert ran == ["python train.py", "python train.py", "python eval.py", "tensorboard --logdir"]

    (smoke,) = [run for run in (tmp_path / "outputs").iterdir() if run.name != "omniglot"]  # outputs/<date>_<time>
    assert (smoke / "checkpoints" / "last.ckpt").is_file() and (smoke / "test_metrics.json").is_file()
    assert not list((smoke / "checkpoints").glob("best-*.ckpt"))  # "not by trainer.fast_dev_run"

    run = tmp_path / "outputs" / "omniglot"
    outputs = listed_outputs()
    assert {"config.yaml", ".hydra/", "checkpoints/last.ckpt", "test_metrics.json", "tensorboard/"} <= set(outputs)
    for listed in outputs:
        assert list(run.glob(listed.replace("<step>", "*").rstrip("/"))), f"the README lists {listed}; not written"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert set(re.findall(r"`(test/\w+)`", outputs["test_metrics.json"])) <= set(metrics)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/episodes"] == 4

    (report,) = run.glob("eval_*.json")  # "eval.py adds eval_<checkpoint>_<protocol>.json"
    assert json.loads(report.read_text())["metrics"]["test/acc"] == metrics["test/acc"]
    assert re.search(rf"^test/acc = {100 * metrics['test/acc']:.2f} ± [\d.]+ % \(4 episodes, ", printed, re.M)
    assert re.search(rf"^wrote \S*{re.escape(report.name)}$", printed, re.M)
