"""Launch verl's real trainer (the Prefix-RFT recipe) on a CPU-only machine, and read back its metrics.

Used by ``scripts/cpu_demo.py`` (``make demo``), ``tests/test_e2e_cpu.py`` and ``scripts/bench_e2e_cpu.sh``.
Nothing here changes the algorithm: it builds tiny local assets, adds the CPU hardware overrides to the
recipe's own config (``recipe/prefix_rft/config/prefix_rft_trainer.yaml``) and runs
``recipe/prefix_rft/main_prefix_rft.py`` in a subprocess with the CPU backend's environment and overrides
(:mod:`verl_cpu.overrides`).

Metrics come from verl's own ``file`` logger (``trainer.logger=[console,file]``, one JSON line per step at
``VERL_FILE_LOGGER_PATH``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from verl_cpu.overrides import (  # noqa: F401  (re-exported: the harness's one import for CPU settings)
    CPU_ENV,
    CPU_OVERRIDES,
    VLLM_CPU_ENV,
    VLLM_CPU_OVERRIDES,
    cpu_overrides,
)
from verl_cpu.overrides import cpu_env as _verl_cpu_env

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO_ROOT / "recipe" / "prefix_rft"
RECIPE_MAIN = RECIPE_DIR / "main_prefix_rft.py"


def recipe_presets() -> types.ModuleType:
    """The recipe's preset tool, ``recipe/prefix_rft/presets.py``, loaded from its file (verl's wheel installs an
    unrelated top-level ``recipe`` package, so it is not imported by name)."""
    module = sys.modules.get("prefix_rft_recipe_presets")
    if module is None:
        spec = importlib.util.spec_from_file_location("prefix_rft_recipe_presets", RECIPE_DIR / "presets.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


#: The recipe's own environment on top of the CPU backend's: one math-verify subprocess per reward worker
#: (``prefix_rft.reward.POOL_SIZE``).
RECIPE_ENV = {"PREFIX_RFT_REWARD_WORKERS": "1"}


def cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """:func:`verl_cpu.overrides.cpu_env` plus :data:`RECIPE_ENV`; ``PYTHONPATH`` gets the repository root (the
    CPU backend and the benchmark modules are imported from it in every process)."""
    env = _verl_cpu_env(base)
    env.update(RECIPE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


#: The launch cap: at most ``$BENCH_LAUNCH_SLOTS`` trainer launches (:func:`run_recipe`, the SFT runs of
#: :mod:`benchmarks.sft`) at a time among all processes that share the folder ``$BENCH_LAUNCH_LOCK_DIR``, threads
#: included; both unset (the default): no cap. ``make test`` sets them (tests/conftest.py): on 2 cores a third
#: launch beside two running ones can starve Ray's start-up past its fixed 30 s node-registration timeout.
LAUNCH_SLOTS_ENV = "BENCH_LAUNCH_SLOTS"
LAUNCH_LOCK_DIR_ENV = "BENCH_LAUNCH_LOCK_DIR"


@contextlib.contextmanager
def launch_slot(env: dict[str, str] | None = None) -> Iterator[None]:
    """Hold one of the :data:`LAUNCH_SLOTS_ENV` slots (a ``flock`` on ``slot-<i>.lock`` in
    :data:`LAUNCH_LOCK_DIR_ENV`) for the ``with`` body, waiting for a free one; released on exit, also when the
    holder dies. A no-op unless both variables are set in ``env`` (default: this process' environment)."""
    env = os.environ if env is None else env
    try:
        slots, lock_dir = int(env.get(LAUNCH_SLOTS_ENV) or 0), env.get(LAUNCH_LOCK_DIR_ENV)
    except ValueError:
        raise ValueError(
            f"{LAUNCH_SLOTS_ENV}={env.get(LAUNCH_SLOTS_ENV)!r}: expected a whole number of launches (0: no cap)"
        ) from None
    if slots <= 0 or not lock_dir:
        yield
        return
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    while True:
        for i in range(slots):
            # one open file per holder: threads of one process exclude each other too
            handle = open(Path(lock_dir) / f"slot-{i}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            except BaseException:
                handle.close()
                raise
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(0.5)


@dataclass
class DemoAssets:
    """Paths of the tiny model and the synthetic-math parquet files."""

    model: str
    train: str
    val: str


def build_demo_assets(
    out_dir: str | os.PathLike,
    n_train: int = 64,
    n_val: int = 16,
    seed: int = 0,
    val_with_demos: bool = False,
    hidden_size: int = 64,
) -> DemoAssets:
    """Write a tiny Qwen2 + tokenizer and train/val parquet files of the synthetic math task under ``out_dir``.

    ``val_with_demos`` gives the validation rows a ``demonstrations`` column too (their
    ``extra_info.split`` stays ``"test"``): a check that validation never gets a demo prefix.
    ``hidden_size`` sets the model's width (4 attention heads): vLLM's CPU attention needs a head size of at
    least 32, so the vLLM runs use 128.
    """
    from benchmarks.fixtures.tiny import build_tiny_model, synthetic_math_rows, write_parquet

    out = Path(out_dir)
    model = build_tiny_model(str(out / "model"), seed=seed, hidden_size=hidden_size)
    train_rows = synthetic_math_rows(n_train, seed=seed, split="train")
    if val_with_demos:
        val_rows = synthetic_math_rows(n_val, seed=seed + 1, split="train")
        for i, row in enumerate(val_rows):
            row["extra_info"] = {"index": i, "split": "test"}
    else:
        val_rows = synthetic_math_rows(n_val, seed=seed, split="test")
    train = write_parquet(train_rows, str(out / "data" / "train.parquet"))
    val = write_parquet(val_rows, str(out / "data" / "val.parquet"))
    return DemoAssets(model=model, train=train, val=val)


def demo_overrides(
    assets: DemoAssets,
    *,
    steps: int,
    ckpt_dir: str | os.PathLike,
    batch_size: int = 4,
    rollout_n: int = 4,
    mini_batch_size: int = 2,
    max_response_length: int = 48,
    save_freq: int | None = None,
    test_freq: int | None = None,
    lr: float = 1e-3,
    experiment_name: str = "cpu_demo",
    seed: int = 0,
) -> list[str]:
    """Overrides that size the recipe for the tiny model (on top of :data:`CPU_OVERRIDES`).

    The prefix-ratio lower bound decays over the run (``prefix_rft.ratio.decay_steps=steps``) so the
    schedule is visible in a few steps; everything else is the recipe's default.
    """
    save_freq = steps if save_freq is None else save_freq
    test_freq = steps if test_freq is None else test_freq
    return [
        f"data.train_files={assets.train}",
        f"data.val_files={assets.val}",
        f"data.train_batch_size={batch_size}",
        "data.max_prompt_length=64",
        f"data.max_response_length={max_response_length}",
        f"data.seed={seed}",
        f"actor_rollout_ref.model.path={assets.model}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={mini_batch_size * rollout_n}",
        "actor_rollout_ref.actor.use_dynamic_bsz=False",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        f"actor_rollout_ref.rollout.n={rollout_n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={batch_size * rollout_n}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"prefix_rft.seed={seed}",
        f"prefix_rft.ratio.decay_steps={max(steps, 1)}",
        f"trainer.total_training_steps={steps}",
        f"trainer.save_freq={save_freq}",
        f"trainer.test_freq={test_freq}",
        "trainer.val_before_train=False",
        f"trainer.default_local_dir={ckpt_dir}",
        "trainer.logger=[console,file]",
        "trainer.project_name=prefix_rft_cpu",
        f"trainer.experiment_name={experiment_name}",
    ]


@dataclass
class RunResult:
    """Outcome of one trainer launch."""

    returncode: int
    metrics: dict[int, dict] = field(default_factory=dict)
    log_file: str = ""
    wall_s: float = 0.0

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines of the trainer's console log (for error messages)."""
        return log_tail(self.log_file, n)


def log_tail(path: str | os.PathLike, n: int = 60) -> str:
    """The last ``n`` lines of a log file, or ``<no log>`` when it cannot be read."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    return "\n".join(lines[-n:])


def read_metrics(path: str | os.PathLike) -> dict[int, dict]:
    """Per-step metrics from verl's file logger (JSON lines ``{"step": s, "data": {...}}``); later lines of
    the same step are merged in."""
    out: dict[int, dict] = {}
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
        out.setdefault(int(rec["step"]), {}).update(rec.get("data", {}))
    return out


def run_recipe(
    overrides: Sequence[str],
    *,
    workdir: str | os.PathLike,
    env: dict[str, str] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    timeout_s: float | None = None,
    stream: bool = False,
    tag: str = "run",
    metrics_file: str | os.PathLike | None = None,
    rollout: str = "hf_cpu",
) -> RunResult:
    """Run ``recipe/prefix_rft/main_prefix_rft.py`` with :func:`cpu_overrides` (``rollout``) + ``overrides``.

    The console output goes to ``workdir/<tag>.log`` (echoed when ``stream``); per-step metrics go to
    ``workdir/<tag>.metrics.jsonl`` (or ``metrics_file``), polled while it runs: ``on_step(step, metrics)`` is
    called once per step finished by this run. The file is not deleted first: a run that resumes from a
    checkpoint keeps the earlier steps' lines (the trainer drops those after the checkpoint), a run from
    scratch starts it anew. Raises ``FileNotFoundError`` if the recipe entry point is missing.
    """
    if not RECIPE_MAIN.exists():
        raise FileNotFoundError(f"recipe entry point {RECIPE_MAIN} not found (run from a full checkout)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / f"{tag}.log"
    metrics_file = Path(metrics_file) if metrics_file is not None else workdir / f"{tag}.metrics.jsonl"
    env = cpu_env(env)
    if rollout == "vllm":
        env = {**VLLM_CPU_ENV, **env}
    env["VERL_FILE_LOGGER_PATH"] = str(metrics_file)
    cmd = [sys.executable, str(RECIPE_MAIN), *cpu_overrides(rollout), *overrides]
    earlier = read_metrics(metrics_file)  # lines of an earlier run (kept on resume): not reported again
    seen: set[int] = set()
    with launch_slot():  # waits for a free slot under make test (LAUNCH_SLOTS_ENV); timed from here
        start = time.monotonic()

        def poll() -> None:
            for step, data in sorted(read_metrics(metrics_file).items()):
                if (
                    step not in seen
                    and earlier.get(step) != data
                    and any(k.startswith("timing_s/step") for k in data)
                ):
                    seen.add(step)
                    if on_step is not None:
                        on_step(step, data)

        with open(log_file, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=str(workdir),
                env=env,
                stdout=subprocess.PIPE if stream else log,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                if stream:
                    assert proc.stdout is not None
                    for line in proc.stdout:
                        log.write(line)
                        sys.stdout.write(line)
                        poll()
                while proc.poll() is None:
                    poll()
                    if timeout_s is not None and time.monotonic() - start > timeout_s:
                        proc.terminate()
                        try:
                            proc.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                        break
                    time.sleep(0.5)
            except BaseException:
                proc.terminate()
                raise
            finally:
                proc.wait()
        poll()
        return RunResult(
            returncode=proc.returncode,
            metrics=read_metrics(metrics_file),
            log_file=str(log_file),
            wall_s=time.monotonic() - start,
        )


def prefix_metrics(step_metrics: dict) -> dict[str, float]:
    """The ``prefix_rft/`` metrics of one step (trainer-side, without the ``actor/`` copies)."""
    return {k[len("prefix_rft/") :]: v for k, v in step_metrics.items() if k.startswith("prefix_rft/")}


SUMMARY_COLUMNS = (
    ("ratio_low", "low_t"),
    ("ratio_mean", "ratio"),
    ("prefixed_frac", "pref%"),
    ("prefix_token_frac", "demo_tok%"),
    ("kept_frac", "kept%"),
    ("entropy_prefix", "H_demo"),
    ("entropy_continuation", "H_cont"),
    ("score_prefixed", "R_pref"),
    ("score_on_policy", "R_onpol"),
    ("continuation_length", "cont_len"),
)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if math.isnan(v):
            return "nan"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def summary_row(step: int, m: dict) -> list[str]:
    """One table row: step, the main ``prefix_rft/`` metrics, the mean score and the step time."""
    p = prefix_metrics(m)
    return (
        [str(step)]
        + [_fmt(p.get(key)) for key, _ in SUMMARY_COLUMNS]
        + [_fmt(m.get("critic/score/mean")), _fmt(m.get("timing_s/step"))]
    )


def summary_header() -> list[str]:
    """Column titles of :func:`summary_row`."""
    return ["step"] + [title for _, title in SUMMARY_COLUMNS] + ["score", "step_s"]


def format_table(rows: Iterable[list[str]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
