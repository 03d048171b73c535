"""The paper's comparison at CPU scale (``make bench-learning``): tuned baselines, controls, every arm x 3 seeds.

The base model is a small Qwen2 pretrained in-process on multi-digit addition
(:mod:`benchmarks.fixtures.base_model`, task :mod:`benchmarks.fixtures.arith`). Each RL arm is the recipe
(``recipe/prefix_rft/main_prefix_rft.py``) with one of its presets (``+preset=NAME``, the files the GPU
launchers use) and the shared :data:`SETTINGS`; SFT is verl's own SFT trainer (:func:`benchmarks.sft.run_sft`)
on the same demonstrations, and SFT->RFT runs the ``rft`` preset from its merged checkpoint. Accuracy is verl's
own validation (``val-core/add<L>/acc/mean@4``: 4 samples per problem at temperature 0.6, seeded per request
by ``prefix_rft.val_seed`` so that a checkpoint scores the same on every run), plus pass@4 computed from
verl's dump of the validation generations.

The protocol (the field's, fixed before any comparison run, written into the results):

1. **Sweeps on the dev split** (held-out problems disjoint from the test problems): the RL learning rate on
   RFT (:data:`SWEEPS` ``rl_lr``), the SFT learning rate on SFT (``sft_lr``). Each value is chosen by
   :data:`SELECTION_RULE`; nothing is tuned on Prefix-RFT.
2. **The comparison on the test split** with the chosen values: every RL arm uses RFT's learning rate; SFT uses
   SFT's; SFT->RFT uses SFT's for SFT and RFT's for RL. The ``shuffled_reward`` control is RFT with the
   batch's rewards permuted (:mod:`benchmarks.controls`): what it gains is reward-free.

Every finished run writes one JSON under :data:`RESULTS_DIR` (``<phase>-<settings hash>/<run>.json``, meant to
be committed) and the runner skips runs whose JSON exists, so an interrupted matrix continues on any machine.
Work files (logs, checkpoints, the SFT models) go under ``outputs/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.fixtures import arith
from benchmarks.launch import REPO_ROOT, recipe_presets, run_recipe

#: The settings of every arm (fixed before the comparison; written into the results). ``rl_lr`` / ``sft_lr``
#: are ``None`` here: :func:`tuned_settings` fills them from the sweeps.
SETTINGS: dict = {
    "seeds": [0, 1, 2],
    # 32 prompts per level, shuffled once, read in order: each is visited 4 times in 32 steps of 8
    "train_levels": {"2": 32, "3": 32},
    "eval_levels": [2, 3, 4],  # 4 digits: never trained (out of distribution)
    "tune_levels": [2, 3],  # the trained levels: what the sweeps select on (dev split)
    "eval_rows_per_level": 128,
    "val_n": 4,  # samples per problem: avg@4 and pass@4
    "val_temperature": 0.6,  # the recipe's validation temperature
    "val_seed": 0,  # prefix_rft.val_seed: the same checkpoint gives the same number
    "steps": 32,
    "test_freq": 16,
    "batch_size": 8,  # prompts per step
    "rollout_n": 8,  # rollouts per prompt; one of them prefixed (Prefix-RFT, LUFFY, ablations)
    "mini_batch_size": 4,  # prompts per PPO mini-batch: 2 updates per step, as the paper's 128 / 64
    "rl_lr": None,
    "sft_lr": None,
    "max_prompt_length": 32,
    "max_response_length": 64,
    "sft_epochs": 3,  # over the demonstrations of the RL arms' training prompts (the GPU launcher's default)
    "sft_batch_size": 8,
    # 0, not the recipe's 0.001: with Adam, a step whose rollouts all score 0 is a full-lr step along the entropy
    # bonus alone (measured on RFT in an earlier matrix: entropy 0.19 -> 2.7, 90% of responses at the cap)
    "entropy_coeff": 0.0,
    "parallel_runs": 2,  # runs at a time (one per core; each run is mostly single-threaded)
}

#: What each sweep varies, on which baseline arm.
SWEEPS: dict[str, dict] = {
    "rl_lr": {"arm": "rft", "values": [1e-5, 3e-5, 1e-4, 3e-4], "seeds": [0]},
    "sft_lr": {"arm": "sft", "values": [1e-4, 3e-4, 1e-3], "seeds": [0]},
}

SELECTION_RULE = (
    "the value with the highest dev-split avg@4 at the last step, averaged over the trained levels "
    "(tune_levels); a tie (within 0.5 points) goes to the smaller learning rate"
)

#: Where the committed per-run results live.
RESULTS_DIR = REPO_ROOT / "docs" / "results" / "learning"
#: Where the work files go (not committed).
WORK_DIR = REPO_ROOT / "outputs" / "bench_learning"

#: Environment of every run: Ray's workers at normal priority (Ray starts them at niceness 15, which lets any
#: other load on the machine starve a run).
RUN_ENV = {"RAY_worker_niceness": "0"}


@dataclass(frozen=True)
class Arm:
    """One row of the table: how it trains (``kind``: base | sft | rl | sft_rl), the recipe preset, extra
    overrides, and extra modules verl imports in every process (a control's estimator)."""

    kind: str
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    title: str = ""


ARMS: dict[str, Arm] = {
    "base": Arm("base", title="base (no training)"),
    "sft": Arm("sft", title="SFT (verl SFT trainer)"),
    "rft": Arm("rl", "rft", title="RFT (Dr.GRPO)"),
    "shuffled_reward": Arm(
        "rl",
        "rft",
        ("algorithm.adv_estimator=shuffled_reward",),
        ("benchmarks.controls",),
        title="control: RFT, rewards shuffled",
    ),
    "sft_rft": Arm("sft_rl", "rft", title="SFT → RFT"),
    "rl_sft_loss": Arm("rl", "rl_sft_loss", title="RL + SFT loss"),
    "luffy": Arm("rl", "luffy", title="LUFFY"),
    "prefix_rft": Arm("rl", "prefix_rft", title="**Prefix-RFT**"),
    "all_demo_tokens": Arm("rl", "all_demo_tokens", title="ablation: all demo tokens"),
    "freeze_prefix": Arm("rl", "freeze_prefix", title="ablation: freeze prefix"),
    "exclude_prefix": Arm("rl", "exclude_prefix", title="ablation: exclude prefix"),
    "top50": Arm("rl", "top50", title="ablation: top 50%"),
    "random20": Arm("rl", "random20", title="ablation: random 20%"),
    "bottom20": Arm("rl", "bottom20", title="ablation: bottom 20%"),
    "uniform_ratio": Arm("rl", "uniform_ratio", title="ablation: uniform ratio"),
    "on_failure": Arm("rl", "on_failure", title="guidance on failure (not in the paper)"),
    "adaptive": Arm("rl", "adaptive", title="adaptive guidance (not in the paper)"),
    # not a recipe run: benchmarks/reference_grpo.py (independent Dr.GRPO loop) at the same sizes and seeds
    "reference_rft": Arm("reference", title="reference loop: RFT (independent code)"),
}

#: Where the reference loop's results live (``rft_seed<k>.json``, written by ``benchmarks/reference_grpo.py``).
REFERENCE_DIR = RESULTS_DIR / "reference"

#: The arms ``make bench-learning`` runs (the last four ablations run when named with ``--arms``).
DEFAULT_ARMS = [
    "base",
    "sft",
    "rft",
    "shuffled_reward",
    "prefix_rft",
    "exclude_prefix",
    "sft_rft",
    "luffy",
    "rl_sft_loss",
    "all_demo_tokens",
    "freeze_prefix",
    "on_failure",
    "adaptive",
]

#: Presets whose own ``rollout.n`` is kept: rl_sft_loss adds its demonstration as a 9th sample next to the
#: 8 on-policy rollouts (LUFFY's baseline), so its RL signal is the same n = 8 on-policy rollouts.
KEEP_PRESET_N = {"rl_sft_loss"}

#: Per-step training metrics kept in every RL run's result (the health of the run).
HEALTH_KEYS = {
    "ppo_kl": "actor/ppo_kl",  # KL(old || new) over the step's PPO updates (verl's estimate)
    "clip_frac_len": "response_length/clip_ratio",  # responses cut at the length cap
    "entropy": "actor/entropy",
    "reward_on_policy": "prefix_rft/score_on_policy",  # true reward of the on-policy rollouts
    "reward_all": "critic/score/mean",
    "demo_tokens_trained": "prefix_rft/kept_tokens",  # demo tokens that keep their advantage
    "demo_token_frac": "prefix_rft/prefix_token_frac",
    "response_length": "response_length/mean",
    "grad_norm": "actor/grad_norm",
    "guided_frac": "prefix_rft/guided_frac",  # prompts with a prefixed rollout (per-prompt guidance)
}


def settings_hash(settings: dict) -> str:
    """Short hash of the settings (names the results folder, so changed settings never mix results)."""
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=5).hexdigest()


