"""CPU demo (``make demo``): a real Prefix-RFT training run through verl 0.9.1's v1 trainer, no GPU.

Builds a tiny 2-layer Qwen2 + tokenizer and a synthetic arithmetic task (train rows carry one worked
demonstration each), then runs the recipe entry point ``recipe/prefix_rft/main_prefix_rft.py`` with the
recipe's own config plus overrides only: CPU hardware knobs (``prefix_rft.cpu.launch.CPU_OVERRIDES``) and the
tiny sizes. It trains ``--steps`` steps (validation and a checkpoint at the end), showing a progress bar and
then a per-step table of the ``prefix_rft/`` metrics.

    python scripts/cpu_demo.py                  # 5 steps, outputs under outputs/cpu_demo
    python scripts/cpu_demo.py --overwrite      # a previous run there is refused unless asked
    python scripts/cpu_demo.py --steps 8 --num-prefixed 0     # plain RFT
    python scripts/cpu_demo.py -- prefix_rft.entropy_clip.top_ratio=0.5   # any recipe override after --

See docs/CPU.md for how verl is made to run on CPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from prefix_rft.cpu.launch import (
    build_demo_assets,
    demo_overrides,
    format_table,
    run_recipe,
    summary_header,
    summary_row,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; anything after ``--`` is passed to the recipe as hydra overrides."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="training steps (default 5)")
    p.add_argument("--out", default="outputs/cpu_demo", help="work dir: assets, logs, checkpoints")
    p.add_argument(
        "--num-prefixed",
        type=int,
        default=1,
        help="rollouts per prompt that start from a demo prefix (0 = plain RFT)",
    )
    p.add_argument("--rollout-n", type=int, default=4, help="rollouts per prompt (default 4)")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per step (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--keep", action="store_true", help="keep an existing --out dir (resume from its checkpoint)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing --out dir (its checkpoints included) and start afresh",
    )
    p.add_argument("--verbose", action="store_true", help="stream verl's console output")
    p.add_argument("--timeout", type=float, default=900.0, help="kill the run after this many seconds")
    p.add_argument("overrides", nargs="*", help="extra hydra overrides for the recipe (after --)")
    return p.parse_args(argv)


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
    "score": "mean reward of all rollouts",
    "step_s": "wall seconds of the step",
}
"""Meaning of each column of the summary table (printed under it)."""


def legend_lines(header: list[str], num_prefixed: int, rollout_n: int) -> list[str]:
    """The table's legend and one line saying what the run shows."""
    lines = ["columns: " + "; ".join(f"{title} = {LEGEND[title]}" for title in header)]
    if num_prefixed > 0:
        lines.append(
            f"what this run shows: {num_prefixed} of {rollout_n} rollouts per prompt start from a demo prefix "
            "whose length follows the schedule (low_t, ratio), its demo tokens are trained with entropy "
            "clipping (kept%) and every rollout shares one reward baseline; a few CPU steps of a tiny model "
            "show the machinery working end to end, not learning (scores are noise)"
        )
    else:
        lines.append(
            f"what this run shows: plain RFT ({rollout_n} on-policy rollouts per prompt, no demo prefix) "
            "through the same trainer; a few CPU steps of a tiny model show the machinery, not learning"
        )
    return lines


def prepare_out_dir(out: Path, *, keep: bool, overwrite: bool) -> str | None:
    """Make ``out`` ready; an error message when it holds a previous run and neither flag asks what to do."""
    if keep and overwrite:
        return "--keep and --overwrite contradict each other: pick one"
    if out.exists() and any(out.iterdir()) and not keep:
        if not overwrite:
            ckpts = len(list((out / "checkpoints").glob("global_step_*")))
            return (
                f"{out} holds a previous run ({ckpts} checkpoint(s)). Pass --overwrite to delete it, --keep to "
                "resume from it, or --out <another dir> (make demo DEMO_ARGS=--overwrite)"
            )
        shutil.rmtree(out)
    return None


def main(argv: list[str] | None = None) -> int:
    """Build assets, train, print the summary; returns the process exit code."""
    args = parse_args(argv)
    out = Path(args.out).resolve()
    problem = prepare_out_dir(out, keep=args.keep, overwrite=args.overwrite)
    if problem is not None:
        print(f"[cpu_demo] error: {problem}", file=sys.stderr)
        return 2
    print(f"[cpu_demo] building tiny model + synthetic math data in {out}")
    assets = build_demo_assets(out / "assets", seed=args.seed)
    overrides = demo_overrides(
        assets,
        steps=args.steps,
        ckpt_dir=out / "checkpoints",
        batch_size=args.batch_size,
        rollout_n=args.rollout_n,
        seed=args.seed,
    ) + [f"prefix_rft.num_prefixed={args.num_prefixed}", *args.overrides]

    print(
        f"[cpu_demo] launching verl's trainer (recipe/prefix_rft/main_prefix_rft.py), {args.steps} steps; "
        f"log: {out / 'train.log'}"
    )
    rows: list[list[str]] = []
    bar = tqdm(total=args.steps, desc="train steps", unit="step", disable=args.verbose)
    bar.set_postfix_str("starting Ray + workers (~1 min)")

    def on_step(step: int, metrics: dict) -> None:
        rows.append(summary_row(step, metrics))
        bar.update(1)
        bar.set_postfix(
            score=f"{metrics.get('critic/score/mean', float('nan')):.2f}",
            low_t=f"{metrics.get('prefix_rft/ratio_low', float('nan')):.2f}",
        )

    result = run_recipe(
        overrides, workdir=out, on_step=on_step, timeout_s=args.timeout, stream=args.verbose, tag="train"
    )
    bar.close()
    if result.returncode != 0:
        print(result.log_tail(80), file=sys.stderr)
        print(
            f"[cpu_demo] FAILED (exit {result.returncode}) after {result.wall_s:.0f}s; full log: {result.log_file}",
            file=sys.stderr,
        )
        return result.returncode or 1

    print()
    print(format_table(rows, summary_header()))
    for line in legend_lines(summary_header(), args.num_prefixed, args.rollout_n):
        print(line)
    last = result.metrics.get(max(result.metrics), {}) if result.metrics else {}
    val = {k: v for k, v in last.items() if k.startswith("val-core/")}
    for k, v in sorted(val.items()):
        print(f"validation {k}: {v:.3f}")
    ckpts = sorted((out / "checkpoints").glob("global_step_*"))
    print(f"checkpoint: {ckpts[-1] if ckpts else 'none'}")
    print(f"[cpu_demo] done in {result.wall_s:.0f}s (metrics: {out / 'train.metrics.jsonl'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
