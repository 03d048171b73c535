"""The paper's comparison at CPU scale (``make bench-learning``): every arm x 3 seeds through verl's real trainers.

The base model is a small Qwen2 pretrained in-process on multi-digit addition
(:mod:`prefix_rft.testing.base_model`, task :mod:`prefix_rft.testing.arith`). Each RL arm is the recipe
(``recipe/prefix_rft/main_prefix_rft.py``) with one of its presets (``+preset=NAME``, the same files the GPU
launchers use) and the shared :data:`SETTINGS`; the SFT arm is verl's own SFT trainer
(:func:`prefix_rft.cpu.sft.run_sft`) on the same demonstrations, and SFT->RFT runs the ``rft`` preset from
its merged checkpoint. Held-out accuracy per level is verl's own validation (``val-core/add<L>/...``),
taken before training (step 0) and every ``test_freq`` steps.

Every run writes ``<out>/runs/<arm>/seed<k>/result.json`` when it finishes; a second invocation skips
finished runs (resumable). :func:`aggregate` turns the results into the JSON layout of
``docs/results/cpu_learning.json``; :func:`write_report` writes the markdown table and the PNGs.

Nothing here is tuned per arm: :data:`SETTINGS` is one dict, fixed before the first result was seen, and
it is written into the results file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefix_rft.cpu.launch import CPU_OVERRIDES, run_recipe
from prefix_rft.testing import arith

#: The one set of settings of every arm (fixed before looking at results; written into the results).
SETTINGS: dict = {
    "seeds": [0, 1, 2],
    "train_levels": {"2": 192, "3": 192},  # rows per level; level 2 has signal, level 3 starts near 0%
    "eval_levels": [2, 3, 4],  # level 4: harder than anything trained (out of distribution)
    "eval_rows_per_level": 64,
    "steps": 16,
    "test_freq": 4,
    "batch_size": 8,  # prompts per step
    "rollout_n": 8,  # rollouts per prompt; one of them prefixed (Prefix-RFT, LUFFY, ablations)
    "mini_batch_size": 4,  # prompts per PPO mini-batch: 2 updates per step, as the paper's 128 / 64
    "lr": 3e-4,  # 0.3x the base model's pretraining lr (docs/LEARNING.md: how it was chosen)
    "max_prompt_length": 32,
    "max_response_length": 64,
    "sft_epochs": 3,  # over the demonstrations of the rows the RL arms see (steps x batch_size rows);
    # 3 epochs as the GPU SFT launcher's default
    "sft_batch_size": 8,
    # 0 instead of the recipe's 0.001: with Adam, a step whose rollouts all score 0 (advantages all 0) is a
    # full-lr step along the entropy bonus alone; at this scale that drove RFT to random text in 5 steps
    # (measured: entropy 0.19 -> 2.7, responses clipped 90%, accuracy 0 on every level)
    "entropy_coeff": 0.0,
    "parallel_runs": 2,  # runs at a time (one per core; each run is mostly single-threaded)
}

#: Environment of every benchmark run: Ray's workers at normal priority (Ray starts them at niceness 15 by
#: default, which lets any other load on the machine starve a run).
RUN_ENV = {"RAY_worker_niceness": "0"}

#: arm -> (kind, recipe preset). kinds: "rl" (recipe from the base model), "sft" (verl's SFT trainer),
#: "sft_rl" (recipe from the SFT checkpoint of the same seed), "base" (no training: step-0 validation).
ARMS: dict[str, tuple[str, str | None]] = {
    "base": ("base", None),
    "sft": ("sft", None),
    "rft": ("rl", "rft"),
    "sft_rft": ("sft_rl", "rft"),
    "rl_sft_loss": ("rl", "rl_sft_loss"),
    "luffy": ("rl", "luffy"),
    "prefix_rft": ("rl", "prefix_rft"),
    "all_demo_tokens": ("rl", "all_demo_tokens"),
    "exclude_prefix": ("rl", "exclude_prefix"),
}

#: Execution order of the RL arms (RFT and Prefix-RFT of every seed first: the CI learning test's threshold
#: comes from them).
RUN_ORDER = ["rft", "prefix_rft", "luffy", "rl_sft_loss", "all_demo_tokens", "exclude_prefix", "sft_rft"]

#: Presets whose own ``rollout.n`` is kept: rl_sft_loss adds its demonstration as a 9th sample next to the
#: 8 on-policy rollouts (LUFFY's baseline), so its RL signal is the same n = 8 on-policy rollouts.
KEEP_PRESET_N = {"rl_sft_loss"}


def settings_hash(settings: dict) -> str:
    """Short hash of the settings (names the output folder, so changed settings never mix results)."""
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=5).hexdigest()


@dataclass
class BenchData:
    """Paths of the benchmark's model and data files."""

    model: str
    train: str
    val: str
    sft: str


