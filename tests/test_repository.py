"""The repository stands on its own and says each fact once: no file points at a path outside it, and the package's
code states rules and reasons while the measured figures live in docs/performance.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# CI's script is the one place that names where the machine keeps its data; this file names the patterns it bans.
EXEMPT = (".ci/", "tests/test_repository.py")
OUTSIDE = {
    "a sibling folder of the repository": re.compile(r"\.\./shared\b"),
    "an absolute path on one machine": re.compile(r"(?<![\w.~-])/work/"),
    "a note outside the repository; the project's is docs/architecture.md": re.compile(r"\bARCHITECTURE\.md"),
    "a home folder": re.compile(r"(?<![\w.~-])(/home/[\w.-]+|/Users/[\w.-]+|/root/)"),
}
# A timing in the package's code: "12 ms", "990 -> 733", "2.9x faster".
FIGURE = re.compile(r"\b\d+(\.\d+)?\s*ms\b|\b\d+(\.\d+)? -> \d+|\b\d+(\.\d+)?[x×](?!\w)")


def project_files() -> list[str]:
    """Tracked files and new ones git does not ignore, relative to the repository root, that exist on disk."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the project's files are what `git ls-files` lists")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    return sorted({name for name in listed.split("\0") if name and (REPO / name).is_file()})


def text_of(name: str) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = (REPO / name).read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def where(name: str, text: str, match: re.Match) -> str:
    """`file:line: matched text` of a match, its whitespace folded onto one line."""
    return f"{name}:{text.count(chr(10), 0, match.start()) + 1}: {' '.join(match.group(0).split())}"


def test_no_file_refers_to_a_path_outside_the_repository():
    found = []
    for name in project_files():
        text = None if name.startswith(EXEMPT) else text_of(name)
        if text is None:
            continue
        for what, pattern in OUTSIDE.items():
            found += [f"{where(name, text, m)} ({what})" for m in pattern.finditer(text)]
    assert not found, (
        "paths outside the repository (refer to repository files, or to a setting such as an environment variable):\n"
        + "\n".join(found)
    )


def test_package_code_carries_no_timing_figures():
    found = []
    for name in project_files():
        if name.startswith("lightning_meta/") and name.endswith(".py"):
            text = text_of(name) or ""
            found += [where(name, text, m) for m in FIGURE.finditer(text)]
    assert not found, (
        "timing figures in lightning_meta/ (keep the rule and the reason in the code, name the benchmark command, and "
        "move the figures to docs/performance.md):\n" + "\n".join(found)
    )
