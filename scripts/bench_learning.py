"""``make bench-learning``: the paper's comparison at CPU scale through verl's real trainers.

Every arm of :data:`prefix_rft.cpu.learning.ARMS` x 3 seeds (``prefix_rft.cpu.learning.SETTINGS``), from the
cached task-pretrained base model; finished runs are skipped, so an interrupted benchmark resumes. Writes
``docs/results/cpu_learning.{json,md}`` and the PNGs (``--report-dir``).

    python scripts/bench_learning.py                       # the whole matrix (about an hour on 2 cores)
    python scripts/bench_learning.py --arms rft prefix_rft --seeds 0
    python scripts/bench_learning.py --quick               # 1 seed, rft + prefix_rft, 2 steps: a smoke test

It ends with one ``RESULT <arm>_avg=<mean accuracy over levels>`` line per arm.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

from prefix_rft.cpu import learning as L
from prefix_rft.testing.base_model import build_base_model

QUICK = {
    "steps": 2,
    "test_freq": 2,
    "eval_rows_per_level": 8,
    "batch_size": 4,
    "mini_batch_size": 2,
    "train_levels": {"2": 16, "3": 16},
    "seeds": [0],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/bench_learning", help="work dir (runs, data, logs)")
    p.add_argument("--report-dir", default="docs/results", help="where the JSON, markdown and PNGs go")
    p.add_argument(
        "--arms", nargs="+", choices=list(L.ARMS), default=None, help="subset of arms (default all)"
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="subset of seeds (default the settings')"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a seconds-to-minutes smoke size (rft + prefix_rft, 1 seed, 2 steps); report not written "
        "to docs/ unless --report-dir is given",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the finished runs under --out, run nothing",
    )
    args = p.parse_args(argv)
    settings = copy.deepcopy(L.SETTINGS)
    arms = args.arms
    report_dir = Path(args.report_dir)
    if args.quick:
        settings.update(QUICK)
        arms = arms or ["rft", "prefix_rft"]
        if args.report_dir == p.get_default("report_dir"):
            report_dir = Path(args.out) / "quick_report"
    if args.seeds is not None:
        settings["seeds"] = args.seeds
    out = Path(args.out).resolve() / L.settings_hash(settings)
    start = time.monotonic()
    model = build_base_model()
    data = L.build_data(out, settings, model)
    runs = L.plan(arms, settings["seeds"])
    if args.report_only:
        results = L.finished(out, runs)
        missing = [f"{a} seed {s}" for a, s in runs if (a, s) not in results]
        print(
            f"[bench-learning] report from {len(results)} finished runs; not run: {', '.join(missing) or 'none'}"
        )
    else:
        print(f"[bench-learning] {len(runs)} runs under {out}; base model {model}", flush=True)
        results = L.run_matrix(out, settings, data, runs, log=lambda s: print(s, flush=True))
    command = "python scripts/bench_learning.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    wall = time.monotonic() - start
    if args.report_only:  # the runs' own wall times, `parallel_runs` at a time
        wall = sum(float(r.get("wall_s", 0.0)) for r in results.values()) / max(1, settings["parallel_runs"])
        command = "make bench-learning, then " + command.strip()
    report = L.aggregate(results, settings, wall, command.strip())
    report["not_run"] = [f"{a} seed {s}" for a, s in runs if (a, s) not in results]
    paths = L.write_report(report, report_dir)
    print(L.markdown_table(report))
    for path in paths:
        print(f"[bench-learning] wrote {path}")
    for arm, a in report["arms"].items():
        print(f"RESULT {arm}_avg={a['mean']['avg']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