def build_data(out: Path, settings: dict, model: str) -> BenchData:
    """Write the train (with demonstrations), validation (every eval level) and SFT parquet files."""
    from prefix_rft.data.sft import sft_from_rl_parquet
    from prefix_rft.testing.tiny import write_parquet

    data = Path(out).resolve() / "data"
    train_rows = []
    for level, n in sorted(settings["train_levels"].items()):
        train_rows += arith.rows(int(level), int(n), seed=0, split="train")
    import random

    random.Random("bench-learning-shuffle").shuffle(train_rows)
    for i, row in enumerate(train_rows):
        row["extra_info"]["index"] = i
    val_rows = []
    for level in settings["eval_levels"]:
        val_rows += arith.rows(int(level), settings["eval_rows_per_level"], seed=0, split="eval")
    train = write_parquet(train_rows, str(data / "train.parquet"))
    val = write_parquet(val_rows, str(data / "val.parquet"))
    # SFT sees the demonstrations of exactly the rows the RL arms train on (their first steps x batch rows;
    # the RL dataloader is not shuffled, see rl_overrides)
    seen = train_rows[: settings["steps"] * settings["batch_size"]]
    seen_path = write_parquet(seen, str(data / "train_seen.parquet"))
    sft = str(data / "sft_train.parquet")
    sft_from_rl_parquet(seen_path, sft)
    return BenchData(model=model, train=train, val=val, sft=sft)


def rl_overrides(
    settings: dict,
    data: BenchData,
    model: str,
    preset: str,
    seed: int,
    run_dir: Path,
    stop_at: int | None = None,
) -> list[str]:
    """The recipe overrides of one RL run: the preset, the shared sizes and the run's paths. ``stop_at``
    ends the run early at that step (everything else, the schedule included, as in the full run)."""
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
        f"actor_rollout_ref.actor.optim.lr={settings['lr']}",
        f"actor_rollout_ref.actor.entropy_coeff={settings['entropy_coeff']}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={settings['batch_size'] * n_eff}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"prefix_rft.seed={seed}",
        # the paper's cosine decay over 500 of its steps, scaled to this run's length
        f"prefix_rft.ratio.decay_steps={steps}",
        f"trainer.total_training_steps={stop_at or steps}",
        "trainer.save_freq=-1",
        f"trainer.test_freq={settings['test_freq']}",
        "trainer.val_before_train=True",
        f"trainer.default_local_dir={run_dir / 'ckpt'}",
        "trainer.logger=[console,file]",
        "trainer.project_name=prefix_rft_bench_learning",
        f"trainer.experiment_name={run_dir.parent.name}_{run_dir.name}",
    ]
    if preset not in KEEP_PRESET_N:
        ov.append(f"actor_rollout_ref.rollout.n={n}")
    return ov


def level_accuracy(metrics: dict, level: int) -> float | None:
    """verl's validation accuracy of ``level`` in one step's metrics (``val-core/add<L>/.../mean@1``)."""
    prefix = f"val-core/{arith.data_source(level)}/"
    for key in sorted(metrics):
        if key.startswith(prefix) and key.endswith("/mean@1"):
            return float(metrics[key])
    return None


