"""`make upstream` (scripts/export_upstream.py): the exported verl-recipe folder stands alone.

The folder is written into a temporary verl-recipe-like tree (``tmp/recipe/prefix_rft/``; verl-recipe has no
top-level ``__init__.py``, and verl's wheel installs a ``recipe`` namespace of its own) and composed there with
``python -m recipe.prefix_rft.main_prefix_rft --cfg job``, with this repository off the path and ``prefix_rft``
made unimportable: a module of that name first on ``PYTHONPATH`` raises on import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import export_upstream as exporter  # noqa: E402

BLOCKED = "prefix_rft is blocked: the exported recipe must not import the repository's package"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """``tmp/recipe/prefix_rft/`` (the export) and ``tmp/block/prefix_rft.py`` (the import blocker)."""
    tmp = tmp_path_factory.mktemp("verl_recipe_parent")
    exporter.export(tmp / "recipe")
    (tmp / "block").mkdir()
    (tmp / "block" / "prefix_rft.py").write_text(f"raise ImportError({BLOCKED!r})\n")
    return tmp


def _run(tree: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(tree / "block"), PYTHON=sys.executable, HOME=os.environ.get("HOME", "/tmp"))
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600, cwd=cwd or tree, env=env)


def test_the_export_holds_library_recipe_launchers_and_pin(tree):
    folder = tree / "recipe" / "prefix_rft"
    assert not (tree / "recipe" / "__init__.py").exists()  # as verl-recipe
    for rel in (
        "__init__.py",
        "main_prefix_rft.py",
        "plugin.py",
        "trainer.py",
        "core/loss.py",
        "data/__main__.py",
    ):
        assert (folder / rel).is_file(), rel
    assert (folder / "config" / "prefix_rft_trainer.yaml").is_file() and (
        folder / "config" / "preset"
    ).is_dir()
    for left_out in exporter.EXCLUDED:
        assert not (folder / left_out).exists(), left_out
    assert (folder / "run_prefix_rft_qwen7b.sh").is_file() and (folder / "_prefix_rft_common.sh").is_file()
    # every launcher comes along, the ablation launcher with the presets tool it runs
    launchers = {p.name for p in (exporter.SCRIPTS).glob(exporter.LAUNCHER_GLOB)}
    assert launchers <= {p.name for p in folder.glob("*.sh")}, launchers
    assert (folder / "presets.py").is_file() and "run_ablation_qwen7b.sh" in launchers
    assert exporter.check_export(folder) == []
    pin = dict(
        line.split("=", 1)
        for line in (folder / "REQUIRED_VERL.txt").read_text().splitlines()
        if "=" in line[:20]
    )
    assert (pin["MODE"], pin["TAG"], pin["RECIPE_FOLDER"]) == ("pinned_tag", "v0.9.1", "prefix_rft")
    assert len(pin["COMMIT"]) == 40 and "recipe.prefix_rft.plugin" in pin["NOTES"]
    readme = (folder / "README.md").read_text()
    for idea in exporter.IDEAS:
        assert f"### {idea.title}" in readme
    assert "def ratio_lower_bound(" in readme and "def group_advantage(" in readme
    assert "def select_demo_tokens(" in readme and "def aggregate(" in readme and "| `luffy` |" in readme


def test_python_m_composes_the_exported_recipe_without_the_package(tree):
    where = _run(
        tree,
        sys.executable,
        "-c",
        "import recipe, recipe.prefix_rft.main_prefix_rft as m, importlib.util as u;"
        "print(m.__file__); print(list(recipe.__path__)); print(u.find_spec('prefix_rft').origin)",
    )
    assert where.returncode == 0, where.stderr[-3000:]
    main_file, namespace, blocker = where.stdout.splitlines()
    assert Path(main_file) == tree / "recipe" / "prefix_rft" / "main_prefix_rft.py"
    assert "site-packages" in namespace  # verl's own `recipe` namespace is there too: the export wins
    assert Path(blocker) == tree / "block" / "prefix_rft.py"

    out = _run(
        tree,
        sys.executable,
        "-m",
        "recipe.prefix_rft.main_prefix_rft",
        "--cfg",
        "job",
        "trainer.nnodes=2",
        "prefix_rft.entropy_clip.top_ratio=0.5",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = OmegaConf.create(yaml.safe_load(out.stdout))
    assert cfg.algorithm.adv_estimator == "prefix_rft"
    assert cfg.actor_rollout_ref.model.external_lib == "recipe.prefix_rft.plugin"
    assert cfg.reward.custom_reward_function.path == "pkg://recipe.prefix_rft.reward"
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "prefix_rft_agent"
    assert (cfg.trainer.nnodes, cfg.prefix_rft.entropy_clip.top_ratio, cfg.prefix_rft.num_prefixed) == (
        2,
        0.5,
        1,
    )
    assert cfg.prefix_rft.ratio.schedule == "cosine" and cfg.prefix_rft.advantage.mode == "group"


def test_an_exported_launcher_runs_the_exported_entry_point(tree, tmp_path):
    out = _run(
        tree, "bash", str(tree / "recipe" / "prefix_rft" / "run_rft_qwen7b.sh"), "--cfg", "job", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "-m recipe.prefix_rft.main_prefix_rft" in out.stderr  # the traced command line
    cfg = OmegaConf.create(yaml.safe_load(out.stdout))
    assert (cfg.prefix_rft.num_prefixed, cfg.trainer.experiment_name) == (0, "rft_qwen2.5_math_7b")
    assert cfg.actor_rollout_ref.model.external_lib == "recipe.prefix_rft.plugin"


def test_a_broken_export_fails(tree, tmp_path):
    """The blocker bites (a module left importing `prefix_rft` fails) and check_export names stale paths."""
    broken = tmp_path / "recipe" / "prefix_rft"
    shutil.copytree(tree / "recipe" / "prefix_rft", broken)
    verl_config = broken / "verl_config.py"
    verl_config.write_text(
        verl_config.read_text().replace(
            "from recipe.prefix_rft.config import", "from prefix_rft.config import"
        )
    )
    (broken / "config" / "stale.yaml").write_text(
        "external_lib: prefix_rft.plugin\nkey: prefix_rft.ratio.high\n"
    )
    (broken / "stale.py").write_text("import recipe.prefix_rft.gone\n")
    out = _run(tree, sys.executable, "-m", "recipe.prefix_rft.main_prefix_rft", "--cfg", "job", cwd=tmp_path)
    assert out.returncode != 0 and BLOCKED in out.stderr
    problems = "\n".join(exporter.check_export(broken))
    assert "verl_config.py" in problems and "imports prefix_rft.config" in problems
    assert "line 1: prefix_rft.plugin is not rewritten" in _problem(problems, "stale.yaml")
    assert "prefix_rft.ratio.high" not in problems  # a config key, not a module path
    assert "line 1: recipe.prefix_rft.gone has no module in the export" in _problem(problems, "stale.py")


def _problem(problems: str, file: str) -> str:
    """The one line of ``problems`` about ``file``."""
    (line,) = [p for p in problems.splitlines() if p.split(" line ")[0].split("/")[-1] == file]
    return line


def test_rewriting_tells_module_paths_from_config_keys():
    names = exporter._names()
    problems: list[str] = []
    text = (
        "import prefix_rft.advantage\nfrom prefix_rft.core.loss import x\n"
        'path = "pkg://prefix_rft.reward"  # see prefix_rft.advantage.prefix_rows; set prefix_rft.advantage.mode\n'
        "# ``prefix_rft.advantage`` knobs, prefix_rft.ratio.high, preset/prefix_rft.yaml\n"
    )
    assert exporter.rewrite(text, "m.py", names, problems) == (
        "import recipe.prefix_rft.advantage\nfrom recipe.prefix_rft.core.loss import x\n"
        'path = "pkg://recipe.prefix_rft.reward"  # see recipe.prefix_rft.advantage.prefix_rows; '
        "set prefix_rft.advantage.mode\n"
        "# ``prefix_rft.advantage`` knobs, prefix_rft.ratio.high, preset/prefix_rft.yaml\n"
    )
    assert problems == []
    exporter.rewrite(
        "from prefix_rft.testing.tiny import rows\nuse prefix_rft.nowhere\n", "lib", names, problems
    )
    assert len(problems) == 2
    # a module that left the package (the fixtures moved to benchmarks/) is refused like any unknown name
    assert "lib line 1: mentions prefix_rft.testing.tiny, which is neither an exported module" in problems[0]
    assert "lib line 2: mentions prefix_rft.nowhere, which is neither an exported module" in problems[1]
