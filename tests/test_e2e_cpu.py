"""End to end on CPU: verl 0.9.1's real v1 trainer runs Prefix-RFT through the recipe entry point.

Two launches of ``recipe/prefix_rft/main_prefix_rft.py`` (``benchmarks.launch``): 2 steps with a
checkpoint at step 2, then a relaunch with ``total_training_steps=3`` that resumes from it. Before the
relaunch a broken newer checkpoint is planted (``global_step_4``: a copy of step 2 with its optimizer file
deleted, named by the tracker), as a crash or a full disk leaves one: the resume must skip it. Both launches
log to one metrics file, which must hold every step once. About 3 minutes on 2 cores (most of it Ray /
worker start-up).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from benchmarks.launch import build_demo_assets, demo_overrides, run_recipe
from prefix_rft.core.schedule import ratio_lower_bound

STEPS_FIRST = 2
STEPS_TOTAL = 3
BATCH, N, MINI = 4, 4, 2
TOP_RATIO = 0.2
SCHEDULE = dict(schedule="cosine", low_start=0.95, low_end=0.05, decay_steps=4, delay_steps=0)
HIGH = 0.95

# every per-step metric the trainer promises under prefix_rft/ (the metrics listed in recipe/prefix_rft/README.md)
EXPECTED_METRICS = (
    "ratio_low",
    "ratio_high",
    "ratio_mean",
    "prefixed_frac",
    "prefix_token_frac",
    "kept_frac",
    "kept_tokens",
    "entropy_prefix",
    "entropy_continuation",
    "score_prefixed",
    "score_on_policy",
    "continuation_length",
    "demo_missing",
    "demo_truncated",
    "demo_tokens_trained",
    "guided_frac",
    "prompt_ratio_mean",
    "prompt_ratio_p10",
    "prompt_ratio_p90",
    "reward_timeouts",
)


def _common(assets, ckpt, steps, tmp: Path) -> list[str]:
    return demo_overrides(
        assets,
        steps=steps,
        ckpt_dir=ckpt,
        batch_size=BATCH,
        rollout_n=N,
        mini_batch_size=MINI,
        save_freq=STEPS_FIRST,
        test_freq=STEPS_FIRST,
    ) + [
        f"prefix_rft.ratio.decay_steps={SCHEDULE['decay_steps']}",
        f"prefix_rft.ratio.schedule={SCHEDULE['schedule']}",
        f"prefix_rft.entropy_clip.top_ratio={TOP_RATIO}",
        "prefix_rft.num_prefixed=1",
        f"trainer.rollout_data_dir={tmp / 'rollouts'}",
        f"trainer.validation_data_dir={tmp / 'val_generations'}",
        "trainer.resume_mode=auto",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e_cpu")
    assets = build_demo_assets(tmp / "assets", n_train=32, n_val=8, val_with_demos=True)
    ckpt = tmp / "ckpt"
    metrics_file = tmp / "run.metrics.jsonl"
    first = run_recipe(
        _common(assets, ckpt, STEPS_FIRST, tmp),
        workdir=tmp,
        tag="first",
        timeout_s=480,
        metrics_file=metrics_file,
    )
    assert first.returncode == 0, f"first run failed:\n{first.log_tail()}"
    first_lines = metrics_file.read_text().splitlines()
    broken = ckpt / "global_step_4"
    shutil.copytree(ckpt / "global_step_2", broken)
    optimizer = next((broken / "actor").glob("optim_*.pt"))
    optimizer.unlink()
    (ckpt / "latest_checkpointed_iteration.txt").write_text("4")
    second = run_recipe(
        _common(assets, ckpt, STEPS_TOTAL, tmp),
        workdir=tmp,
        tag="second",
        timeout_s=480,
        metrics_file=metrics_file,
    )
    assert second.returncode == 0, f"resumed run failed:\n{second.log_tail()}"
    return dict(
        tmp=tmp,
        assets=assets,
        ckpt=ckpt,
        first=first.metrics,
        second={s: m for s, m in second.metrics.items() if s > STEPS_FIRST},
        first_lines=first_lines,
        all_lines=metrics_file.read_text().splitlines(),
        second_log=Path(second.log_file).read_text(),
        broken_file=f"{optimizer.parent.name}/{optimizer.name}",
    )


def _train_steps(metrics: dict[int, dict]) -> list[int]:
    return sorted(s for s, m in metrics.items() if "timing_s/step" in m)


def _demos_by_question(parquet: str) -> dict[str, str]:
    import pandas as pd

    out = {}
    for _, row in pd.read_parquet(parquet).iterrows():
        question = re.search(r"What is [^?]+\?", row["prompt"][0]["content"]).group(0)
        out[question] = str(row["demonstrations"][0])
    return out


def _generations(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _actor_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(
        step_dir / "actor" / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False
    )
    return {k: (v.to_local() if hasattr(v, "to_local") else v).detach().float() for k, v in state.items()}


def test_steps_and_resume_continue_the_step_counter(runs):
    assert _train_steps(runs["first"]) == [1, 2]
    assert _train_steps(runs["second"]) == [3], "the resumed run must start at step 3, not retrain 1-2"
    assert runs["second"][3]["training/global_step"] == 3
    assert (runs["ckpt"] / "global_step_2").is_dir()
    assert (runs["ckpt"] / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


def test_metrics_file_holds_every_step_once_across_the_resume(runs):
    """Before: verl's FileLogger ("wb") and the launcher erased steps 1-2 when the run resumed."""
    records = [json.loads(line) for line in runs["all_lines"]]
    train_steps = [r["step"] for r in records if "timing_s/step" in r["data"]]
    assert train_steps == [1, 2, 3], train_steps
    # the first run's lines are kept verbatim, in front of the resumed run's
    assert runs["all_lines"][: len(runs["first_lines"])] == runs["first_lines"]
    from prefix_rft.plot import read_jsonl  # what `python -m prefix_rft.plot` draws from

    series = read_jsonl(str(runs["tmp"] / "run.metrics.jsonl"))
    assert [step for step, _ in series["prefix_rft/ratio_low"]] == [1, 2, 3]


