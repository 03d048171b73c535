"""Adaptive guidance end to end on CPU, through verl's real trainer: decisions, metrics and resume.

Four training prompts, four per step, so every step revisits every prompt. ``cold_start=skip``: step 1 guides
no prompt; from step 2 each prompt's guidance follows the table saved with the previous step's checkpoint.
A first launch trains steps 1-2 (checkpoints at both), a second resumes from step 2 and trains step 3: if the
table were not restored, step 3 would see four unseen prompts and guide none. About 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from benchmarks.launch import build_demo_assets, demo_overrides, run_recipe
from prefix_rft.config import from_dict
from prefix_rft.core.guidance import GuidanceTable
from prefix_rft.trainer import GUIDANCE_FILE

PROMPTS, N, MINI = 4, 4, 2
GUIDANCE = {"mode": "adaptive", "cold_start": "skip"}


def _overrides(assets, ckpt: Path, steps: int, tmp: Path) -> list[str]:
    return demo_overrides(
        assets,
        steps=steps,
        ckpt_dir=ckpt,
        batch_size=PROMPTS,
        rollout_n=N,
        mini_batch_size=MINI,
        save_freq=1,
        test_freq=-1,
    ) + [
        "prefix_rft.num_prefixed=1",
        "+preset=adaptive",
        "prefix_rft.guidance.cold_start=skip",
        f"trainer.rollout_data_dir={tmp / 'rollouts'}",
        "trainer.resume_mode=auto",
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guidance_e2e")
    assets = build_demo_assets(tmp / "assets", n_train=PROMPTS, n_val=2)
    ckpt = tmp / "ckpt"
    first = run_recipe(_overrides(assets, ckpt, 2, tmp), workdir=tmp, tag="first", timeout_s=480)
    assert first.returncode == 0, f"first run failed:\n{first.log_tail()}"
    second = run_recipe(_overrides(assets, ckpt, 3, tmp), workdir=tmp, tag="second", timeout_s=480)
    assert second.returncode == 0, f"resumed run failed:\n{second.log_tail()}"
    tables = {}
    for step in (1, 2, 3):
        table = GuidanceTable(from_dict({"guidance": GUIDANCE}).guidance)
        table.load_state_dict(json.loads((ckpt / f"global_step_{step}" / GUIDANCE_FILE).read_text()))
        tables[step] = table
    return dict(tmp=tmp, assets=assets, metrics={**first.metrics, **second.metrics}, tables=tables)


def test_table_is_saved_every_step_and_restored_on_resume(run):
    tables = run["tables"]
    for step in (1, 2, 3):
        assert len(tables[step]) == PROMPTS
        # one visit per prompt per step: a table lost at the resume would hold 1 visit each at step 3
        assert [s.visits for s in tables[step].rows.values()] == [step] * PROMPTS, f"step {step}"
    assert run["metrics"][3]["prefix_rft/guidance_prompts_seen"] == PROMPTS


def test_each_step_guides_as_the_previous_table_decides(run):
    """guided_frac and the per-prompt ratio logged at step k are what the table saved at step k-1 decides."""
    tables, metrics = run["tables"], run["metrics"]
    assert metrics[1]["prefix_rft/guided_frac"] == 0.0 and metrics[1]["prefix_rft/prefixed_frac"] == 0.0
    for step in (2, 3):
        # (low_t matters only with cap_by_schedule, off here)
        decisions = [tables[step - 1].decide(row, low_t=0.5) for row in tables[step - 1].rows]
        guided = [d.ratio for d in decisions if d.guided]
        m = metrics[step]
        assert m["prefix_rft/guided_frac"] == pytest.approx(len(guided) / PROMPTS), f"step {step}"
        assert m["prefix_rft/prefixed_frac"] == pytest.approx(len(guided) / (PROMPTS * N)), f"step {step}"
        assert m["prefix_rft/prompt_ratio_mean"] == pytest.approx(sum(guided) / PROMPTS, abs=1e-6), (
            f"step {step}"
        )
    # the untrained tiny model fails: every prompt is guided after its first visit, at its own ratio
    assert metrics[3]["prefix_rft/guided_frac"] > 0


def test_unguided_prompts_have_no_demo_tokens(run):
    """Token level, from verl's rollout dump: step 1 (no prompt guided) has no rollout starting with its demo;
    step 3 has exactly one per guided prompt."""
    import pandas as pd

    demos = {}
    for _, row in pd.read_parquet(run["assets"].train).iterrows():
        demos[re.search(r"What is [^?]+\?", row["prompt"][0]["content"]).group(0)] = str(
            row["demonstrations"][0]
        )
    for step in (1, 3):
        lines = (run["tmp"] / "rollouts" / f"{step}.jsonl").read_text().splitlines()
        by_prompt = defaultdict(list)
        for g in map(json.loads, filter(None, lines)):
            by_prompt[re.search(r"What is [^?]+\?", g["input"]).group(0)].append(g["output"])
        assert len(by_prompt) == PROMPTS
        starts = sum(o.startswith(demos[q][:8]) for q, outs in by_prompt.items() for o in outs)
        expected = round(run["metrics"][step]["prefix_rft/guided_frac"] * PROMPTS)
        assert starts == expected, f"step {step}: {starts} rollouts start with their demo, {expected} guided"