# ----------------------------------------------------------------------------- data


@dataclass
class BenchData:
    """Paths of the benchmark's model and data files (``val`` is the dev or the test split)."""

    model: str
    train: str
    val: str
    sft: str


def train_rows(settings: dict) -> list[dict]:
    """The training prompts (with demonstrations) in the order every RL arm reads them (shuffled once)."""
    rows = []
    for level, n in sorted(settings["train_levels"].items()):
        rows += arith.rows(int(level), int(n), seed=0, split="train")
    random.Random("bench-learning-shuffle").shuffle(rows)
    for i, row in enumerate(rows):
        row["extra_info"]["index"] = i
    return rows


def val_rows(settings: dict, split: str = "test", levels=None) -> list[dict]:
    """The held-out rows of ``split`` for ``levels`` (default every eval level)."""
    rows = []
    for level in levels or settings["eval_levels"]:
        rows += arith.rows(int(level), settings["eval_rows_per_level"], seed=0, split=split)
    return rows


def build_data(out: Path, settings: dict, model: str, split: str = "test", levels=None) -> BenchData:
    """Write the train (with demonstrations), validation (``split`` rows of ``levels``, default every eval
    level) and SFT parquet files under ``out/data``."""
    from benchmarks.fixtures.tiny import write_parquet
    from prefix_rft.data.sft import sft_from_rl_parquet

    data = Path(out).resolve() / "data"
    train = write_parquet(train_rows(settings), str(data / "train.parquet"))
    val = write_parquet(val_rows(settings, split, levels), str(data / f"val_{split}.parquet"))
    # SFT sees the demonstrations of exactly the prompts the RL arms train on
    sft = str(data / "sft_train.parquet")
    sft_from_rl_parquet(train, sft)
    return BenchData(model=model, train=train, val=val, sft=sft)


# ----------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Run:
    """One run: an arm and a seed under one phase's settings (``split`` = the validation split)."""

    phase: str  # "sweep-rl_lr", "sweep-sft_lr" or "matrix"
    arm: str
    seed: int
    settings: dict = field(hash=False, compare=False)
    split: str = "test"
    levels: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        lr = self.lr
        tag = f"_lr{lr:g}" if self.phase.startswith("sweep") and lr is not None else ""
        return f"{self.arm}{tag}_seed{self.seed}"

    @property
    def lr(self) -> float | None:
        return self.settings["sft_lr"] if ARMS[self.arm].kind == "sft" else self.settings["rl_lr"]

    @property
    def group(self) -> str:
        """Folder of this run's phase and settings (results and work files)."""
        return f"{self.phase}-{settings_hash({**self.settings, 'split': self.split, 'levels': self.levels})}"

    def result_path(self, results_dir: Path) -> Path:
        return Path(results_dir) / self.group / f"{self.name}.json"

    def work_dir(self, work_dir: Path) -> Path:
        return Path(work_dir) / self.group / self.name


