"""Every benchmark entry point but the learning benchmark runs at its ``--quick`` size and prints every figure it
promises.

A benchmark that breaks (an API change, a new start-up check) fails here, not for a user reading the
README's Performance table. Each entry runs as a subprocess, exactly as the README / Makefile run it, and
must print one ``RESULT <name>=<value>`` line per promised figure, every value finite (ratios also > 0).

To add a benchmark, add one :class:`Bench` to :data:`BENCHES`: its command with ``--quick``, the figures it
promises and, if any, the bounds a figure must respect whatever the machine load. ``scripts/bench_learning.py``
is not here: tests/test_learning_cpu.py runs its ``--ci`` size (its figures, report and the margins it must
clear); its ``--quick`` size shares that code path (``make bench-learning QUICK=1``).

The e2e entry launches Ray twice (about 2.5 minutes on an idle 2-core machine); its id contains ``e2e`` so the fast unit
pass (``-k "not e2e"``) deselects it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import pytest
from conftest import parse_results, run_benchmark


@dataclass(frozen=True)
class Bench:
    """One benchmark entry point at its quick size."""

    cmd: list[str]
    figures: tuple[str, ...]
    #: figure -> (low, high): bounds independent of machine load (e.g. peak-memory ratios on CPU)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    timeout_s: int = 300


def _each(prefixes, suffixes):
    return tuple(f"{p}_{s}" for p in prefixes for s in suffixes)


BENCHES = {
    "bench_core": Bench(
        cmd=[sys.executable, "scripts/bench_core.py", "--threads", "1", "--quick"],
        figures=_each(("selection_small", "selection_large", "loss"), ("ours_ms", "baseline_ms", "ratio"))
        + ("selection_small_tokens", "selection_large_tokens"),
    ),
    "bench_loss": Bench(
        cmd=[sys.executable, "scripts/bench_loss.py", "--threads", "1", "--quick"],
        figures=_each(
            ("hybrid", "plain"),
            ("prefix_rft_ms", "verl_ms", "prefix_rft_peak_mib", "verl_peak_mib", "time_ratio", "peak_ratio"),
        ),
        # CPU peak memory is deterministic: the hybrid loss stays within 10% of ppo_loss's, and the
        # plain path (num_prefixed=0) is ppo_loss itself.
        bounds={"hybrid_peak_ratio": (1.0, 1.10), "plain_peak_ratio": (1.0, 1.0)},
    ),
    "bench_e2e_cpu": Bench(
        cmd=["bash", "scripts/bench_e2e_cpu.sh", "--quick"],
        figures=_each(("rft", "prefix_rft"), ("step_s", "gen_s", "decoded_per_step", "score"))
        + (
            "step_time_ratio",
            "prefix_rft_decoded_per_prefixed",
            "prefix_rft_decoded_per_on_policy",
            "decoded_prefixed_over_on_policy",
        ),
        bounds={"rft_score": (0.0, 1.0), "prefix_rft_score": (0.0, 1.0)},
        timeout_s=1200,  # ~2.5 min on an idle 2-core machine; 7-10 min when it is shared and loaded
    ),
}


def test_parse_results():
    text = "table\nRESULT a_ratio=1.05\nnoise RESULT b=2\nRESULT c=nan\n"
    assert parse_results(text) == {"a_ratio": 1.05, "c": pytest.approx(float("nan"), nan_ok=True)}
    with pytest.raises(AssertionError, match="RESULT a printed twice"):
        parse_results("RESULT a=1\nRESULT a=2\n")


@pytest.mark.parametrize("name", list(BENCHES))
def test_quick_benchmark_prints_every_figure(name):
    bench = BENCHES[name]
    stdout = run_benchmark(bench.cmd, bench.timeout_s)
    results = parse_results(stdout)
    missing = [f for f in bench.figures if f not in results]
    assert not missing, f"{name} did not print RESULT lines for {missing}:\n{stdout[-4000:]}"
    assert set(results) == set(bench.figures), (
        f"unlisted figures: {sorted(set(results) - set(bench.figures))}"
    )
    for figure in bench.figures:
        value = results[figure]
        assert math.isfinite(value), f"{name}: {figure}={value} is not finite"
        if figure.endswith(("_ratio", "_ms", "_mib", "_s", "_tokens")):
            assert value > 0, f"{name}: {figure}={value} must be > 0"
    for figure, (low, high) in bench.bounds.items():
        assert low <= results[figure] <= high, f"{name}: {figure}={results[figure]} outside [{low}, {high}]"
