"""CPU demo (``make demo``): Prefix-RFT learns, through verl 0.9.1's v1 trainer, no GPU (2.5-6 min on 2 cores).

It trains the learning benchmark's pretrained base model (a small Qwen2 that partly solves multi-digit
addition; :func:`benchmarks.fixtures.base_model.build_base_model`, built once in 1-2 min and cached under
``outputs/learning_base``) with the recipe entry point ``recipe/prefix_rft/main_prefix_rft.py``, the
``prefix_rft`` preset (the paper's method) and the benchmark's own settings and overrides
(:mod:`benchmarks.learning`: 8 prompts x 8 rollouts per step, one of them prefixed, train prompts of 2 and
3 digits with one worked demonstration each, the RL learning rate chosen by the benchmark's sweep). verl
validates on held-out **test** problems (64 per level, 2 and 3 digits) before the first step and after the
last one: avg@4 at temperature 0.6, seeded (``prefix_rft.val_seed``), so the "before" number is the same on
every run. It prints a progress bar, the per-step table of the ``prefix_rft/`` metrics with a legend, and the
held-out accuracy before -> after per level with its sampling noise. No checkpoint is written.

    python scripts/cpu_demo.py                  # 16 steps, outputs under outputs/cpu_demo
    python scripts/cpu_demo.py --overwrite      # a previous run there is refused unless asked
    python scripts/cpu_demo.py --num-prefixed 0                # plain RFT from the same base, same settings
    python scripts/cpu_demo.py -- prefix_rft.entropy_clip.top_ratio=0.5   # any recipe override after --

One run is one seed of one method: the comparison with RFT, SFT and the controls (3 seeds each) is
``make bench-learning`` (docs/LEARNING.md). See docs/CPU.md for how verl is made to run on CPU.
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

# the repository root (benchmarks/, verl_cpu/): these modules are not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import learning as L  # noqa: E402
from benchmarks.fixtures.base_model import build_base_model  # noqa: E402
from benchmarks.launch import REPO_ROOT, format_table, run_recipe, summary_header, summary_row  # noqa: E402

#: RL learning rate used while the benchmark's sweep (``make bench-learning``, ``SWEEPS["rl_lr"]``) has not
#: chosen one (one of the values it tries). Once the sweep has finished on this checkout (its result JSONs
#: under docs/results/learning/), :func:`benchmarks.learning.tuned_settings` supplies the chosen value.
DEMO_RL_LR = 3e-5

#: Demo sizes on top of the benchmark's settings: fewer steps and held-out rows, so that a run fits in ~5 min.
DEMO_STEPS = 16
DEMO_EVAL_ROWS_PER_LEVEL = 64
DEMO_LEVELS = (2, 3)  # the trained levels, test split
DEMO_ARM = "prefix_rft"

#: Where the benchmark's base model is cached (shared with ``make bench-learning``).
BASE_MODEL_ROOT = REPO_ROOT / "outputs" / "learning_base"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; anything after ``--`` is passed to the recipe as hydra overrides."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default {DEMO_STEPS})")
    p.add_argument("--out", default="outputs/cpu_demo", help="work dir: data, logs, validation generations")
    p.add_argument(
        "--num-prefixed",
        type=int,
        default=1,
        help="rollouts per prompt that start from a demo prefix (default 1, the paper's; 0 = plain RFT)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="training seed (validation sampling stays seeded at 0)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing --out dir (a previous run) and start afresh",
    )
    p.add_argument("--verbose", action="store_true", help="stream verl's console output")
    p.add_argument("--timeout", type=float, default=900.0, help="kill the run after this many seconds")
    p.add_argument("overrides", nargs="*", help="extra hydra overrides for the recipe (after --)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    return args


def demo_settings(steps: int, tuned: dict | None) -> tuple[dict, str]:
    """The benchmark's settings at demo size, with the sweep's RL learning rate (``tuned``, from
    :func:`benchmarks.learning.tuned_settings`) or :data:`DEMO_RL_LR` while there is none; and a line saying
    which learning rate is used and why."""
    s = copy.deepcopy(tuned if tuned is not None else L.SETTINGS)
    if tuned is not None and tuned.get("rl_lr") is not None:
        note = f"RL learning rate {s['rl_lr']:g}, chosen by the benchmark's sweep ({L.SELECTION_RULE})"
    else:
        s["rl_lr"] = DEMO_RL_LR
        note = (
            f"RL learning rate {DEMO_RL_LR:g} (DEMO_RL_LR): the benchmark's learning-rate sweep has not finished "
            "on this checkout (make bench-learning); its chosen value replaces this one once it has"
        )
    s.update(steps=steps, test_freq=steps, eval_rows_per_level=DEMO_EVAL_ROWS_PER_LEVEL)
    return s, note


def demo_overrides(settings: dict, data: L.BenchData, run_dir: Path, args: argparse.Namespace) -> list[str]:
    """The benchmark's overrides of one ``prefix_rft`` run (validation before the first step and after the
    last), then the demo's names, ``--num-prefixed`` and the user's overrides (later ones win)."""
    return [
        *L.rl_overrides(
            settings,
            data,
            data.model,
            DEMO_ARM,
            args.seed,
            run_dir,
            levels=list(DEMO_LEVELS),
            val_before_train=True,
        ),
        "trainer.project_name=prefix_rft_cpu",
        "trainer.experiment_name=cpu_demo",
        f"prefix_rft.num_prefixed={args.num_prefixed}",
        *args.overrides,
    ]


LEGEND = {
    "step": "global training step",
    "low_t": "lower bound of the prefix-ratio draw at this step (cosine schedule)",
    "ratio": "mean drawn prefix ratio of the hybrid rollouts",
    "pref%": "fraction of rollouts that start from a demo prefix",
    "demo_tok%": "fraction of response tokens that are demo tokens",
    "kept%": "fraction of demo tokens kept by entropy clipping (top_ratio)",
    "H_demo": "mean old-policy entropy on demo tokens",
    "H_cont": "mean old-policy entropy on generated tokens",
    "R_pref": "mean reward of hybrid rollouts",
    "R_onpol": "mean reward of on-policy rollouts",
    "cont_len": "mean generated tokens after the prefix",
    "score": "mean reward of all rollouts (training prompts)",
    "step_s": "wall seconds of the step",
}
"""Meaning of each column of the summary table (printed under it)."""


@dataclass
class Change:
    """Held-out avg@n of one level before the first step and after the last, and the sampling noise of the
    difference (two standard errors, paired by problem; ``None`` without verl's validation dump)."""

    before: float
    after: float
    noise: float | None = None

    @property
    def delta(self) -> float:
        return self.after - self.before


def before_after(metrics: dict[int, dict], levels, n: int) -> tuple[int, dict[str, Change]] | None:
    """The last validated step and, per level, verl's held-out avg@n at step 0 and at that step; ``None`` when
    the run did not validate before the first step and after it."""
    acc = L.curves(metrics, levels, n)["acc"]
    if len(acc) < 2 or acc[0][0] != 0:
        return None
    first, (last_step, last) = acc[0][1], acc[-1]
    return int(last_step), {str(lv): Change(float(first[str(lv)]), float(last[str(lv)])) for lv in levels}


def paired_noise(val_dir: Path, last_step: int, levels) -> dict[str, float]:
    """Per level, two standard errors of the change of held-out avg@n, paired by problem: the mean over the
    level's problems of (problem's avg after - its avg before), whose spread includes both the choice of
    problems and the sampling of each. Empty when the dumps are missing."""
    before, after = (Path(val_dir) / f"{step}.jsonl" for step in (0, last_step))
    if not (before.exists() and after.exists()):
        return {}
    b, a = L.problem_scores(before), L.problem_scores(after)
    out = {}
    for lv in levels:
        diffs = [
            statistics.fmean(a[q]) - statistics.fmean(b[q])
            for q in b
            if q in a and L.problem_level(q) == int(lv)
        ]
        if len(diffs) > 1:
            out[str(lv)] = 2 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return out


def accuracy_lines(changes: dict[str, Change], problems: int, n: int, temperature: float) -> list[str]:
    """The held-out accuracy before -> after per level, with the change and its noise (points)."""
    lines = [
        f"held-out accuracy, before training → after (test split: {problems} problems per level, never trained "
        f"on; avg@{n} at temperature {temperature:g}, seeded; ± = 2 standard errors of the change, paired by "
        "problem):"
    ]
    for lv, c in changes.items():
        noise = "" if c.noise is None else f" ± {100 * c.noise:.1f}"
        lines.append(
            f"  {lv}-digit: {100 * c.before:.1f}% → {100 * c.after:.1f}%  ({100 * c.delta:+.1f}{noise} points)"
        )
    return lines


def verdict(changes: dict[str, Change]) -> str:
    """What the held-out accuracy did, per level, judged against its noise."""
    parts = []
    for lv, c in changes.items():
        if c.noise is None:
            how = "changed by"
        elif c.delta > c.noise:
            how = "rose beyond sampling noise,"
        elif c.delta < -c.noise:
            how = "fell beyond sampling noise,"
        else:
            how = "moved within sampling noise,"
        parts.append(f"{lv}-digit {how} {100 * c.delta:+.1f} points")
    return "held-out accuracy: " + "; ".join(parts)


def legend_lines(
    header: list[str],
    num_prefixed: int,
    rollout_n: int,
    changes: dict[str, Change] | None,
    steps: int,
) -> list[str]:
    """The table's legend and one line saying what the run shows (its held-out accuracy change included)."""
    lines = ["columns: " + "; ".join(f"{title} = {LEGEND[title]}" for title in header)]
    if num_prefixed > 0:
        how = (
            f"Prefix-RFT from the pretrained base model: {num_prefixed} of {rollout_n} rollouts per prompt start "
            "from a demo prefix whose length follows the schedule (low_t, ratio), its demo tokens are trained "
            "with entropy clipping (kept%) and every rollout shares one reward baseline"
        )
    else:
        how = (
            f"plain RFT from the pretrained base model ({rollout_n} on-policy rollouts per prompt, no demo "
            "prefix) through the same trainer"
        )
    result = verdict(changes) if changes else "no held-out accuracy before and after (validation missing)"
    lines.append(
        f"what this run shows: {how}. After {steps} steps, {result}. One seed of one method: the comparison "
        "with RFT, SFT and the controls over 3 seeds is make bench-learning (docs/LEARNING.md)"
    )
    return lines


def prepare_out_dir(out: Path, *, overwrite: bool) -> str | None:
    """Make ``out`` ready; an error message when it holds a previous run and ``overwrite`` is not set."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            what = ", ".join(sorted(p.name for p in out.iterdir())[:4])
            return (
                f"{out} holds a previous run ({what}). Pass --overwrite to delete it, or --out <another dir> "
                "(make demo DEMO_ARGS=--overwrite)"
            )
        shutil.rmtree(out)
    return None


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the base model and the data, train, print the table and the accuracies; the exit code."""
    args = parse_args(argv)
    out = Path(args.out).resolve()
    problem = prepare_out_dir(out, overwrite=args.overwrite)
    if problem is not None:
        print(f"[cpu_demo] error: {problem}", file=sys.stderr)
        return 2
    start = time.monotonic()
    log = lambda s: print(s, flush=True)  # noqa: E731
    model = build_base_model(BASE_MODEL_ROOT, log=log)
    settings, lr_note = demo_settings(args.steps, L.tuned_settings())
    log(f"[cpu_demo] base model: {model}")
    log(f"[cpu_demo] {lr_note}")
    data = L.build_data(out, settings, model, split="test", levels=list(DEMO_LEVELS))
    overrides = demo_overrides(settings, data, out, args)
    n_val, problems = settings["val_n"], settings["eval_rows_per_level"]
    log(
        f"[cpu_demo] launching verl's trainer (recipe/prefix_rft/main_prefix_rft.py, +preset={DEMO_ARM}), "
        f"{args.steps} steps of {settings['batch_size']} prompts x {settings['rollout_n']} rollouts, held-out "
        f"validation before and after; log: {out / 'train.log'}"
    )
    rows: list[list[str]] = []
    bar = tqdm(total=args.steps, desc="train steps", unit="step", disable=args.verbose)
    bar.set_postfix_str("starting Ray + workers, then validating the base model (1-4 min)")

    def on_step(step: int, metrics: dict) -> None:
        rows.append(summary_row(step, metrics))
        bar.update(1)
        bar.set_postfix(
            score=f"{metrics.get('critic/score/mean', float('nan')):.2f}",
            low_t=f"{metrics.get('prefix_rft/ratio_low', float('nan')):.2f}",
        )
        if step == args.steps - 1:
            bar.set_postfix_str("last step, then validating the trained model")

    result = run_recipe(
        overrides,
        workdir=out,
        env=L.run_env(DEMO_ARM, args.seed),
        on_step=on_step,
        timeout_s=args.timeout,
        stream=args.verbose,
        tag="train",
    )
    bar.close()
    if result.returncode != 0:
        print(result.log_tail(80), file=sys.stderr)
        print(
            f"[cpu_demo] FAILED (exit {result.returncode}) after {result.wall_s:.0f}s; full log: {result.log_file}",
            file=sys.stderr,
        )
        return result.returncode or 1

    validated = before_after(result.metrics, DEMO_LEVELS, n_val)
    changes = None
    if validated is not None:
        last_step, changes = validated
        for lv, band in paired_noise(out / "val_generations", last_step, DEMO_LEVELS).items():
            changes[lv].noise = band
    print()
    print(format_table(rows, summary_header()))
    for line in legend_lines(summary_header(), args.num_prefixed, settings["rollout_n"], changes, args.steps):
        print(line)
    print()
    if changes is None:
        print("[cpu_demo] the run did not validate before and after training; see the log", file=sys.stderr)
        return 1
    for line in accuracy_lines(changes, problems, n_val, settings["val_temperature"]):
        print(line)
    print(f"[cpu_demo] {lr_note}")
    print(
        f"[cpu_demo] done in {time.monotonic() - start:.0f}s, trainer {result.wall_s:.0f}s "
        f"(metrics: {out / 'train.metrics.jsonl'}; validation samples: {out / 'val_generations'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