def test_resume_skips_a_broken_newest_checkpoint_with_a_warning(runs):
    """Before: FileNotFoundError deep in verl's loader after ~48 s. The tracker named global_step_4, whose
    optimizer file is missing: the run resumed from global_step_2 and said why."""
    log = runs["second_log"]
    assert "Resuming from" in log and "global_step_2, the newest complete checkpoint" in log
    assert f"global_step_4 is incomplete: {runs['broken_file']} is missing" in log
    for step in (2, 3):
        assert (runs["ckpt"] / f"global_step_{step}" / "prefix_rft_checkpoint.json").is_file()


def test_every_prefix_metric_exists_and_is_finite(runs):
    for step, m in {**runs["first"], **runs["second"]}.items():
        if "timing_s/step" not in m:
            continue
        missing = [k for k in EXPECTED_METRICS if f"prefix_rft/{k}" not in m]
        assert not missing, f"step {step}: missing prefix_rft/ metrics {missing}"
        bad = {k: v for k, v in m.items() if k.startswith("prefix_rft/") and not math.isfinite(float(v))}
        assert not bad, f"step {step}: non-finite metrics {bad}"


def test_ratio_schedule_follows_global_step_across_resume(runs):
    metrics = {**runs["first"], **runs["second"]}
    for step in (1, 2, 3):
        m = metrics[step]
        expected = ratio_lower_bound(step, **SCHEDULE)
        assert m["prefix_rft/ratio_low"] == pytest.approx(expected, abs=1e-9), f"step {step}"
        assert m["prefix_rft/ratio_high"] == pytest.approx(HIGH)
        assert expected - 1e-9 <= m["prefix_rft/ratio_mean"] <= HIGH + 1e-9
    # the schedule really moves over these steps (a resume that restarted at step 1 would repeat 0.818)
    assert metrics[3]["prefix_rft/ratio_low"] < metrics[1]["prefix_rft/ratio_low"] - 0.3


def test_demo_tokens_present_and_kept_fraction_matches_top_ratio(runs):
    for step, m in {**runs["first"], **runs["second"]}.items():
        if "timing_s/step" not in m:
            continue
        assert m["prefix_rft/prefixed_frac"] == pytest.approx(1 / N), (
            f"step {step}: 1 of {N} rollouts prefixed"
        )
        assert m["prefix_rft/guided_frac"] == 1.0, f"step {step}: schedule mode guides every prompt"
        assert m["prefix_rft/prefix_token_frac"] > 0, f"step {step}: no demo tokens in the batch"
        kept, frac = m["prefix_rft/kept_tokens"], m["prefix_rft/kept_frac"]
        total_demo_tokens = round(kept / frac)
        groups = BATCH // MINI  # entropy clipping ranks per PPO mini-batch: ceil(k * N_g) per group
        assert math.ceil(TOP_RATIO * total_demo_tokens) <= kept <= TOP_RATIO * total_demo_tokens + groups, (
            f"step {step}: kept {kept} of {total_demo_tokens} demo tokens, top_ratio {TOP_RATIO}"
        )


def test_prefixed_rollouts_start_with_the_demo_and_validation_never_does(runs):
    tmp = runs["tmp"]
    train_demos = _demos_by_question(runs["assets"].train)
    by_prompt = defaultdict(list)
    for g in _generations(tmp / "rollouts" / "1.jsonl"):
        by_prompt[re.search(r"What is [^?]+\?", g["input"]).group(0)].append(g["output"])
    assert len(by_prompt) == BATCH
    for question, outputs in by_prompt.items():
        demo = train_demos[question]
        assert len(outputs) == N
        # ratio >= low_1 = 0.82 of the demo: its first 12 characters are certainly in the prefix
        starts = [o.startswith(demo[:12]) for o in outputs]
        assert sum(starts) == 1, f"{question}: expected exactly one prefixed rollout, got {outputs}"

    val_demos = _demos_by_question(runs["assets"].val)
    val = _generations(tmp / "val_generations" / f"{STEPS_FIRST}.jsonl")
    assert len(val) == len(val_demos)
    for g in val:
        demo = val_demos[re.search(r"What is [^?]+\?", g["input"]).group(0)]
        assert not g["output"].startswith(demo[:12]), f"validation rollout got a demo prefix: {g['output']!r}"


def test_actor_weights_change_and_training_continues_after_resume(runs):
    from safetensors.torch import load_file

    init = {k: v.float() for k, v in load_file(str(Path(runs["assets"].model) / "model.safetensors")).items()}
    step2 = _actor_weights(runs["ckpt"] / "global_step_2")
    step3 = _actor_weights(runs["ckpt"] / "global_step_3")
    shared = sorted(set(init) & set(step2))
    assert shared, "checkpoint and initial model share no parameter names"
    assert max((step2[k] - init[k]).abs().max().item() for k in shared) > 1e-6
    assert max((step3[k] - step2[k]).abs().max().item() for k in shared) > 1e-6