def curves(metrics: dict[int, dict], levels) -> dict:
    """Per validated step: accuracy per level and its mean; plus training curves (length, entropy)."""
    acc, length, entropy = [], [], []
    for step in sorted(metrics):
        m = metrics[step]
        per = {str(lv): level_accuracy(m, lv) for lv in levels}
        if all(v is not None for v in per.values()):
            acc.append([step, per])
        if "response_length/mean" in m:
            length.append([step, float(m["response_length/mean"])])
        if "actor/entropy" in m:
            entropy.append([step, float(m["actor/entropy"])])
    return {"acc": acc, "response_length": length, "entropy": entropy}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_one(
    arm: str,
    seed: int,
    *,
    out: Path,
    settings: dict,
    data: BenchData,
    log: Callable[[str], None] = print,
    timeout_s: float = 900,
) -> dict:
    """Run (or reuse) one (arm, seed); returns its ``result.json`` content."""
    kind, preset = ARMS[arm]
    out = Path(out).resolve()
    run_dir = out / "runs" / arm / f"seed{seed}"
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if kind == "sft":
        from prefix_rft.cpu.sft import run_sft

        res = run_sft(
            data.sft,
            data.model,
            run_dir,
            epochs=settings["sft_epochs"],
            batch_size=settings["sft_batch_size"],
            lr=settings["lr"],
            seed=seed,
            max_length=settings["max_prompt_length"] + settings["max_response_length"] + 8,
            timeout_s=timeout_s,
            env={**os.environ, **RUN_ENV},
        )
        result = {
            "arm": arm,
            "seed": seed,
            "hf_model_dir": res.hf_model_dir,
            "sft_steps": res.steps,
            "sft_loss": [[s, m.get("train/loss")] for s, m in sorted(res.metrics.items())],
        }
    else:
        model = data.model
        if kind == "sft_rl":
            model = run_one("sft", seed, out=out, settings=settings, data=data, log=log)["hf_model_dir"]
        res = run_recipe(
            rl_overrides(settings, data, model, preset, seed, run_dir),
            workdir=run_dir,
            tag="train",
            timeout_s=timeout_s,
            env={**os.environ, **RUN_ENV},
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"{arm} seed {seed} failed (exit {res.returncode}); log: {res.log_file}\n{res.log_tail(40)}"
            )
        result = {
            "arm": arm,
            "seed": seed,
            "model": model,
            **curves(res.metrics, settings["eval_levels"]),
            "prefix_rft": {
                s: {k: v for k, v in m.items() if k.startswith("prefix_rft/")}
                for s, m in sorted(res.metrics.items())
            },
        }
    result["wall_s"] = time.monotonic() - start
    _write_json(done, result)
    return result


def finished(out: Path, runs: list[tuple[str, int]]) -> dict[tuple[str, int], dict]:
    """The results of the runs of ``runs`` that have finished under ``out`` (their ``result.json``)."""
    out = Path(out).resolve()
    done = {}
    for arm, seed in runs:
        path = out / "runs" / arm / f"seed{seed}" / "result.json"
        if path.exists():
            done[(arm, seed)] = json.loads(path.read_text())
    return done


def plan(arms=None, seeds=None) -> list[tuple[str, int]]:
    """The (arm, seed) runs of the matrix, in execution order (SFT before SFT->RFT)."""
    arms = (
        [a for a in ARMS if ARMS[a][0] != "base"]
        if arms is None
        else [a for a in arms if ARMS[a][0] != "base"]
    )
    seeds = SETTINGS["seeds"] if seeds is None else seeds
    return [(a, s) for s in seeds for a in arms]


def run_matrix(
    out: Path,
    settings: dict,
    data: BenchData,
    runs: list[tuple[str, int]],
    log: Callable[[str], None] = print,
) -> dict[tuple[str, int], dict]:
    """Run every (arm, seed), ``settings["parallel_runs"]`` at a time, with a progress line per run and an
    ETA; finished runs are skipped. SFT runs go first (SFT->RFT starts from their checkpoints)."""
    from concurrent.futures import ThreadPoolExecutor

    out = Path(out).resolve()

    def is_done(arm: str, seed: int) -> bool:
        return (out / "runs" / arm / f"seed{seed}" / "result.json").exists()

    results: dict[tuple[str, int], dict] = {}
    start = time.monotonic()
    todo = [r for r in runs if not is_done(*r)]
    for arm, seed in runs:
        if is_done(arm, seed):
            log(f"[bench-learning] {arm} seed {seed}: done, skipped")
            results[(arm, seed)] = run_one(arm, seed, out=out, settings=settings, data=data)
    finished: list[float] = []

    failed: list[str] = []

    def one(run: tuple[str, int]) -> None:
        arm, seed = run
        t = time.monotonic()
        log(f"[bench-learning] start {arm} seed {seed}")
        try:
            results[run] = run_one(arm, seed, out=out, settings=settings, data=data, log=log)
        except Exception as e:  # one failed run must not lose the others: reported, left out of the table
            failed.append(f"{arm} seed {seed}")
            log(f"[bench-learning] FAILED {arm} seed {seed}: {e}")
        finished.append(time.monotonic() - t)
        left = len(todo) - len(finished)
        eta = statistics.fmean(finished) * left / max(1, settings.get("parallel_runs", 1))
        log(
            f"[bench-learning] done {len(finished)}/{len(todo)}: {arm} seed {seed} in {finished[-1]:.0f}s; "
            f"elapsed {time.monotonic() - start:.0f}s, ~{eta / 60:.1f} min left"
        )

    # SFT first and one at a time (each is a torchrun job); then the RL runs, `parallel_runs` at a time,
    # ordered so that RFT and Prefix-RFT of every seed finish first
    for run in [r for r in todo if ARMS[r[0]][0] == "sft"]:
        one(run)
    priority = {arm: i for i, arm in enumerate(RUN_ORDER)}
    rl = sorted(
        (r for r in todo if ARMS[r[0]][0] != "sft"), key=lambda r: (priority[r[0]] > 1, r[1], priority[r[0]])
    )
    with ThreadPoolExecutor(max_workers=max(1, settings.get("parallel_runs", 1))) as pool:
        list(pool.map(one, rl))
    if failed:
        log(f"[bench-learning] {len(failed)} run(s) failed: {', '.join(failed)} (rerun to retry them)")
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def final_accuracy(result: dict) -> dict[str, float]:
    """Accuracy per level at the last validated step of an RL run."""
    return dict(result["acc"][-1][1])


