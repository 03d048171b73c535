"""The learning benchmark's own pieces, without a trainer launch: splits, seeded validation, the shuffled-reward
control, pass@k, the tuning rule, the report's paired gains and the CPU launcher's module list."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import learning as L
from benchmarks.controls import compute_shuffled_reward_advantage, shuffle_rows
from benchmarks.fixtures import arith
from benchmarks.launch import cpu_env, recipe_presets
from prefix_rft.advantage import compute_prefix_rft_advantage
from prefix_rft.agent_loop import with_validation_seed


def _questions(rows):
    return {r["prompt"][0]["content"] for r in rows}


@pytest.mark.parametrize("level", [2, 3, 4])
def test_dev_and_test_are_disjoint_halves_of_the_held_out_pool(level):
    dev, test = arith.rows(level, 128, split="dev"), arith.rows(level, 128, split="test")
    train = arith.rows(level, 256, split="train")
    assert not _questions(dev) & _questions(test)
    assert not (_questions(dev) | _questions(test)) & _questions(train)
    for a, b in arith.sample_problems(level, 128, 0, "dev"):
        assert arith.held_out_split(a, b) == "dev"
    assert {r["extra_info"]["split"] for r in dev} == {"val"}
    assert {r["extra_info"]["split"] for r in test} == {"test"}
    assert not any("demonstrations" in r for r in dev + test)
    # the pool as a whole ("eval") is unchanged: the same problems as before the halves existed
    assert all(arith.held_out_split(a, b) for a, b in arith.sample_problems(level, 64, 0, "eval"))


def _val_kwargs(session: int, split: str = "test", index: int = 3):
    return {
        "session_id": session,
        "extra_info": {"split": split, "index": index},
        "index": index,
        "raw_prompt": [{"role": "user", "content": "Compute 1+2."}],
    }


def test_validation_seed_is_a_pure_function_of_seed_row_and_sample():
    params = {"temperature": 0.6}
    a = with_validation_seed(params, _val_kwargs(0), 7)
    assert a["seed"] == with_validation_seed(params, _val_kwargs(0), 7)["seed"]
    assert 0 <= a["seed"] < 2**31 and a["temperature"] == 0.6 and "seed" not in params
    seeds = {with_validation_seed(params, _val_kwargs(s), 7)["seed"] for s in range(4)}
    assert len(seeds) == 4  # the 4 samples of a problem differ
    assert with_validation_seed(params, _val_kwargs(0, index=4), 7)["seed"] != a["seed"]
    assert with_validation_seed(params, _val_kwargs(0), 8)["seed"] != a["seed"]


def test_validation_seed_leaves_training_unset_and_caller_seeds_alone():
    params = {"temperature": 1.0}
    assert with_validation_seed(params, _val_kwargs(0, split="train"), 7) is params
    assert with_validation_seed(params, _val_kwargs(0), None) is params
    chosen = {"temperature": 0.6, "seed": 5}
    assert with_validation_seed(chosen, _val_kwargs(0), 7)["seed"] == 5


@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=24), st.integers(0, 50))
@settings(max_examples=50, deadline=None)
def test_shuffled_rewards_are_a_permutation_of_the_batch_scores(scores, call):
    t = torch.zeros(len(scores), 5)
    t[:, 2] = torch.tensor(scores)
    out = shuffle_rows(t, seed=1, call=call)
    assert sorted(out.sum(-1).tolist()) == sorted(scores)
    assert torch.equal(out, shuffle_rows(t, seed=1, call=call))  # seeded


def test_shuffled_reward_estimator_is_the_recipe_estimator_on_permuted_scores(monkeypatch):
    monkeypatch.setenv("PREFIX_RFT_CONTROL_SEED", "3")
    rewards = torch.zeros(8, 4)
    rewards[[0, 5], -1] = 1.0
    mask = torch.ones(8, 4)
    index = ["a"] * 4 + ["b"] * 4
    import benchmarks.controls as C

    call = next(C._CALLS) + 1  # the estimator's call will use the next count
    adv, _ = compute_shuffled_reward_advantage(rewards, mask, index=index)
    ref, _ = compute_prefix_rft_advantage(shuffle_rows(rewards, 3, call), mask, index=index)
    assert torch.equal(adv, ref)
    assert adv.sum().abs() < 1e-6  # Dr.GRPO: advantages of a group sum to 0


def test_pass_at_k_from_verls_validation_dump(tmp_path):
    lines = []
    for q, hits in [
        ("Compute 12+34.", [0, 0, 1, 0]),
        ("Compute 56+78.", [0, 0, 0, 0]),
        ("Compute 123+456.", [1, 1, 0, 0]),
    ]:
        for h in hits:
            lines.append(json.dumps({"input": f"<|user|>{q}<|assistant|>", "output": "x", "score": float(h)}))
    (tmp_path / "16.jsonl").write_text("\n".join(lines))
    got = L.dumped_pass_at_k(tmp_path, 4)
    assert got == {16: {"2": 0.5, "3": 1.0}}


def _result(acc_by_step, seed=0):
    return {"seed": seed, "acc": [[s, {"2": a, "3": 0.0}] for s, a in acc_by_step]}


def test_selection_rule_takes_the_best_dev_score_and_the_smaller_lr_on_a_tie():
    res = {1e-5: [_result([(32, 0.30)])], 3e-5: [_result([(32, 0.40)])], 1e-4: [_result([(32, 0.404)])]}
    assert L.select("rl_lr", res, [2, 3]) == 3e-5  # 0.202 vs 0.200: within half a point -> smaller
    res[1e-4] = [_result([(32, 0.50)])]
    assert L.select("rl_lr", res, [2, 3]) == 1e-4


def test_report_gains_are_paired_by_seed():
    s = {**L.SETTINGS, "eval_levels": [2, 3], "tune_levels": [2, 3], "rl_lr": 3e-5, "sft_lr": 3e-4}

    def res(arm, seed, a2):
        return L.Run("matrix", arm, seed, s), {
            "seed": seed,
            "acc": [[32, {"2": a2, "3": 0.0}]],
            "health": {k: [[1, 0.01]] for k in L.HEALTH_KEYS},
        }

    results = dict(
        [
            res("base", 0, 0.20),
            res("rft", 0, 0.40),
            res("rft", 1, 0.30),
            res("shuffled_reward", 0, 0.30),
            res("shuffled_reward", 1, 0.30),
        ]
    )
    report = L.aggregate(results, s, {}, 1.0, "test")
    rft = report["arms"]["rft"]
    assert rft["mean"]["2"] == pytest.approx(0.35)
    assert rft["gain_vs_base"]["2"] == (pytest.approx(0.15), pytest.approx(math.sqrt(0.005)))
    assert rft["gain_vs_control"]["2"][0] == pytest.approx(0.05)  # (0.10 + 0.00) / 2
    assert rft["curve_by_level"]["2"][0] == [0, 0.20]  # the base is step 0 of a from-base run
    assert "gain_vs_control" not in report["arms"]["shuffled_reward"]
    assert "| RFT (Dr.GRPO) | 35.0 ± 7.1 |" in L.markdown_table(report)


def test_cpu_env_keeps_the_callers_verl_modules_after_the_cpu_plugin():
    env = cpu_env({"VERL_USE_EXTERNAL_MODULES": "benchmarks.controls"})
    assert env["VERL_USE_EXTERNAL_MODULES"] == "verl_cpu.plugin,benchmarks.controls"
    assert cpu_env({})["VERL_USE_EXTERNAL_MODULES"] == "verl_cpu.plugin"


def test_every_arm_preset_exists_and_sweeps_tune_baselines_only():

    names = set(recipe_presets().list_presets())
    assert all(a.preset in names for a in L.ARMS.values() if a.preset)
    assert {sw["arm"] for sw in L.SWEEPS.values()} == {"rft", "sft"}
    assert set(L.SWEEPS["rl_lr"]["values"]) >= {1e-5, 3e-5, 1e-4, 3e-4}


def test_demo_tokens_trained_is_zero_for_arms_whose_demo_tokens_get_no_gradient():
    assert not L.trains_demo_tokens("exclude_prefix") and not L.trains_demo_tokens("freeze_prefix")
    assert L.trains_demo_tokens("prefix_rft") and L.trains_demo_tokens("rl_sft_loss")  # its SFT term


@pytest.mark.parametrize("size", ["comparison", "quick"])
def test_every_run_passes_the_recipes_start_up_checks(compose_recipe, tmp_path, size):
    """Every recipe run of the comparison (each arm's training run, the validation-only runs of the base and of
    the SFT sweep) and of ``--quick``, as :func:`benchmarks.learning.run_overrides` writes it, composes with the
    CPU overrides and passes the checks a launch makes before verl starts, on the benchmark's own data files and
    a model with the base model's context window: ``make test`` launches only ``--ci``'s three runs."""
    import importlib

    from benchmarks.launch import cpu_overrides
    from prefix_rft.verl_config import validate_verl_config

    settings = {**L.SETTINGS, "rl_lr": 3e-5, "sft_lr": 3e-4, **(L.QUICK if size == "quick" else {})}
    data = L.build_data(tmp_path, settings, "unused", "test")
    model = tmp_path / "model"
    model.mkdir()
    # the base model's context window (benchmarks/fixtures/base_model.py): checked against prompt + response
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2", "max_position_embeddings": 512}))
    runs = L.matrix_runs(settings, [a for a in L.ARMS if L.ARMS[a].kind != "sft"])
    runs.append(L.sweep_runs("sft_lr", settings)[0])  # an SFT model's validation
    for run in runs:
        # what VERL_USE_EXTERNAL_MODULES imports in the trainer's processes
        for module in L.ARMS[run.arm].modules:
            importlib.import_module(module)
        cfg = compose_recipe(
            *cpu_overrides("hf_cpu"), *L.run_overrides(run, data, str(model), tmp_path / run.name)
        )
        validate_verl_config(cfg)
        kind = L.ARMS[run.arm].kind
        assert cfg.trainer.val_only == (kind in ("base", "sft")), run.name
        assert cfg.trainer.val_before_train == (kind in ("base", "sft", "sft_rl")), run.name
    assert {r.arm for r in runs} == {a for a, arm in L.ARMS.items() if arm.kind != "reference"}


def test_base_model_bits_do_not_depend_on_the_callers_thread_count(tmp_path):
    """One intra-op thread sums in another order than two and builds another model (measured); the build runs on
    :data:`BUILD_THREADS` whatever the caller set (``OMP_NUM_THREADS=1``, a 1-core machine), then restores it."""
    from benchmarks.fixtures.base_model import BASE_RECIPE, pretrain

    recipe = {**BASE_RECIPE, "examples": 640}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        pretrain(recipe, str(tmp_path / "one"), log=lambda line: None)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(4)
        pretrain(recipe, str(tmp_path / "four"), log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    one, four = ((tmp_path / d / "model.safetensors").read_bytes() for d in ("one", "four"))
    assert one == four
