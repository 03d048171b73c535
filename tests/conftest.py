"""Test tiers. Every test module belongs to one tier, marked on each of its tests (``-m unit|integration|e2e``):

* ``unit``: pure functions and small objects; no verl process, no subprocess (seconds).
* ``integration``: real verl objects in this process, or subprocesses that compose / validate the recipe with
  ``--cfg job`` (tens of seconds each); nothing trains.
* ``e2e``: launches of verl's real trainers on CPU (the recipe, the SFT trainer, the benchmarks; minutes each).

``make test`` runs all three (CI's command); ``make test-fast`` runs ``-m "not e2e"``. A new test module must be
added to :data:`TIERS` (collection fails otherwise), so no test is left out of a tier.

Shared helpers, one home each (imported by the modules as ``from conftest import ...``, or as fixtures of the
same names): :func:`compose_recipe` (the recipe's hydra config in this process), :func:`run_launcher` (a
``scripts/*.sh`` launcher in a subprocess, ``--cfg job`` by default), and the session-wide tiny assets
``tiny_tokenizer`` / ``tiny_model_dir``. The core functions' knobs as production passes them: ``config_defaults.py``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipe" / "prefix_rft" / "config"
#: launcher variables a developer's shell may have set; a test sets what it means explicitly
LAUNCHER_ENV = (
    "EXP_NAME",
    "CKPT_DIR",
    "NNODES",
    "MAX_CKPT_TO_KEEP",
    "SFT_EXP_NAME",
    "SFT_CKPT_DIR",
    "SFT_HF_DIR",
    "MODEL_PATH",
    "RL",
)


def compose_recipe(*overrides: str, config_name: str = "prefix_rft_trainer"):
    """The recipe's config (``recipe/prefix_rft/config``) composed by hydra with ``overrides``, in this process.

    What hydra's compose does, in two parts: the defaults list (the config-group overrides, e.g.
    ``+preset=rft``) is composed once per process and cached (~0.3 s each; the tests ask for the same ones
    hundreds of times), then the value overrides (``a.b=v``, ``+a.b=v``, ``++a.b=v``, ``~a.b``) are applied to a
    copy by hydra's own ``ConfigLoaderImpl._apply_overrides_to_config``, the step hydra runs after composing the
    defaults. ``test_recipe_config.py`` checks the result equals a full composition. Each call gets its own copy,
    free to change."""
    groups, values = _split_overrides(overrides)
    cfg = copy.deepcopy(_composed(groups, config_name))
    if values:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg


def compose_recipe_with_hydra(*overrides: str, config_name: str = "prefix_rft_trainer"):
    """The recipe's config composed by hydra's compose API with every override, nothing cached."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def _split_overrides(overrides: tuple[str, ...]) -> tuple[tuple[str, ...], list]:
    """``overrides`` -> (the ones that select configs, as given; the parsed value overrides, in order).

    Hydra applies config-group overrides to the defaults list and every other override, in command-line order,
    to the composed config. A dotted key (``a.b``) is always a value; a top-level name is a group when it names a
    config group folder (``preset``, verl's ``actor``...) with a plain value, or carries a ``@package``. Anything
    else undotted (``trainer={...}``, ``+newkey=1``) is a value whose order against the dotted ones matters:
    then every override goes to hydra's compose at once (``([all overrides], [])``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups, values = [], []
    parsed_overrides = OverridesParser.create().parse_overrides(list(overrides))
    for line, parsed in zip(overrides, parsed_overrides, strict=True):
        key = parsed.key_or_group
        if "." in key and "/" not in key and not key.startswith("hydra.") and parsed.package is None:
            values.append(parsed)
        elif parsed.package is not None or "/" in key or key.startswith("hydra"):
            groups.append(line)
        elif key in _config_groups() and isinstance(parsed.value(), str):
            groups.append(line)
        else:
            return tuple(overrides), []
    return tuple(groups), values


@functools.cache
def _config_groups() -> frozenset[str]:
    """Top-level config group names: the folders of the recipe's config and of verl's (found, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("verl")
    roots = [CONFIG_DIR]
    if spec is not None and spec.submodule_search_locations:
        roots.append(Path(spec.submodule_search_locations[0]) / "trainer" / "config")
    return frozenset(
        p.name
        for root in roots
        if root.is_dir()
        for p in root.iterdir()
        if p.is_dir() and p.name != "__pycache__"
    )


@functools.cache
def _composed(overrides: tuple[str, ...], config_name: str):
    return compose_recipe_with_hydra(*overrides, config_name=config_name)


def _repo_on_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` (changed in place, returned) with the repository first on ``PYTHONPATH``."""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_launcher(
    script: str,
    *args: str,
    cwd: str | os.PathLike = ROOT,
    cfg_job: bool = True,
    timeout: float = 600,
    **env_extra: str,
) -> subprocess.CompletedProcess:
    """``bash scripts/<script> args... [--cfg job]`` with this interpreter as ``PYTHON``, the repository on
    ``PYTHONPATH``, :data:`LAUNCHER_ENV` cleared and ``env_extra`` set; output captured."""
    env = dict(os.environ, PYTHON=sys.executable, HOME=os.environ.get("HOME", "/tmp"))
    for key in LAUNCHER_ENV:
        env.pop(key, None)
    _repo_on_path(env)
    env.update(env_extra)
    cmd = ["bash", str(ROOT / "scripts" / script), *args, *(["--cfg", "job"] if cfg_job else [])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


#: ``RESULT <name>=<value>``: one figure a line, what every benchmark entry point ends with.
RESULT_LINE = re.compile(r"^RESULT ([A-Za-z0-9_]+)=(\S+)$", re.MULTILINE)


def parse_results(stdout: str) -> dict[str, float]:
    """``RESULT name=value`` lines -> {name: value}; a name printed twice is an error."""
    out: dict[str, float] = {}
    for name, value in RESULT_LINE.findall(stdout):
        assert name not in out, f"RESULT {name} printed twice"
        out[name] = float(value)
    return out


def run_benchmark(cmd: list[str], timeout_s: float) -> str:
    """Run a benchmark entry point from the repository root as a user runs it, the repository on ``PYTHONPATH``;
    returns its stdout. Fails the test, with the output's tail, when it exits non-zero or runs past
    ``timeout_s`` (its own process group: the trainers and Ray processes it started are stopped with it)."""
    env = _repo_on_path(
        dict(os.environ, PY=sys.executable)
    )  # scripts/bench_e2e_cpu.sh runs "$PY -m benchmarks.e2e"
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                stdout, stderr = proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        pytest.fail(f"{' '.join(cmd)} ran over {timeout_s}s:\n{(stdout + stderr)[-4000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{(stdout + stderr)[-4000:]}"
    return stdout


@pytest.fixture(name="compose_recipe")
def _compose_recipe_fixture():
    return compose_recipe


@pytest.fixture(name="run_launcher")
def _run_launcher_fixture():
    return run_launcher


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny chat tokenizer (:func:`benchmarks.fixtures.tiny.build_tiny_tokenizer`), built once per session."""
    from benchmarks.fixtures.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny Qwen2 + tokenizer saved once per session (seed 0, :func:`benchmarks.fixtures.tiny.build_tiny_model`).
    Read-only for the tests that share it."""
    from benchmarks.fixtures.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_model") / "model"), seed=0)


TIERS: dict[str, tuple[str, ...]] = {
    "unit": (
        "test_ablation_core",
        "test_checkpoint",
        "test_arith_task",
        "test_core_advantage_entropy",
        "test_core_config_isolation",
        "test_core_loss",
        "test_core_schedule_splice",
        "test_data",
        "test_doc_citations",
        "test_eval",
        "test_plot",
        "test_reward",
        "test_sft_data",
    ),
    "integration": (
        "test_actor_loss",
        "test_agent_loop",
        "test_cpu_demo_cli",
        "test_cpu_platform",
        "test_cpu_rollout",
        "test_guidance",
        "test_install",
        "test_launcher_defaults",
        "test_learning_bench",
        "test_launch_slots",
        "test_packaging",
        "test_presets",
        "test_recipe_config",
        "test_reference_parity",
        "test_sft_launchers",
        "test_smoke",
        "test_trainer_integration",
        "test_upstream_export",
        "test_verl_patches",
        "test_vllm_cpu_overrides",
    ),
    "e2e": (
        "test_benchmarks",
        "test_e2e_cpu",
        "test_guidance_e2e",
        "test_learning_cpu",
        "test_sft_cpu",
    ),
}
TIER_OF = {module: tier for tier, modules in TIERS.items() for module in modules}


#: Trainer launches at once in a test session, across its pytest workers (:func:`benchmarks.launch.launch_slot`):
#: the learning check's runs (two at a time), or two single launches; never a third beside them (on 2 cores it
#: starved Ray's start-up past its 30 s node-registration timeout). ``BENCH_LAUNCH_SLOTS`` in the environment wins
#: (0: no cap).
LAUNCH_SLOTS = 2


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: a test of the {tier} tier (tests/conftest.py)")
    if not hasattr(config, "workerinput"):  # the main process: its pytest workers inherit the environment
        from benchmarks.launch import LAUNCH_LOCK_DIR_ENV, LAUNCH_SLOTS_ENV

        os.environ.setdefault(LAUNCH_SLOTS_ENV, str(LAUNCH_SLOTS))
        # Two workers, each on torch's default intra-op threads (one per core), share the cores: OpenMP's default
        # spin-wait burns the core the other worker needs. Measured on the learning base model's build (2 threads)
        # beside two busy processes: 129 s spinning, 62 s passive (203 s inside make test); no result changes.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if LAUNCH_LOCK_DIR_ENV not in os.environ:
            lock_dir = tempfile.mkdtemp(prefix="prefix-rft-launch-slots-")
            os.environ[LAUNCH_LOCK_DIR_ENV] = lock_dir
            config.add_cleanup(lambda: shutil.rmtree(lock_dir, ignore_errors=True))


#: The order ``make test`` hands out its work units (``-n 2``, one pytest worker per core; a unit is a module, its
#: module fixtures built once, or one of :data:`OWN_UNITS`). Each worker holds about one running and one queued
#: unit (xdist tops a worker up when it has two or fewer tests left), and at most :data:`LAUNCH_SLOTS` trainers run
#: at once. So: the learning test (three trainers two at a time, 4.7 min alone) on one worker, with
#: the guidance e2e test queued behind it there; the integration modules, heaviest first, then the rest (``"*"``:
#: every module not named, in collection order) on the other; then the single-trainer e2e units on both. A 2-step
#: trainer launch costs ~50 CPU-s on these 2 cores, most of it Ray and verl start-up.
SCHEDULE = (
    "test_learning_cpu",
    "test_recipe_config",
    "test_guidance_e2e",
    "test_presets",
    "test_sft_launchers",
    "test_trainer_integration",
    "test_reward",
    "test_cpu_platform",
    "test_cpu_rollout",
    "test_verl_patches",
    "test_reference_parity",
    "test_launcher_defaults",
    "test_install",
    "test_data",
    "test_upstream_export",
    "test_plot",
    "*",
    "test_benchmarks.py::test_quick_benchmark_prints_every_figure[bench_e2e_cpu]",
    "test_e2e_cpu",
    "test_sft_cpu",
)
#: Tests that are a work unit of their own (each launches its own trainers); the rest of their module is one unit.
OWN_UNITS = tuple(key for key in SCHEDULE if "::" in key)


def _unit(nodeid: str) -> str:
    """The work unit of a test: its module, or the test itself when it is one of :data:`OWN_UNITS`."""
    module = nodeid.split("::", 1)[0]
    return nodeid if any(nodeid == f"tests/{key}" for key in OWN_UNITS) else module


def _rank(nodeid: str) -> int:
    """Position of a test's unit in :data:`SCHEDULE` (``"*"``'s for a module not named there)."""
    for i, key in enumerate(SCHEDULE):
        if nodeid == f"tests/{key}" or ("::" not in key and nodeid.startswith(f"tests/{key}.py::")):
            return i
    return SCHEDULE.index("*")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown (and unused) without it
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``make test``'s work units (``-n 2``): :func:`_unit`, handed out in collection order
    (``--no-loadscope-reorder``: :data:`SCHEDULE`'s order, set by :func:`pytest_collection_modifyitems`)."""
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unclassified = set()
    for item in items:
        module = Path(str(item.fspath)).stem
        tier = TIER_OF.get(module)
        if tier is None:
            unclassified.add(module)
            continue
        item.add_marker(getattr(pytest.mark, tier))
    if unclassified:
        raise pytest.UsageError(
            f"test modules without a tier: {sorted(unclassified)}; add each to TIERS in tests/conftest.py"
        )
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (_rank(item.nodeid), order[id(item)]))