def aggregate(results: dict[tuple[str, int], dict], settings: dict, wall_s: float, command: str) -> dict:
    """The ``docs/results/cpu_learning.json`` layout: settings, base accuracy, and per arm the per-seed
    accuracies, their mean and std, and the mean curve of held-out accuracy (mean over levels) vs step."""
    levels = [str(lv) for lv in settings["eval_levels"]]
    seeds = sorted({s for _, s in results})

    def summarize(per_seed: list[dict[str, float]]) -> dict:
        mean, std = {}, {}
        for lv in [*levels, "avg"]:
            vals = [p[lv] for p in per_seed]
            mean[lv], std[lv] = _mean_std(vals)
        return {"mean": mean, "std": std}

    def with_avg(acc: dict[str, float]) -> dict[str, float]:
        return {
            **{lv: float(acc[lv]) for lv in levels},
            "avg": statistics.fmean(float(acc[lv]) for lv in levels),
        }

    def mean_curve(runs: list[dict], only: str | None = None) -> list[list[float]]:
        by_step: dict[int, list[float]] = {}
        for r in runs:
            for step, per in r["acc"]:
                value = float(per[only]) if only else statistics.fmean(float(per[lv]) for lv in levels)
                by_step.setdefault(int(step), []).append(value)
        return [[s, statistics.fmean(v)] for s, v in sorted(by_step.items()) if len(v) == len(runs)]

    arms: dict[str, dict] = {}
    # base: step-0 validation of the RFT runs (the base model, before any update)
    base_runs = [results[("rft", s)] for s in seeds if ("rft", s) in results]
    base_per_seed = [with_avg(r["acc"][0][1]) for r in base_runs]
    if base_per_seed:
        arms["base"] = {"seeds": seeds, "per_seed": base_per_seed, **summarize(base_per_seed), "curve": []}
    # sft: step-0 validation of the SFT->RFT runs (the merged SFT checkpoint, before any RL update)
    sft_runs = [results[("sft_rft", s)] for s in seeds if ("sft_rft", s) in results]
    if sft_runs:
        per = [with_avg(r["acc"][0][1]) for r in sft_runs]
        arms["sft"] = {"seeds": seeds, "per_seed": per, **summarize(per), "curve": []}
    for arm, (kind, _) in ARMS.items():
        if kind not in ("rl", "sft_rl"):
            continue
        runs = [results[(arm, s)] for s in seeds if (arm, s) in results]
        if not runs:
            continue
        per = [with_avg(final_accuracy(r)) for r in runs]
        arms[arm] = {
            "seeds": [r["seed"] for r in runs],
            "per_seed": per,
            **summarize(per),
            "curve": mean_curve(runs),
            "curve_by_level": {lv: mean_curve(runs, lv) for lv in levels},
            "response_length": _mean_series([r["response_length"] for r in runs]),
            "entropy": _mean_series([r["entropy"] for r in runs]),
            "kept_frac": _mean_series([_metric_series(r, "prefix_rft/kept_frac") for r in runs]),
            "prefix_token_frac": _mean_series(
                [_metric_series(r, "prefix_rft/prefix_token_frac") for r in runs]
            ),
        }
    base_acc = arms.get("base", {}).get("mean", {})
    return {"settings": settings, "base": base_acc, "arms": arms, "wall_s": wall_s, "command": command}


