"""Learning, not plumbing: Prefix-RFT's hybrid rollouts keep the policy learning where on-policy RL collapses.

From the cached task-pretrained base model (built here when missing, ~1 min on 2 cores), two short runs of the
recipe through verl's real v1 trainer, concurrently (one per core): Prefix-RFT (``+preset=prefix_rft``) and
RFT (``+preset=rft``), same seed, prompts and sizes. Each is the first :data:`STEPS` steps of the
corresponding run of ``make bench-learning`` (its :data:`prefix_rft.cpu.learning.SETTINGS`, the ratio
schedule decaying over the benchmark's length; validation on the 2-digit rows only), so the benchmark's 3
seeds measure the quantity this test asserts.

What the benchmark measured (docs/LEARNING.md): with ~3% of on-policy rollouts rewarded, RFT's updates are
dominated by negative advantages and its held-out accuracy falls to ~0 within 4-8 steps; Prefix-RFT's hybrid
rollouts are rewarded 40-100% of the time, and their positive advantage on the kept demo tokens and the
continuation keeps it solving problems. The test asserts the gap: held-out 2-digit accuracy averaged over the
validations at steps 4 and 8 (128 answers), Prefix-RFT minus RFT, at least :data:`MIN_MARGIN` = half the
smallest gap of the 3 measured seeds (:data:`MEASURED`).

The gap comes from the demo tokens' gradient: the benchmark's ``exclude_prefix`` arm (the same hybrid
rollouts, demo tokens given no gradient) collapses like RFT (docs/results/cpu_learning.md). So a demo-token
gradient that is lost (a keep-mask off the demo tokens, a prefix mask that never reaches the loss) or points
the wrong way, or hybrid rollouts that never reach the trainer, fail this test. The SFT->RL path starting from the SFT checkpoint is checked by ``tests/test_sft_cpu.py`` (exact
weight equality of the RL actor with the merged SFT model).
"""

from __future__ import annotations

import copy
import statistics
import threading
from pathlib import Path

from prefix_rft.cpu import learning as L
from prefix_rft.cpu.launch import run_recipe
from prefix_rft.testing.base_model import build_base_model

REPO = Path(__file__).resolve().parents[1]
LEVEL = 2
STEPS = 8
SEED = 0

#: Measured by ``make bench-learning`` (docs/results/cpu_learning.json), seeds 0, 1, 2: held-out 2-digit
#: accuracy averaged over the validations at steps 4 and 8.
MEASURED = {"prefix_rft": [0.1406, 0.2109, 0.1172], "rft": [0.0234, 0.0, 0.0156]}
MIN_MARGIN = 0.5 * min(p - r for p, r in zip(MEASURED["prefix_rft"], MEASURED["rft"], strict=True))  # 0.0508


def test_prefix_rft_keeps_solving_where_rft_collapses(tmp_path):
    settings = copy.deepcopy(L.SETTINGS)
    settings["eval_levels"] = [LEVEL]  # validation on the asserted level only (training is unchanged)
    model = build_base_model(REPO / "outputs" / "learning_base")
    data = L.build_data(tmp_path, settings, model)
    results: dict[str, object] = {}

    def run(preset: str) -> None:
        run_dir = tmp_path / "runs" / preset / f"seed{SEED}"
        ov = L.rl_overrides(settings, data, model, preset, SEED, run_dir, stop_at=STEPS)
        results[preset] = run_recipe(ov, workdir=run_dir, tag="train", timeout_s=900)

    threads = [threading.Thread(target=run, args=(p,)) for p in ("prefix_rft", "rft")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acc = {}
    for preset, res in results.items():
        assert res.returncode == 0, f"{preset} failed:\n{res.log_tail()}"
        curve = L.curves(res.metrics, settings["eval_levels"])["acc"]
        steps = [s for s, _ in curve]
        assert steps == [0, 4, STEPS], f"{preset}: validated steps {steps}"
        acc[preset] = statistics.fmean(per[str(LEVEL)] for s, per in curve if s > 0)
    margin = acc["prefix_rft"] - acc["rft"]
    assert margin >= MIN_MARGIN, (
        f"held-out {LEVEL}-digit accuracy (mean of steps 4 and {STEPS}): Prefix-RFT {acc['prefix_rft']:.3f}, "
        f"RFT {acc['rft']:.3f}; gap {margin:.3f} < {MIN_MARGIN:.3f}"
    )
