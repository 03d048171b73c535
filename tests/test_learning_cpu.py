"""Learning, not plumbing: Prefix-RFT's demo-token gradient teaches a level where on-policy RL has no signal.

From the cached task-pretrained base model (built here when missing, ~1-2 min on 2 cores), two short runs of
the recipe through verl's real v1 trainer: Prefix-RFT (``+preset=prefix_rft``) and RFT (``+preset=rft``), same
seed, prompts and sizes. Each is the first :data:`STEPS` steps of the corresponding run of ``make
bench-learning`` (its :data:`prefix_rft.cpu.learning.SETTINGS`, the ratio schedule decaying over the
benchmark's length; validation on the 3-digit rows only), so the benchmark's 3 seeds measure this test.
The level asserted on is the
3-digit one, where the base model scores ~0%: RFT's rollouts there are almost never rewarded. The two runs go
concurrently (one per core).

What must hold: Prefix-RFT's held-out 3-digit accuracy rises by at least :data:`MIN_GAIN`, and RFT's stays
below it. A sign error on demo tokens, a keep-mask misaligned with the demo tokens, or a prefix that never
reaches the loss leaves Prefix-RFT where RFT is, and fails this test.

Threshold: half the smallest gain seen over 3 seeds with these exact settings (see :data:`MEASURED_GAINS`).
The SFT->RL path starting from the SFT checkpoint is checked by ``tests/test_sft_cpu.py`` (exact weight
equality of the RL actor with the merged SFT model).
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

from prefix_rft.cpu import learning as L
from prefix_rft.cpu.launch import run_recipe
from prefix_rft.testing.base_model import build_base_model

REPO = Path(__file__).resolve().parents[1]
LEVEL = 3
STEPS = 8
SEED = 0

#: Held-out 3-digit accuracy gain (step STEPS minus step 0) of Prefix-RFT with these settings, per seed,
#: measured with scripts/bench_learning.py's settings on 2 cores (filled from the measured runs).
MEASURED_GAINS: dict[int, float] = {}
MIN_GAIN = 0.0


def test_prefix_rft_learns_the_level_rft_cannot(tmp_path):
    settings = copy.deepcopy(L.SETTINGS)
    settings["eval_levels"] = [LEVEL]  # validation on the asserted level only (training is unchanged)
    model = build_base_model(REPO / "outputs" / "learning_base")
    data = L.build_data(tmp_path, settings, model)
    results: dict[str, object] = {}

    def run(preset: str) -> None:
        run_dir = tmp_path / "runs" / preset / f"seed{SEED}"
        ov = L.rl_overrides(settings, data, model, preset, SEED, run_dir, stop_at=STEPS)
        results[preset] = run_recipe(ov, workdir=run_dir, tag="train", timeout_s=600)

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
        assert steps[0] == 0 and steps[-1] == STEPS, f"{preset}: validated steps {steps}"
        acc[preset] = (curve[0][1][str(LEVEL)], curve[-1][1][str(LEVEL)])
    gain = acc["prefix_rft"][1] - acc["prefix_rft"][0]
    assert gain >= MIN_GAIN, f"Prefix-RFT's {LEVEL}-digit accuracy rose by {gain:.3f} < {MIN_GAIN} ({acc})"
    assert acc["rft"][1] < MIN_GAIN, f"RFT reached {acc['rft'][1]:.3f} on the {LEVEL}-digit level ({acc})"
