"""End-to-end CPU benchmark: plain RFT (``num_prefixed=0``) vs Prefix-RFT through verl's real trainer.

Run by ``scripts/bench_e2e_cpu.sh``. Both runs use the same seed, data, model, steps and sizes; only
``prefix_rft.num_prefixed`` differs. Reported per run (step 1 is excluded from timings: it includes
warm-up):

- mean step time and the Prefix-RFT / RFT ratio;
- tokens decoded per step (response tokens minus demo-prefix tokens: a prefix is prefilled, not decoded);
- tokens decoded per prefixed rollout (its continuation) and per on-policy rollout.

All numbers come from the trainer's own metrics (``response_length/mean``, ``prefix_rft/*``). The last
lines are machine-readable, one figure a line: ``RESULT <name>=<value>`` (:data:`RESULT_KEYS`).
``--quick`` (2 steps, 32-token responses) only checks that the benchmark runs: one timed step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.launch import build_demo_assets, demo_overrides, format_table, run_recipe

#: The figures printed as ``RESULT`` lines: per run (``rft_`` / ``prefix_rft_`` + key) ...
RUN_KEYS = ("step_s", "gen_s", "decoded_per_step", "score")
#: ... and across runs / within the Prefix-RFT run (each finite when both runs finished).
RATIO_KEYS = (
    "step_time_ratio",  # Prefix-RFT / RFT mean step time
    "prefix_rft_decoded_per_prefixed",
    "prefix_rft_decoded_per_on_policy",
    "decoded_prefixed_over_on_policy",  # hybrids decode only their continuation: < 1
)
RESULT_KEYS = tuple(f"{run}_{k}" for run in ("rft", "prefix_rft") for k in RUN_KEYS) + RATIO_KEYS


def result_lines(results: dict[str, dict[str, float]]) -> list[str]:
    """``RESULT name=value`` lines of :data:`RESULT_KEYS` from the two runs' :func:`summarize` output."""
    pre = results["prefix_rft"]
    values = {f"{run}_{k}": results[run][k] for run in ("rft", "prefix_rft") for k in RUN_KEYS}
    values["step_time_ratio"] = pre["step_s"] / results["rft"]["step_s"]
    values["prefix_rft_decoded_per_prefixed"] = pre["decoded_per_prefixed"]
    values["prefix_rft_decoded_per_on_policy"] = pre["decoded_per_on_policy"]
    values["decoded_prefixed_over_on_policy"] = pre["decoded_per_prefixed"] / pre["decoded_per_on_policy"]
    return [f"RESULT {k}={values[k]:.4f}" for k in RESULT_KEYS]


def decode_stats(m: dict, rows: int) -> dict[str, float]:
    """Decoded-token accounting of one step's metrics for a batch of ``rows`` rollouts.

    ``response_length/mean`` counts prefix + continuation tokens of every row; ``prefix_token_frac`` is the
    demo share of those; ``continuation_length`` is the mean continuation of prefixed rows.
    """
    total = float(m["response_length/mean"]) * rows
    prefix_tokens = float(m.get("prefix_rft/prefix_token_frac", 0.0)) * total
    decoded = total - prefix_tokens
    n_pref = round(float(m.get("prefix_rft/prefixed_frac", 0.0)) * rows)
    per_prefixed = float(m.get("prefix_rft/continuation_length", 0.0)) if n_pref else float("nan")
    n_on = rows - n_pref
    per_on_policy = (decoded - (per_prefixed * n_pref if n_pref else 0.0)) / n_on if n_on else float("nan")
    return {"decoded": decoded, "per_prefixed": per_prefixed, "per_on_policy": per_on_policy}


def summarize(metrics: dict[int, dict], rows: int) -> dict[str, float]:
    """Means over the timed steps (all but the first) of one run."""
    steps = sorted(s for s, m in metrics.items() if "timing_s/step" in m)
    if len(steps) < 2:
        raise RuntimeError(f"need at least 2 finished steps to time, got {steps}")
    timed = steps[1:]
    stats = [decode_stats(metrics[s], rows) for s in timed]

    def mean(key: str) -> float:
        vals = [s[key] for s in stats if s[key] == s[key]]  # drop NaN
        return statistics.fmean(vals) if vals else float("nan")

    return {
        "step_s": statistics.fmean(float(metrics[s]["timing_s/step"]) for s in timed),
        "gen_s": statistics.fmean(float(metrics[s].get("timing_s/gen", float("nan"))) for s in timed),
        "decoded_per_step": mean("decoded"),
        "decoded_per_prefixed": mean("per_prefixed"),
        "decoded_per_on_policy": mean("per_on_policy"),
        "score": statistics.fmean(float(metrics[s].get("critic/score/mean", float("nan"))) for s in timed),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both configurations and print the side-by-side table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rollout-n", type=int, default=4)
    p.add_argument("--max-response-length", type=int, default=64)
    p.add_argument("--out", default=None, help="work dir (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke size: 2 steps (1 timed), 32-token responses")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.max_response_length = 2, 32

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_e2e_cpu_")).resolve()
    assets = build_demo_assets(out / "assets", seed=args.seed)
    rows = args.batch_size * args.rollout_n
    results = {}
    for name, num_prefixed in (("rft", 0), ("prefix_rft", 1)):
        overrides = demo_overrides(
            assets,
            steps=args.steps,
            ckpt_dir=out / name / "ckpt",
            batch_size=args.batch_size,
            rollout_n=args.rollout_n,
            max_response_length=args.max_response_length,
            seed=args.seed,
            save_freq=-1,
            test_freq=-1,
            experiment_name=name,
        ) + [f"prefix_rft.num_prefixed={num_prefixed}"]
        print(f"[bench] {name}: {args.steps} steps ...", flush=True)
        res = run_recipe(overrides, workdir=out / name, tag=name, timeout_s=900)
        if res.returncode != 0:
            print(res.log_tail(60))
            raise SystemExit(f"[bench] {name} failed (exit {res.returncode}); log: {res.log_file}")
        results[name] = summarize(res.metrics, rows)
        print(f"[bench] {name}: done in {res.wall_s:.0f}s", flush=True)

    keys = ["step_s", "gen_s", "decoded_per_step", "decoded_per_prefixed", "decoded_per_on_policy", "score"]
    table = [[k] + [f"{results[n][k]:.3f}" for n in ("rft", "prefix_rft")] for k in keys]
    print()
    print(format_table(table, ["metric (mean over steps 2..N)", "RFT", "Prefix-RFT"]))
    ratio = results["prefix_rft"]["step_s"] / results["rft"]["step_s"]
    print(
        f"\nstep time ratio Prefix-RFT / RFT: {ratio:.3f}  "
        f"({rows} rollouts/step, max_response_length {args.max_response_length}, seed {args.seed})"
    )
    print("\n".join(result_lines(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
