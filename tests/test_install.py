"""The installed package is the library alone: a non-editable wheel holds ``prefix_rft`` (the paper's core, its
verl glue, the reward, config and the data / eval / plot tools) and nothing of the repository's other rooms
(the CPU backend ``verl_cpu``, ``benchmarks``, tests), and every public module imports from the installed copy
with the repository nowhere on the path (nothing resolves a repository path at import time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what the wheel is built from: the tracked tree, less what a checkout accumulates
SKIP = shutil.ignore_patterns(
    ".git", ".venv*", "outputs", "results", "__pycache__", ".hypothesis", "*.egg-info", "build", ".ruff_cache"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this repository, built without build isolation (no index needed) from a copy of the tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (built,) = tmp.glob("prefix_rft-*.whl")
    return built


def test_wheel_holds_the_library_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"prefix_rft"}, top
    modules = {n for n in names if n.endswith(".py")}
    for room in (
        "prefix_rft/core/loss.py",
        "prefix_rft/trainer.py",
        "prefix_rft/data/train.py",
        "prefix_rft/eval.py",
    ):
        assert room in modules
    # the rooms that moved out of the library stay out
    assert not [n for n in modules if n.startswith(("prefix_rft/cpu/", "prefix_rft/testing/"))]
    assert "prefix_rft/smoke.py" not in modules and "prefix_rft/presets.py" not in modules


def test_every_public_module_imports_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    probe = f"""
import importlib, json, pkgutil, sys
sys.path.insert(0, {str(site)!r})
import prefix_rft
assert prefix_rft.__file__.startswith({str(site)!r}), prefix_rft.__file__
names = [m.name for m in pkgutil.walk_packages(prefix_rft.__path__, "prefix_rft.")
         if not m.name.rsplit(".", 1)[-1].startswith("_")]
for name in names:
    importlib.import_module(name)
# nothing of the repository's other rooms came along with an import
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("benchmarks", "verl_cpu", "recipe", "tests"))
print(json.dumps({{"modules": names, "leaked": leaked,
                   "files": sorted({{m.__file__ for m in map(sys.modules.get, names)}})}}))
"""
    # cwd outside the repository, and no PYTHONPATH: the repository is nowhere on the path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert {
        "prefix_rft.trainer",
        "prefix_rft.core.guidance",
        "prefix_rft.data.eval_sets",
        "prefix_rft.plot",
    } <= set(report["modules"])
    assert report["leaked"] == []
    assert all(f.startswith(str(site)) for f in report["files"]), report["files"]


def _imported_modules(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("verl_cpu", ("prefix_rft", "benchmarks", "recipe")),  # a CPU backend for any verl trainer
        ("prefix_rft", ("verl_cpu", "benchmarks", "tests", "conftest")),  # the library imports no other room
    ],
)
def test_rooms_import_only_what_they_may(room, forbidden):
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / room).rglob("*.py"))
        for name in _imported_modules(path)
        if name.split(".")[0] in forbidden
    }
    assert not offenders, sorted(offenders)