def rl_overrides(
    settings: dict,
    data: BenchData,
    model: str,
    arm: str,
    seed: int,
    run_dir: Path,
    *,
    levels,
    stop_at: int | None = None,
    val_before_train: bool = False,
    val_only: bool = False,
) -> list[str]:
    """The recipe overrides of one run: the arm's preset, the shared sizes, validation and the run's paths.
    ``stop_at`` ends the run early at that step (everything else, the schedule included, as in the full run)."""
    a = ARMS[arm]
    preset = a.preset or "rft"
    steps = settings["steps"]
    n = settings["rollout_n"]
    n_eff = n + 1 if preset in KEEP_PRESET_N else n  # samples per prompt, the demonstration included
    ov = [
        f"+preset={preset}",
        f"data.train_files={data.train}",
        f"data.val_files={data.val}",
        f"data.train_batch_size={settings['batch_size']}",
        f"data.max_prompt_length={settings['max_prompt_length']}",
        f"data.max_response_length={settings['max_response_length']}",
        "data.shuffle=False",
        f"data.seed={seed}",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={settings['mini_batch_size']}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={settings['mini_batch_size'] * n_eff}",
        "actor_rollout_ref.actor.use_dynamic_bsz=False",
        f"actor_rollout_ref.actor.entropy_coeff={settings['entropy_coeff']}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={settings['batch_size'] * n_eff}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.rollout.val_kwargs.n={settings['val_n']}",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={settings['val_temperature']}",
        f"prefix_rft.val_seed={settings['val_seed']}",
        f"prefix_rft.seed={seed}",
        # the paper's cosine decay over 500 of its steps, scaled to this run's length
        f"prefix_rft.ratio.decay_steps={steps}",
        f"trainer.total_training_steps={stop_at or steps}",
        "trainer.save_freq=-1",
        f"trainer.test_freq={settings['test_freq']}",
        f"trainer.val_before_train={val_before_train or val_only}",
        f"trainer.validation_data_dir={run_dir / 'val_generations'}",
        f"trainer.default_local_dir={run_dir / 'ckpt'}",
        "trainer.logger=[console,file]",
        "trainer.project_name=prefix_rft_bench_learning",
        f"trainer.experiment_name={run_dir.parent.name}_{run_dir.name}",
        *a.overrides,
    ]
    if settings["rl_lr"] is not None:  # None only in the SFT sweep's validation-only runs (no update)
        ov.append(f"actor_rollout_ref.actor.optim.lr={settings['rl_lr']}")
    if val_only:  # never resume: the folder may hold the SFT checkpoint the model was merged from
        ov += ["trainer.val_only=True", "trainer.resume_mode=disable"]
    if preset not in KEEP_PRESET_N:
        ov.append(f"actor_rollout_ref.rollout.n={n}")
    return ov


def run_env(arm: str, seed: int) -> dict[str, str]:
    """Environment of one run: :data:`RUN_ENV`, plus the arm's modules for verl to import."""
    env = {**os.environ, **RUN_ENV, "PREFIX_RFT_CONTROL_SEED": str(seed)}
    mods = ARMS[arm].modules
    if mods:  # after any the caller set (cpu_env puts the CPU plugin first)
        env["VERL_USE_EXTERNAL_MODULES"] = ",".join(
            m for m in (env.get("VERL_USE_EXTERNAL_MODULES", ""), *mods) if m
        )
    return env


def level_accuracy(metrics: dict, level: int, n: int) -> float | None:
    """verl's validation avg@n of ``level`` in one step's metrics (``val-core/add<L>/<key>/mean@<n>``)."""
    prefix = f"val-core/{arith.data_source(level)}/"
    for key in sorted(metrics):
        if key.startswith(prefix) and key.endswith(f"/mean@{n}"):
            return float(metrics[key])
    return None


#: The problem statement in a validation prompt (``arith.question``); its first operand's digits are the level.
PROBLEM = re.compile(r"Compute (\d+)\+(\d+)\.")


def problem_scores(dump: Path) -> dict[str, list[float]]:
    """Per held-out problem (``"Compute a+b."``), the scores of its samples in one step's validation dump
    (``trainer.validation_data_dir/<step>.jsonl``: one JSON line per sample with its prompt and score)."""
    out: dict[str, list[float]] = {}
    for line in Path(dump).read_text().splitlines():
        rec = json.loads(line)
        m = PROBLEM.search(str(rec.get("input", "")))
        if m:
            out.setdefault(m.group(0), []).append(float(rec.get("score", 0.0)))
    return out


def problem_level(problem: str) -> int:
    """The level (digits of the first operand) of a ``"Compute a+b."`` statement."""
    return len(PROBLEM.match(problem).group(1))


def dumped_pass_at_k(val_dir: Path, k: int) -> dict[int, dict[str, float]]:
    """pass@k per level per validated step from verl's dump of the validation generations
    (:func:`problem_scores` of each ``<step>.jsonl``), with the project's unbiased estimator
    (:func:`prefix_rft.eval.pass_at_k`)."""
    from prefix_rft.eval import pass_at_k

    out: dict[int, dict[str, float]] = {}
    for path in sorted(Path(val_dir).glob("*.jsonl")):
        per: dict[str, list[float]] = {}
        for problem, scores in problem_scores(path).items():
            hits = [score > 0.5 for score in scores]
            if len(hits) >= k:
                per.setdefault(str(problem_level(problem)), []).append(pass_at_k(len(hits), sum(hits), k))
        out[int(path.stem)] = {lv: statistics.fmean(v) for lv, v in per.items()}
    return out


def curves(metrics: dict[int, dict], levels, n: int) -> dict:
    """Per validated step: avg@n per level; per step: the health series (:data:`HEALTH_KEYS`)."""
    acc = []
    health: dict[str, list] = {k: [] for k in HEALTH_KEYS}
    for step in sorted(metrics):
        m = metrics[step]
        per = {str(lv): level_accuracy(m, lv, n) for lv in levels}
        if all(v is not None for v in per.values()):
            acc.append([step, per])
        for name, key in HEALTH_KEYS.items():
            if key in m and m[key] == m[key]:
                health[name].append([step, float(m[key])])
    return {"acc": acc, "health": health}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_overrides(run: Run, data: BenchData, model: str, run_dir: Path) -> list[str]:
    """The recipe overrides of ``run`` from ``model``: a validation-only run (the base; an SFT model in the SFT
    sweep), else the arm's training run (an SFT->RL run validates its SFT model before training too)."""
    levels = run.levels or tuple(run.settings["eval_levels"])
    kind = ARMS[run.arm].kind
    if kind in ("base", "sft"):
        return rl_overrides(run.settings, data, model, "rft", run.seed, run_dir, levels=levels, val_only=True)
    return rl_overrides(
        run.settings,
        data,
        model,
        run.arm,
        run.seed,
        run_dir,
        levels=levels,
        val_before_train=kind == "sft_rl",
    )


