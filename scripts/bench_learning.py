"""``make bench-learning``: the paper's comparison at CPU scale through verl's real trainers.

Phase 1, the sweeps (dev split): the RL learning rate on RFT, the SFT learning rate on SFT
(``benchmarks.learning.SWEEPS``). Phase 2, the comparison (test split): every arm x 3 seeds at the values
the sweeps chose (``SELECTION_RULE``). Finished runs are skipped (their JSON under
``docs/results/learning/``), so an interrupted benchmark resumes, on this machine or another. Writes
``docs/results/cpu_learning.{json,md}`` and the PNGs (``--report-dir``).

    python scripts/bench_learning.py                       # sweeps, then the matrix
    python scripts/bench_learning.py --phase sweeps        # the sweeps only
    python scripts/bench_learning.py --arms rft prefix_rft --seeds 0
    python scripts/bench_learning.py --quick               # a smoke test (tiny sizes, outputs/ only)
    python scripts/bench_learning.py --ci                  # what make test checks (~5 min, outputs/ only)

It ends with one ``RESULT <arm>_<level>=<mean accuracy>`` line per arm. ``--quick`` and ``--ci`` start afresh in
their own folder (``outputs/bench_learning_{quick,ci}``, or a new or empty ``--work-dir``), which also holds their
report, and exit 1 when a run failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

# the repository root (benchmarks/, verl_cpu/): these modules are not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import learning as L  # noqa: E402
from benchmarks.fixtures.base_model import build_base_model  # noqa: E402

#: Written into the folder of a ``--quick`` / ``--ci`` run: only a folder holding it (or empty) is emptied by the next.
MARKER = ".bench_learning_check"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=["all", "sweeps", "matrix"], default="all")
    p.add_argument("--report-dir", default="docs/results", help="where the JSON, markdown and PNGs go")
    p.add_argument("--results-dir", default=str(L.RESULTS_DIR), help="per-run result JSONs (committed)")
    p.add_argument("--work-dir", default=str(L.WORK_DIR), help="logs, checkpoints, SFT models")
    p.add_argument("--arms", nargs="+", choices=list(L.ARMS), default=None, help="subset of arms")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="subset of seeds")
    p.add_argument("--parallel", type=int, default=L.SETTINGS["parallel_runs"], help="runs at a time")
    small = p.add_mutually_exclusive_group()
    small.add_argument(
        "--quick", action="store_true", help="smoke sizes: base + rft + prefix_rft, 1 seed, 2 steps"
    )
    small.add_argument(
        "--ci",
        action="store_true",
        help="make test's learning check: the comparison's base, seed-0 RFT and its shuffled-reward control "
        "(tuned settings, 32 steps), validated on the 2-digit test problems at the end",
    )
    p.add_argument(
        "--report-only", action="store_true", help="write the report from finished runs, run nothing"
    )
    args = p.parse_args(argv)
    if args.ci:  # make test's check: its arms, seed 0, nothing else
        for flag, given in (("--arms", args.arms), ("--seeds", args.seeds), ("--phase", args.phase != "all")):
            if given:
                p.error(f"--ci runs {', '.join(L.CI_ARMS)} with seed 0; {flag} does not apply")
    elif args.quick and args.phase != "all":
        p.error("--quick runs its own small comparison; --phase does not apply")
    results_dir, work_dir, report_dir = Path(args.results_dir), Path(args.work_dir), Path(args.report_dir)
    log = lambda s: print(s, flush=True)  # noqa: E731
    tuned = L.tuned_settings(results_dir=results_dir) if args.ci else None
    if args.ci and tuned is None:
        log(
            f"[bench-learning] --ci runs at the tuned settings: the sweeps' results under {results_dir} are missing"
        )
        return 1
    start = time.monotonic()
    model = build_base_model()
    if args.quick or args.ci:
        name = "ci" if args.ci else "quick"
        if args.ci:
            settings, arms = L.ci_settings(tuned), list(L.CI_ARMS)
        else:
            settings, arms = (
                {**copy.deepcopy(L.SETTINGS), **L.QUICK},
                args.arms or ["base", "rft", "prefix_rft"],
            )
        own = work_dir.resolve() != L.WORK_DIR.resolve()  # else this size's own folder under outputs/
        results_dir = work_dir = (
            work_dir.resolve() if own else L.REPO_ROOT / "outputs" / f"bench_learning_{name}"
        )
        if not args.report_only:  # a check starts afresh: stale results must not stand in for a run
            marker = work_dir / MARKER
            if own and work_dir.is_dir() and any(work_dir.iterdir()) and not marker.exists():
                p.error(
                    f"--work-dir {work_dir} holds files this script did not write: name a new or empty folder"
                )
            shutil.rmtree(work_dir, ignore_errors=True)
            work_dir.mkdir(parents=True)
            marker.write_text(f"written by scripts/bench_learning.py --{name}; emptied by its next run\n")
        if args.report_dir == p.get_default("report_dir"):
            report_dir = work_dir / "report"
        runs = L.matrix_runs(settings, arms, args.seeds)
        data = L.build_data(work_dir / "matrix", settings, model, "test")
        if not args.report_only:
            L.run_many(
                runs, data, parallel=args.parallel, results_dir=results_dir, work_dir=work_dir, log=log
            )
        done = L.finished(runs, results_dir)
        _report(
            L.aggregate(done, settings, {}, time.monotonic() - start, f"bench_learning.py --{name}"),
            report_dir,
            log,
        )
        missing = [r.name for r in runs if r not in done]
        if missing:
            log(f"[bench-learning] not finished: {', '.join(missing)} (their logs are under {work_dir})")
        return 1 if missing else 0
    if args.phase in ("all", "sweeps") and not args.report_only:
        base = L.dev_base_run()
        data = L.build_data(work_dir / "sweep-base", base.settings, model, "dev", base.levels)
        L.run_many([base], data, parallel=1, results_dir=results_dir, work_dir=work_dir, log=log)
        for name in L.SWEEPS:
            runs = L.sweep_runs(name)
            data = L.build_data(work_dir / f"sweep-{name}", runs[0].settings, model, "dev", runs[0].levels)
            log(
                f"[bench-learning] sweep {name} on {L.SWEEPS[name]['arm']}: {[r.settings[name] for r in runs]}"
            )
            L.run_many(
                runs, data, parallel=args.parallel, results_dir=results_dir, work_dir=work_dir, log=log
            )
    settings = L.tuned_settings(results_dir=results_dir)
    if settings is None:
        log("[bench-learning] the sweeps are not finished: run `--phase sweeps` (or no --phase) first")
        return 1 if args.phase == "matrix" else 0
    log(
        f"[bench-learning] tuned: rl_lr={settings['rl_lr']:g}, sft_lr={settings['sft_lr']:g} ({L.SELECTION_RULE})"
    )
    runs = L.matrix_runs(settings, args.arms, args.seeds)
    if args.phase in ("all", "matrix") and not args.report_only:
        data = L.build_data(work_dir / "matrix", settings, model, "test")
        L.run_many(runs, data, parallel=args.parallel, results_dir=results_dir, work_dir=work_dir, log=log)
    if (
        args.phase in ("all", "matrix")
        and not args.report_only
        and (args.arms is None or "reference_rft" in args.arms)
    ):
        import subprocess

        for seed in settings["seeds"]:  # the independent loop: ~1 min a seed, skipped when its result exists
            if not (L.REFERENCE_DIR / f"rft_seed{seed}.json").exists():
                subprocess.run(
                    [sys.executable, "benchmarks/reference_grpo.py", "--benchmark", "--seed", str(seed)],
                    check=True,
                )
    all_runs = L.matrix_runs(settings)
    sweeps = {name: L.sweep_results(name, results_dir=results_dir) for name in L.SWEEPS}
    command = "python scripts/bench_learning.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.report_only:
        command = "make bench-learning, then " + command.strip()
    dev_base = L.finished([L.dev_base_run()], results_dir)
    report = L.aggregate(
        L.finished(all_runs, results_dir),
        settings,
        sweeps,
        time.monotonic() - start,
        command.strip(),
        dev_base=next(iter(dev_base.values()), None),
        reference=[json.loads(p.read_text()) for p in sorted(L.REFERENCE_DIR.glob("rft_seed*.json"))],
    )
    report["not_run"] = [r.name for r in all_runs if not r.result_path(results_dir).exists()]
    _report(report, report_dir, log)
    return 0


def _report(report: dict, report_dir: Path, log) -> None:
    """Write the report's files, then print its table and the ``RESULT`` lines."""
    for path in L.write_report(report, report_dir):
        log(f"[bench-learning] wrote {path}")
    print(L.markdown_table(report))
    for line in L.result_lines(report):
        print(line)


if __name__ == "__main__":
    raise SystemExit(main())