def _metric_series(result: dict, key: str) -> list[list[float]]:
    return [
        [int(s), float(m[key])]
        for s, m in sorted(result.get("prefix_rft", {}).items(), key=lambda x: int(x[0]))
        if key in m and m[key] == m[key]
    ]


def _mean_series(series: list[list[list[float]]]) -> list[list[float]]:
    by: dict[int, list[float]] = {}
    for s in series:
        for step, v in s:
            by.setdefault(int(step), []).append(float(v))
    return [[k, statistics.fmean(v)] for k, v in sorted(by.items()) if len(v) == len(series)]


ARM_TITLES = {
    "base": "base (no training)",
    "sft": "SFT (verl SFT trainer)",
    "rft": "RFT (Dr.GRPO)",
    "sft_rft": "SFT → RFT",
    "rl_sft_loss": "RL + SFT loss",
    "luffy": "LUFFY",
    "prefix_rft": "**Prefix-RFT**",
    "all_demo_tokens": "ablation: all demo tokens",
    "exclude_prefix": "ablation: exclude prefix",
}


def markdown_table(report: dict) -> str:
    """The paper-layout table: one row per arm, one column per level and the average, mean ± std."""
    levels = [str(lv) for lv in report["settings"]["eval_levels"]]
    ood = str(max(report["settings"]["eval_levels"]))
    head = ["method"] + [f"{lv}-digit" + (" (OOD)" if lv == ood else "") for lv in levels] + ["avg", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ARMS:
        if arm not in report["arms"]:
            continue
        a = report["arms"][arm]
        cells = [f"{100 * a['mean'][k]:.1f} ± {100 * a['std'][k]:.1f}" for k in [*levels, "avg"]]
        lines.append("| " + " | ".join([ARM_TITLES[arm], *cells, str(len(a["per_seed"]))]) + " |")
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """``cpu_learning.json``, ``cpu_learning.md`` and the PNGs under ``out_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "cpu_learning.json"]
    _write_json(paths[0], report)
    train_level = str(min(int(k) for k in report["settings"]["train_levels"]))
    figs = {
        "cpu_learning_accuracy.png": (
            ("curve_by_level", train_level),
            f"held-out {train_level}-digit accuracy (mean over seeds)",
        ),
        "cpu_learning_length.png": ("response_length", "response length (tokens, training rollouts)"),
        "cpu_learning_entropy.png": ("entropy", "policy entropy (training tokens)"),
    }
    for name, (key, ylabel) in figs.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for arm, a in report["arms"].items():
            pts = a.get(key[0], {}).get(key[1]) if isinstance(key, tuple) else a.get(key)
            pts = pts or []
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(
                xs,
                ys,
                marker="o" if isinstance(key, tuple) else None,
                ms=3,
                lw=2.4 if arm == "prefix_rft" else 1.3,
                label=ARM_TITLES[arm].strip("*"),
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        paths.append(out_dir / name)
    md = out_dir / "cpu_learning.md"
    md.write_text(_markdown_report(report))
    paths.append(md)
    return paths


def _markdown_report(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Prefix-RFT at CPU scale: held-out accuracy per level (verl's real trainers)",
        "",
        f"Produced by `{report['command']}` ({report['wall_s'] / 60:.0f} min of runs, 2 at a time) on a 2-core "
        "CPU machine (no GPU), shared with other jobs while it ran.",
        "Accuracy (%) on held-out problems per difficulty level (digits per operand), mean ± std over seeds "
        f"{s['seeds']}, at the last step ({s['steps']}); validation sampling at the recipe's temperature 0.6.",
        "",
        markdown_table(report),
        "",
        *(
            [
                "Not run (the session ran out of time; `make bench-learning` runs only these): "
                + ", ".join(report["not_run"])
                + ".",
                "",
            ]
            if report.get("not_run")
            else []
        ),
        "![held-out accuracy vs step](cpu_learning_accuracy.png)",
        "",
        "![response length vs step](cpu_learning_length.png) ![entropy vs step](cpu_learning_entropy.png)",
        "",
        "## Settings (fixed before any result was seen; the same for every arm)",
        "",
        "```json",
        json.dumps(s, indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"


def fmt_pct(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


__all__ = [
    "SETTINGS",
    "ARMS",
    "CPU_OVERRIDES",
    "aggregate",
    "build_data",
    "plan",
    "run_matrix",
    "write_report",
]