def _validate_model(run: Run, data: BenchData, model: str, run_dir: Path, timeout_s: float) -> dict:
    """A validation-only recipe run of ``model`` (no update): its accuracy and pass@k."""
    levels = run.levels or tuple(run.settings["eval_levels"])
    res = run_recipe(
        run_overrides(run, data, model, run_dir),
        workdir=run_dir,
        tag="val",
        timeout_s=timeout_s,
        env=run_env("rft", run.seed),
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"validation of {model} failed (exit {res.returncode}); log: {res.log_file}\n{res.log_tail(40)}"
        )
    c = curves(res.metrics, levels, run.settings["val_n"])
    return {"acc": c["acc"][:1], "pass_at_k": _pass(run_dir, run.settings)}


def _pass(run_dir: Path, settings: dict) -> list:
    k = settings["val_n"]
    return [[s, v] for s, v in sorted(dumped_pass_at_k(run_dir / "val_generations", k).items())]


def run_one(
    run: Run,
    *,
    data: BenchData,
    results_dir: Path = RESULTS_DIR,
    work_dir: Path = WORK_DIR,
    timeout_s: float = 1800,
) -> dict:
    """Run (or reuse) one run; returns its result (also written to its JSON under ``results_dir``)."""
    arm = ARMS[run.arm]
    done = run.result_path(results_dir)
    if done.exists():
        return json.loads(done.read_text())
    run_dir = run.work_dir(work_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    levels = run.levels or tuple(run.settings["eval_levels"])
    s = run.settings
    start = time.monotonic()
    result: dict = {"arm": run.arm, "seed": run.seed, "phase": run.phase, "split": run.split, "lr": run.lr}
    if arm.kind == "base":
        result.update(_validate_model(run, data, data.model, run_dir, timeout_s))
    elif arm.kind == "sft":
        model = _sft_model(run, data, run_dir, timeout_s)
        result["sft_loss"] = model["loss"]
        if run.phase != "matrix":  # in the matrix the SFT model is validated by its SFT->RFT run (step 0)
            result.update(_validate_model(run, data, model["dir"], run_dir, timeout_s))
    else:
        model = data.model
        if arm.kind == "sft_rl":
            sft_run = Run(run.phase, "sft", run.seed, run.settings, run.split, run.levels)
            model = _sft_model(sft_run, data, sft_run.work_dir(work_dir), timeout_s)["dir"]
        res = run_recipe(
            run_overrides(run, data, model, run_dir),
            workdir=run_dir,
            tag="train",
            timeout_s=timeout_s,
            env=run_env(run.arm, run.seed),
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"{run.name} failed (exit {res.returncode}); log: {res.log_file}\n{res.log_tail(40)}"
            )
        result.update(curves(res.metrics, levels, s["val_n"]))
        result["pass_at_k"] = _pass(run_dir, s)
        result["prefix_rft"] = {
            st: {k: v for k, v in m.items() if k.startswith("prefix_rft/")}
            for st, m in sorted(res.metrics.items())
        }
        result["step_time_s"] = statistics.fmean(
            float(m["timing_s/step"]) for m in res.metrics.values() if "timing_s/step" in m
        )
    result["wall_s"] = time.monotonic() - start
    result["settings_hash"] = run.group
    _write_json(done, result)
    return result


def _sft_model(run: Run, data: BenchData, run_dir: Path, timeout_s: float) -> dict:
    """verl's SFT trainer on the demonstrations at ``sft_lr``; reuses a merged model left by an earlier run."""
    from benchmarks.sft import run_sft

    hf = run_dir / "hf"
    if (hf / "config.json").exists() and (run_dir / "sft_loss.json").exists():
        return {"dir": str(hf), "loss": json.loads((run_dir / "sft_loss.json").read_text())}
    s = run.settings
    res = run_sft(
        data.sft,
        data.model,
        run_dir,
        epochs=s["sft_epochs"],
        batch_size=s["sft_batch_size"],
        lr=s["sft_lr"],
        seed=run.seed,
        max_length=s["max_prompt_length"] + s["max_response_length"] + 8,
        timeout_s=timeout_s,
        env={**os.environ, **RUN_ENV},
    )
    loss = [[st, m.get("train/loss")] for st, m in sorted(res.metrics.items())]
    _write_json(run_dir / "sft_loss.json", loss)
    return {"dir": res.hf_model_dir, "loss": loss}


# ----------------------------------------------------------------------------- plans


def sweep_runs(name: str, settings: dict | None = None) -> list[Run]:
    """The runs of one sweep (dev split, the trained levels)."""
    base = copy.deepcopy(settings or SETTINGS)
    sw = SWEEPS[name]
    runs = []
    for value in sw["values"]:
        s = {**base, name: value}
        other = "sft_lr" if name == "rl_lr" else "rl_lr"
        s[other] = None
        for seed in sw["seeds"]:
            runs.append(Run(f"sweep-{name}", sw["arm"], seed, s, "dev", tuple(base["tune_levels"])))
    return runs


def dev_base_run(settings: dict | None = None) -> Run:
    """The base model validated on the dev split (the sweeps' step 0)."""
    s = {**copy.deepcopy(settings or SETTINGS), "rl_lr": None, "sft_lr": None}
    return Run("sweep-base", "base", 0, s, "dev", tuple(s["tune_levels"]))


def final_score(result: dict, levels) -> float:
    """Mean over ``levels`` of the last validated step's accuracy."""
    last = result["acc"][-1][1]
    return statistics.fmean(float(last[str(lv)]) for lv in levels)


def select(name: str, results: dict[float, list[dict]], levels) -> float:
    """:data:`SELECTION_RULE` over ``{value: [results of its seeds]}``."""
    scored = sorted(
        (statistics.fmean(final_score(r, levels) for r in rs), v) for v, rs in results.items() if rs
    )
    best = max(score for score, _ in scored)
    return min(v for score, v in scored if score >= best - 0.005)


def sweep_results(name: str, settings: dict | None = None, results_dir: Path = RESULTS_DIR) -> dict:
    """``{value: [results]}`` of a sweep's finished runs."""
    out: dict[float, list[dict]] = {}
    for run in sweep_runs(name, settings):
        path = run.result_path(results_dir)
        out.setdefault(run.settings[name], [])
        if path.exists():
            out[run.settings[name]].append(json.loads(path.read_text()))
    return out


def tuned_settings(settings: dict | None = None, results_dir: Path = RESULTS_DIR) -> dict | None:
    """:data:`SETTINGS` with ``rl_lr`` and ``sft_lr`` chosen by the sweeps; ``None`` while a sweep is unfinished."""
    s = copy.deepcopy(settings or SETTINGS)
    for name in SWEEPS:
        res = sweep_results(name, settings, results_dir)
        if not all(res.values()):
            return None
        s[name] = select(name, res, s["tune_levels"])
    return s


def matrix_runs(settings: dict, arms=None, seeds=None) -> list[Run]:
    """The comparison's runs (test split, every eval level), in execution order: the base, then the arms of
    :data:`FIRST` for every seed (what the CI learning test's margins come from), then the others arm by arm."""
    arms = [a for a in (arms or DEFAULT_ARMS) if ARMS[a].kind != "reference"]  # the loop runs apart
    seeds = settings["seeds"] if seeds is None else seeds
    runs = []
    if "base" in arms:
        runs.append(Run("matrix", "base", 0, settings))
    for seed in seeds:
        runs += [Run("matrix", a, seed, settings) for a in arms if a in FIRST]
    for arm in [
        a for a in arms if a not in FIRST and a != "base"
    ]:  # then arm by arm: a cut leaves whole arms
        runs += [Run("matrix", arm, seed, settings) for seed in seeds]
    return runs


#: Arms run first for every seed.
FIRST = ("rft", "shuffled_reward", "prefix_rft", "exclude_prefix")

#: ``bench_learning.py --quick``: seconds-to-minutes sizes over :data:`SETTINGS` (results under outputs/, never docs/).
QUICK: dict = {
    "steps": 2,
    "test_freq": 2,
    "eval_rows_per_level": 8,
    "batch_size": 4,
    "mini_batch_size": 2,
    "train_levels": {"2": 4, "3": 4},
    "eval_levels": [2, 3],
    "seeds": [0],
    "rl_lr": 3e-5,
    "sft_lr": 3e-4,
    "sft_epochs": 1,
}

#: ``bench_learning.py --ci``, what ``make test`` runs (tests/test_learning_cpu.py): the comparison's base, its
#: seed-0 RFT run and that run's shuffled-reward control, at the tuned settings (:func:`ci_settings`).
CI_ARMS = ("base", "rft", "shuffled_reward")
#: The level the CI check validates on: the trained 2-digit problems, where 32 steps move RFT the most.
CI_LEVEL = 2


def ci_settings(tuned: dict) -> dict:
    """The comparison's tuned settings as ``--ci`` runs them: every training setting unchanged (the same runs as
    the matrix's seed 0), validated on the :data:`CI_LEVEL`-digit test problems only and at the last step only
    (validation does not draw from the rollout's random stream: the training is the matrix's)."""
    return {
        **copy.deepcopy(tuned),
        "test_freq": tuned["steps"],
        "eval_levels": [CI_LEVEL],
        "tune_levels": [CI_LEVEL],  # the report's pass@k level
        "seeds": [0],
    }


def run_many(
    runs: list[Run],
    data: BenchData,
    *,
    parallel: int,
    results_dir: Path = RESULTS_DIR,
    work_dir: Path = WORK_DIR,
    log: Callable[[str], None] = print,
) -> dict[Run, dict]:
    """Run every run not finished yet, ``parallel`` at a time (SFT runs first, one at a time: each is a
    torchrun job), with a progress line and an ETA per run. One failed run never loses the others."""
    from concurrent.futures import ThreadPoolExecutor

    results: dict[Run, dict] = {}
    todo = []
    for run in runs:
        if run.result_path(results_dir).exists():
            results[run] = json.loads(run.result_path(results_dir).read_text())
        else:
            todo.append(run)
    if len(todo) < len(runs):
        log(f"[bench-learning] {len(runs) - len(todo)} of {len(runs)} runs already finished (skipped)")
    start, took, failed = time.monotonic(), [], []

    def one(run: Run) -> None:
        t = time.monotonic()
        log(f"[bench-learning] start {run.group}/{run.name}")
        try:
            results[run] = run_one(run, data=data, results_dir=results_dir, work_dir=work_dir)
        except Exception as e:  # reported, left out of the table; a rerun retries it
            failed.append(run.name)
            log(f"[bench-learning] FAILED {run.name}: {e}")
        took.append(time.monotonic() - t)
        left = len(todo) - len(took)
        eta = statistics.fmean(took) * left / max(1, parallel)
        log(
            f"[bench-learning] done {len(took)}/{len(todo)}: {run.name} in {took[-1]:.0f}s; "
            f"elapsed {time.monotonic() - start:.0f}s, ~{eta / 60:.1f} min left"
        )

    for run in [r for r in todo if ARMS[r.arm].kind == "sft"]:
        one(run)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        list(pool.map(one, [r for r in todo if ARMS[r.arm].kind != "sft"]))
    if failed:
        log(f"[bench-learning] {len(failed)} run(s) failed: {', '.join(failed)} (rerun to retry them)")
    return results


# ----------------------------------------------------------------------------- report


def finished(runs: list[Run], results_dir: Path = RESULTS_DIR) -> dict[Run, dict]:
    """The results of the runs of ``runs`` that have finished (their JSON exists)."""
    return {
        r: json.loads(r.result_path(results_dir).read_text())
        for r in runs
        if r.result_path(results_dir).exists()
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _mean_series(series: list[list[list[float]]]) -> list[list[float]]:
    by: dict[int, list[float]] = {}
    for s in series:
        for step, v in s:
            by.setdefault(int(step), []).append(float(v))
    return [[k, statistics.fmean(v)] for k, v in sorted(by.items()) if len(v) == len(series)]


def trains_demo_tokens(arm: str) -> bool:
    """Whether the arm's preset gives demo tokens a gradient: ``prefix_rft.loss.prefix_tokens=train`` (the
    default) or an SFT term (``sft_coef > 0``, ``rl_sft_loss``); ``freeze_prefix`` / ``exclude_prefix``
    count kept tokens that never reach the loss."""
    import yaml

    preset = ARMS[arm].preset
    if preset is None:
        return True
    block = yaml.safe_load(recipe_presets().preset_path(preset).read_text()) or {}
    loss = (block.get("prefix_rft") or {}).get("loss") or {}
    return loss.get("prefix_tokens", "train") == "train" or float(loss.get("sft_coef", 0.0)) > 0


def _health_summary(runs: list[dict]) -> dict[str, float]:
    """Per arm, mean over seeds: mean / max policy KL per step, the last quarter's share of responses at the
    cap, entropy and on-policy reward, the first quarter's on-policy reward, demo tokens trained in all."""

    def per_run(r: dict) -> dict[str, float]:
        h = r.get("health", {})
        vals = {k: [v for _, v in h.get(k, [])] for k in HEALTH_KEYS}
        q = max(1, len(vals["ppo_kl"]) // 4)
        out = {}
        if vals["ppo_kl"]:
            out["ppo_kl_mean"] = statistics.fmean(abs(v) for v in vals["ppo_kl"])
            out["ppo_kl_max"] = max(abs(v) for v in vals["ppo_kl"])
        for k in ("clip_frac_len", "entropy", "reward_on_policy"):
            if vals[k]:
                out[f"{k}_last"] = statistics.fmean(vals[k][-q:])
        if vals["reward_on_policy"]:
            out["reward_on_policy_first"] = statistics.fmean(vals["reward_on_policy"][:q])
        out["demo_tokens_trained"] = float(sum(vals["demo_tokens_trained"]))
        if vals["guided_frac"]:
            out["guided_frac_mean"] = statistics.fmean(vals["guided_frac"])
        return out

    rows = [per_run(r) for r in runs]
    keys = sorted({k for row in rows for k in row})
    return {k: statistics.fmean(row[k] for row in rows if k in row) for k in keys}


def aggregate(
    results: dict[Run, dict],
    settings: dict,
    sweeps: dict,
    wall_s: float,
    command: str,
    dev_base: dict | None = None,
    reference: list[dict] | None = None,
) -> dict:
    """The ``docs/results/cpu_learning.json`` layout: protocol and sweeps, then per arm the per-seed accuracy
    per level (last validated step), mean ± std, pass@k, gains over the base and over the shuffled-reward
    control (paired by seed), mean curves and health."""
    levels = [str(lv) for lv in settings["eval_levels"]]
    hard = str(settings["tune_levels"][-1])
    by_arm: dict[str, list[dict]] = {}
    for run, res in sorted(results.items(), key=lambda x: (x[0].arm, x[0].seed)):
        by_arm.setdefault(run.arm, []).append(res)
    if reference:  # the independent loop's own step 0 is its base: no gain over the pipeline's base / control
        by_arm["reference_rft"] = sorted(reference, key=lambda r: r["seed"])

    def last_acc(r: dict) -> dict[str, float]:
        return {lv: float(r["acc"][-1][1][lv]) for lv in levels}

    def last_pass(r: dict) -> float | None:
        p = r.get("pass_at_k") or []
        return float(p[-1][1].get(hard, float("nan"))) if p else None

    per_seed: dict[str, list[dict]] = {}
    for arm, rs in by_arm.items():
        if arm == "sft":  # the SFT model is validated by the step 0 of its SFT->RFT run
            continue
        for r in rs:
            row = {"seed": r["seed"], **last_acc(r), f"pass@{settings['val_n']}_{hard}": last_pass(r)}
            per_seed.setdefault(arm, []).append(row)
            if arm == "sft_rft" and r["acc"] and r["acc"][0][0] == 0:
                sft_row = {"seed": r["seed"], **{lv: float(r["acc"][0][1][lv]) for lv in levels}}
                p = r.get("pass_at_k") or []
                sft_row[f"pass@{settings['val_n']}_{hard}"] = (
                    float(p[0][1].get(hard, float("nan"))) if p and p[0][0] == 0 else None
                )
                per_seed.setdefault("sft", []).append(sft_row)
    base = per_seed.get("base", [{}])[0]
    control = {row["seed"]: row for row in per_seed.get("shuffled_reward", [])}
    arms: dict[str, dict] = {}
    for arm in ARMS:
        rows = per_seed.get(arm)
        if not rows:
            continue
        a: dict = {"seeds": [r["seed"] for r in rows], "per_seed": rows, "mean": {}, "std": {}}
        for lv in levels:
            a["mean"][lv], a["std"][lv] = _mean_std([r[lv] for r in rows])
            if base and arm not in ("base", "reference_rft"):
                a.setdefault("gain_vs_base", {})[lv] = _mean_std([r[lv] - base[lv] for r in rows])
            paired = [r[lv] - control[r["seed"]][lv] for r in rows if r["seed"] in control]
            if paired and arm not in ("base", "shuffled_reward", "reference_rft"):
                a.setdefault("gain_vs_control", {})[lv] = _mean_std(paired)
        key = f"pass@{settings['val_n']}_{hard}"
        vals = [r[key] for r in rows if r.get(key) is not None and r[key] == r[key]]
        if vals:
            a["mean"][key], a["std"][key] = _mean_std(vals)
        runs = by_arm.get(arm, [])
        if ARMS[arm].kind in ("rl", "sft_rl", "reference") and runs:
            a["curve_by_level"] = {
                lv: _mean_series([[[s, per[lv]] for s, per in r["acc"]] for r in runs]) for lv in levels
            }
            if base and ARMS[arm].kind == "rl":  # the base is every from-base run's step 0
                for lv in levels:
                    a["curve_by_level"][lv] = [[0, base[lv]], *a["curve_by_level"][lv]]
            a["health"] = {
                k: _mean_series([r["health"][k] for r in runs if k in r.get("health", {})])
                for k in HEALTH_KEYS
            }
            a["health_summary"] = _health_summary(runs)
            if ARMS[arm].kind != "reference" and not trains_demo_tokens(arm):
                a["health_summary"]["demo_tokens_trained"] = 0.0
            a["step_time_s"] = statistics.fmean(
                r.get("step_time_s", r.get("train_s", float("nan")) / settings["steps"]) for r in runs
            )
            a["wall_s"] = statistics.fmean(r.get("wall_s", float("nan")) for r in runs)
        arms[arm] = a
    sweep_rows = {}
    tl = [str(lv) for lv in settings["tune_levels"]]
    if dev_base:
        sweep_rows["dev_base"] = {"per_level": dev_base["acc"][-1][1], "dev_score": final_score(dev_base, tl)}
    for name, res in (sweeps or {}).items():
        sweep_rows[name] = {
            "arm": SWEEPS[name]["arm"],
            "chosen": settings.get(name),
            "rows": [
                {
                    "value": v,
                    "dev_score": statistics.fmean(final_score(r, tl) for r in rs),
                    "per_seed": [{"seed": r["seed"], **r["acc"][-1][1]} for r in rs],
                    "curve": (
                        [[0, sweep_rows["dev_base"]["dev_score"]]]
                        if dev_base and rs[0]["acc"][0][0] > 0
                        else []
                    )
                    + _mean_series(
                        [[[s, statistics.fmean(per[lv] for lv in tl)] for s, per in r["acc"]] for r in rs]
                    ),
                    **({"health_summary": _health_summary(rs)} if rs and rs[0].get("health") else {}),
                }
                for v, rs in sorted(res.items())
                if rs
            ],
        }
    return {
        "settings": settings,
        "protocol": {"sweeps": SWEEPS, "selection_rule": SELECTION_RULE},
        "sweeps": sweep_rows,
        "arms": arms,
        "wall_s": wall_s,
        "command": command,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _pm(ms: tuple[float, float] | None) -> str:
    return "–" if ms is None else f"{100 * ms[0]:+.1f} ± {100 * ms[1]:.1f}"


def markdown_table(report: dict) -> str:
    """One row per arm: accuracy per level (mean ± std over seeds, last step), pass@k on the hardest trained
    level, the gain over the base and over the shuffled-reward control on the first level, every seed."""
    s = report["settings"]
    levels = [str(lv) for lv in s["eval_levels"]]
    hard = str(s["tune_levels"][-1])
    first = levels[0]
    pk = f"pass@{s['val_n']}_{hard}"
    head = (
        ["method"]
        + [f"{lv}-digit" + ("" if lv in s["train_levels"] else " (OOD)") for lv in levels]
        + [
            f"{hard}-digit pass@{s['val_n']}",
            f"Δ base ({first}-digit)",
            f"Δ control ({first}-digit)",
            f"{first}-digit per seed",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, a in report["arms"].items():
        cells = [f"{_pct(a['mean'][lv])} ± {_pct(a['std'][lv])}" for lv in levels]
        cells.append(f"{_pct(a['mean'].get(pk))} ± {_pct(a['std'].get(pk))}" if pk in a["mean"] else "–")
        cells.append(_pm(a.get("gain_vs_base", {}).get(first)))
        cells.append(_pm(a.get("gain_vs_control", {}).get(first)))
        cells.append(" / ".join(_pct(r[first]) for r in a["per_seed"]))
        lines.append("| " + " | ".join([ARMS[arm].title, *cells]) + " |")
    return "\n".join(lines)


def sweep_table(report: dict) -> str:
    """One table per sweep: dev accuracy per value, with the health of its runs and the chosen value."""
    out = []
    base = report.get("sweeps", {}).get("dev_base")
    if base:
        out += [
            f"Base model on the dev split: score {_pct(base['dev_score'])} ("
            + ", ".join(f"{k}-digit {_pct(v)}" for k, v in base["per_level"].items())
            + ").",
            "",
        ]
    for name, sw in report.get("sweeps", {}).items():
        if name == "dev_base":
            continue
        out += [
            f"**{name}** on `{sw['arm']}` (dev split; chosen: {sw['chosen']:g})"
            if sw.get("chosen")
            else f"**{name}** on `{sw['arm']}`",
            "",
            "| value | dev score (mean of trained levels, last step) | per level | curve (step: score) | mean policy KL / step | responses at cap (last quarter) |",
            "|---|---|---|---|---|---|",
        ]
        for row in sw["rows"]:
            h = row.get("health_summary", {})
            per = "; ".join(
                ", ".join(f"{k}-digit {_pct(v)}" for k, v in ps.items() if k != "seed")
                for ps in row["per_seed"]
            )
            curve = ", ".join(f"{int(st)}: {_pct(v)}" for st, v in row["curve"])
            out.append(
                f"| {row['value']:g} | {_pct(row['dev_score'])} | {per} | {curve} | "
                f"{h.get('ppo_kl_mean', float('nan')):.4f} | {_pct(h.get('clip_frac_len_last'))} |"
                if h
                else f"| {row['value']:g} | {_pct(row['dev_score'])} | {per} | {curve} | – | – |"
            )
        out.append("")
    return "\n".join(out)


def health_table(report: dict) -> str:
    """Per arm, the health of its runs (means over seeds)."""
    lines = [
        "| method | policy KL / step (mean, max) | responses at cap (last quarter) | entropy (last quarter) | on-policy reward (first → last quarter) | demo tokens trained (total) | vs Prefix-RFT | prompts guided (mean) | s / step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    reference = (report["arms"].get("prefix_rft", {}).get("health_summary") or {}).get("demo_tokens_trained")
    for arm, a in report["arms"].items():
        h = a.get("health_summary")
        if not h:
            continue
        tokens = h.get("demo_tokens_trained", 0)
        relative = f"{tokens / reference:.2f}x" if reference else "–"
        lines.append(
            f"| {ARMS[arm].title} | {h.get('ppo_kl_mean', float('nan')):.4f}, {h.get('ppo_kl_max', float('nan')):.4f} | "
            f"{_pct(h.get('clip_frac_len_last'))} | {h.get('entropy_last', float('nan')):.3f} | "
            f"{_pct(h.get('reward_on_policy_first'))} → {_pct(h.get('reward_on_policy_last'))} | "
            f"{tokens:.0f} | {relative} | {_pct(h.get('guided_frac_mean'))} | {a.get('step_time_s', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def result_lines(report: dict) -> list[str]:
    """``RESULT <arm>_add<L>=<mean accuracy>`` lines (what the benchmark harness parses)."""
    out = []
    for arm, a in report["arms"].items():
        for lv, v in a["mean"].items():
            if lv.isdigit():
                out.append(f"RESULT {arm}_add{lv}={v:.4f}")
    return out


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """``cpu_learning.json``, ``cpu_learning.md`` and the PNGs under ``out_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "cpu_learning.json"]
    _write_json(paths[0], report)
    s = report["settings"]
    levels = [str(lv) for lv in s["eval_levels"]]

    def style(arm: str) -> dict:
        return {"lw": 2.6 if arm == "prefix_rft" else 1.3, "ls": "--" if arm == "shuffled_reward" else "-"}

    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4.2), squeeze=False)
    axes = axes[0]
    for ax, lv in zip(axes, levels, strict=True):
        for arm, a in report["arms"].items():
            pts = a.get("curve_by_level", {}).get(lv)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(
                    xs,
                    [100 * y for y in ys],
                    marker="o",
                    ms=3,
                    label=ARMS[arm].title.strip("*"),
                    **style(arm),
                )
        ax.set_title(f"held-out {lv}-digit avg@{s['val_n']} (%)")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    paths.append(_save(fig, out_dir / "cpu_learning_accuracy.png"))

    names = ["ppo_kl", "clip_frac_len", "entropy", "reward_on_policy"]
    fig, axes = plt.subplots(1, len(names), figsize=(20, 4))
    for ax, name in zip(axes, names, strict=True):
        for arm, a in report["arms"].items():
            pts = a.get("health", {}).get(name)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=ARMS[arm].title.strip("*"), **style(arm))
        ax.set_title(
            {
                "ppo_kl": "policy KL per step",
                "clip_frac_len": "responses at the length cap",
                "entropy": "policy entropy",
                "reward_on_policy": "reward of on-policy rollouts",
            }[name]
        )
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    paths.append(_save(fig, out_dir / "cpu_learning_health.png"))

    if report.get("sweeps"):
        sws = [(k, v) for k, v in report["sweeps"].items() if k != "dev_base"]
        fig, axes = plt.subplots(1, len(sws), figsize=(6 * len(sws), 4), squeeze=False)
        base = report["sweeps"].get("dev_base")
        for ax, (name, sw) in zip(axes[0], sws, strict=True):
            if all(len(row["curve"]) > 1 for row in sw["rows"]):  # an RL sweep: dev score vs step per value
                for row in sw["rows"]:
                    xs, ys = zip(*row["curve"], strict=True)
                    ax.plot(xs, [100 * y for y in ys], marker="o", ms=3, label=f"{name}={row['value']:g}")
                ax.set_xlabel("training step")
            else:  # SFT: one validation after training, per value
                xs = [row["value"] for row in sw["rows"]]
                ax.plot(xs, [100 * row["dev_score"] for row in sw["rows"]], marker="o", label="after SFT")
                ax.set_xscale("log")
                ax.set_xlabel(name)
            if base:
                ax.axhline(100 * base["dev_score"], color="gray", ls=":", label="base model")
            ax.set_title(f"{name} sweep on {sw['arm']}: dev score (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir / "cpu_learning_sweeps.png"))
    md = out_dir / "cpu_learning.md"
    md.write_text(_markdown_report(report))
    paths.append(md)
    return paths


def _markdown_report(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Prefix-RFT at CPU scale: tuned baselines, a reward-free control, every arm x "
        + (f"{len(s['seeds'])} seeds" if len(s["seeds"]) > 1 else "1 seed"),
        "",
        f"Produced by `{report['command']}` on a 2-core CPU machine (no GPU), 2 runs at a time.",
        f"Held-out **test** problems ({s['eval_rows_per_level']} per level), avg@{s['val_n']} at temperature "
        f"{s['val_temperature']} with seeded sampling (`prefix_rft.val_seed={s['val_seed']}`: a checkpoint scores the "
        f"same on every run), at the last step ({s['steps']}); mean ± std over seeds {s['seeds']}; each seed listed.",
        "",
        markdown_table(report),
        "",
        *(
            [f"Not run yet (`make bench-learning` runs only these): {', '.join(report['not_run'])}.", ""]
            if report.get("not_run")
            else []
        ),
        "![held-out accuracy vs step](cpu_learning_accuracy.png)",
        "",
        "## Health of the runs",
        "",
        health_table(report),
        "",
        "![health](cpu_learning_health.png)",
        "",
        *(
            [
                "## Tuning (dev split, on the baselines only)",
                "",
                f"Selection rule: {report['protocol']['selection_rule']}.",
                "",
                sweep_table(report),
                "![sweeps](cpu_learning_sweeps.png)",
                "",
            ]
            if report.get("sweeps")
            else []
        ),
        "## Settings",
        "",
        "```json",
        json.dumps(s, indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"
