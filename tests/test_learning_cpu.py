"""Learning, not plumbing: Prefix-RFT's hybrid rollouts keep the policy learning where on-policy RL collapses.

From the cached task-pretrained base model (built here when missing, ~1 min on 2 cores), two short runs of the
recipe through verl's real v1 trainer, concurrently (one per core): Prefix-RFT (``+preset=prefix_rft``) and
RFT (``+preset=rft``), same seed, prompts and sizes. Each is the first :data:`STEPS` steps of the
corresponding run of ``make bench-learning`` (its :data:`prefix_rft.cpu.learning.SETTINGS`, the ratio
schedule decaying over the benchmark's length; validation on the 2-digit rows only), so the benchmark's 3
seeds measure exactly what this test asserts.

What the benchmark measured (docs/LEARNING.md): with ~3% of on-policy rollouts rewarded, RFT's updates are
dominated by negative advantages and the policy stops ending its answers (responses hit the length cap,
accuracy falls to 0 within 4-8 steps); Prefix-RFT's hybrid rollouts are rewarded 40-100% of the time, and
their positive advantage on the kept demo tokens and the continuation keeps the policy in the answer format.
The test asserts both, with margins from the 3 measured seeds (:data:`MEASURED`):

- the fraction of training responses cut at the length limit over steps 5-8: Prefix-RFT below
  :data:`CLIP_SPLIT`, RFT above it;
- held-out 2-digit accuracy at step 8: Prefix-RFT above RFT's, and at least :data:`MIN_PREFIX_ACC`.

A hybrid rollout that never reaches the trainer, a reward that never sees the spliced demo, a sign error on
the prefixed samples' advantage or a keep-mask that drops every demo token turns Prefix-RFT into RFT and fails
this test. The SFT->RL path starting from the SFT checkpoint is checked by ``tests/test_sft_cpu.py`` (exact
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

#: Measured by ``make bench-learning`` (docs/results/cpu_learning.json), per seed 0, 1, 2: mean
#: ``response_length/clip_ratio`` over steps 5-8 and held-out 2-digit accuracy at step 8.
MEASURED = {
    "prefix_rft": {"clip": [0.025, 0.03, None], "acc": [0.078, 0.125, None]},
    "rft": {"clip": [0.25, 0.36, None], "acc": [0.0, 0.0, None]},
}
CLIP_SPLIT = 0.10
MIN_PREFIX_ACC = 0.03


def _clip_mean(metrics: dict[int, dict]) -> float:
    return statistics.fmean(float(metrics[s]["response_length/clip_ratio"]) for s in range(5, STEPS + 1))


def test_prefix_rft_keeps_learning_where_rft_collapses(tmp_path):
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
    acc, clip = {}, {}
    for preset, res in results.items():
        assert res.returncode == 0, f"{preset} failed:\n{res.log_tail()}"
        curve = L.curves(res.metrics, settings["eval_levels"])["acc"]
        steps = [s for s, _ in curve]
        assert steps[0] == 0 and steps[-1] == STEPS, f"{preset}: validated steps {steps}"
        acc[preset] = curve[-1][1][str(LEVEL)]
        clip[preset] = _clip_mean(res.metrics)
    summary = f"accuracy at step {STEPS} {acc}, length-capped fraction steps 5-{STEPS} {clip}"
    assert clip["prefix_rft"] < CLIP_SPLIT < clip["rft"], summary
    assert acc["prefix_rft"] > acc["rft"] and acc["prefix_rft"] >= MIN_PREFIX_ACC, summary
