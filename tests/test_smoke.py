"""The CPU-checkable parts of ``scripts/gpu_smoke.sh``: argument handling, the composed config, and the
PASS/FAIL evaluator on recorded metrics files (passing and failing), the weight check on real files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from benchmarks import smoke
from benchmarks.launch import read_metrics
from prefix_rft.trainer import METRIC_KEYS
from prefix_rft.verl_config import validate_verl_config

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, N, MINI, TOP = 3, 8, 4, 4, 0.2
ROWS, GROUPS = BATCH * N, BATCH // MINI


def step_metrics(step: int) -> dict:
    """One step as verl's file logger records it for a run of this size: every trainer ``prefix_rft/`` key,
    the actor's ``actor/prefix_rft/`` counts and the verl keys the checks read. 8 hybrids of 32 rollouts,
    spliced 20 demo tokens each (160), kept top 20% per mini-batch: ceil(0.2 * 80) = 16 in each of 2."""
    total_resp = 32 * 40.0  # response_length/mean 40: hybrids 20 prefix + 5 continuation, on-policy ~45
    prefix = {
        "ratio_low": 0.95 - 0.3 * step,
        "ratio_high": 0.95,
        "ratio_mean": 0.9,
        "prefixed_frac": 0.25,
        "prefix_token_frac": 160 / total_resp,
        "kept_frac": 32 / 160,
        "kept_tokens": 32.0,
        "prefix_length": 20.0,
        "continuation_length": 5.0,
        "entropy_prefix": 1.2,
        "entropy_continuation": 0.8,
        "score_prefixed": 0.75,
        "score_on_policy": 0.5,
        "demo_missing": 0.0,
        "demo_truncated": 0.0,
    }
    assert set(prefix) == set(METRIC_KEYS)
    return {
        **{f"prefix_rft/{k}": v for k, v in prefix.items()},
        "actor/prefix_rft/demo_tokens": 160.0,
        "actor/prefix_rft/kept_demo_tokens": 32.0,
        "actor/grad_norm": 0.4,
        "actor/pg_loss": -0.01,
        "actor/entropy": 0.9,
        "critic/score/mean": 0.53,
        "response_length/mean": 40.0,
        "training/global_step": step,
        "timing_s/step": 12.5,
        "timing_s/gen": 4.0,
    }


def write_metrics(path: Path, steps: dict[int, dict]) -> Path:
    path.write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in sorted(steps.items())))
    return path


def good_run() -> dict[int, dict]:
    return {s: step_metrics(s) for s in range(1, STEPS + 1)}


def verdicts(metrics, **kw) -> dict[str, bool]:
    args = dict(
        steps=STEPS, rows=ROWS, top_ratio=TOP, groups=GROUPS, log_text="step:1 ...\n", weight_change=1e-3
    )
    args.update(kw)
    return {c.name: c.ok for c in smoke.evaluate(metrics, **args)}


def test_checks_read_only_metrics_the_trainer_logs():
    assert set(smoke.REQUIRED_PREFIX_METRICS) <= set(METRIC_KEYS)


def test_a_good_recorded_run_passes_every_check(tmp_path):
    metrics = read_metrics(write_metrics(tmp_path / "m.jsonl", good_run()))
    result = verdicts(metrics)
    assert result == {
        "steps completed": True,
        "demo tokens present": True,
        "kept fraction = top_ratio": True,
        "actor weights changed": True,
        "hybrids decode fewer tokens": True,
        "no failed rollouts": True,
        "metrics finite": True,
    }


def _brokens(changes: dict) -> dict[int, dict]:
    run = good_run()
    run[2].update(changes)
    return run


def _broken(key: str, value) -> dict[int, dict]:
    return _brokens({key: value})


@pytest.mark.parametrize(
    ("run", "kw", "failing"),
    [
        ({s: step_metrics(s) for s in (1, 2)}, {}, "steps completed"),
        (_broken("prefix_rft/prefix_length", 0.0), {}, "demo tokens present"),
        (_broken("prefix_rft/demo_missing", 3.0), {}, "demo tokens present"),
        (_broken("prefix_rft/kept_tokens", 80.0), {}, "kept fraction = top_ratio"),  # 80 of 160 kept
        (
            _brokens({"prefix_rft/kept_frac": 1.0, "prefix_rft/kept_tokens": 160.0}),
            {},
            "kept fraction = top_ratio",
        ),
        (good_run(), {"weight_change": 0.0}, "actor weights changed"),
        (_broken("actor/grad_norm", 0.0), {"weight_change": None}, "actor weights changed"),
        (_broken("prefix_rft/continuation_length", 200.0), {}, "hybrids decode fewer tokens"),
        (_broken("training/rollout_failure/evicted_samples", 1.0), {}, "no failed rollouts"),
        (good_run(), {"log_text": "ERROR Error in _run_prompt for uid=ab12\n"}, "no failed rollouts"),
        (_broken("actor/pg_loss", float("nan")), {}, "metrics finite"),
    ],
)
def test_each_broken_integration_point_fails_its_own_check(tmp_path, run, kw, failing):
    metrics = read_metrics(write_metrics(tmp_path / "m.jsonl", run))  # NaN round-trips through JSON lines
    result = verdicts(metrics, **kw)
    assert result[failing] is False
    assert all(ok for name, ok in result.items() if name != failing), result


def test_missing_prefix_metrics_fail_naming_them():
    run = good_run()
    del run[1]["prefix_rft/kept_tokens"]
    checks = smoke.evaluate(run, steps=STEPS, rows=ROWS, top_ratio=TOP, groups=GROUPS)
    assert [(c.name, c.ok) for c in checks][-1] == ("prefix_rft metrics logged", False)
    assert "prefix_rft/kept_tokens" in checks[-1].detail


def test_evaluate_cli_prints_pass_fail_lines_and_exit_status(tmp_path, capsys):
    good = write_metrics(tmp_path / "good.jsonl", good_run())
    assert smoke.main(["evaluate", "--metrics", str(good), "--rows", str(ROWS), "--groups", str(GROUPS)]) == 0
    out = capsys.readouterr().out
    assert "PASS  kept fraction = top_ratio" in out and "gpu_smoke: PASS (7/7 checks)" in out
    assert "no checkpoint compared" in out  # without --model/--step-dir the weight check uses grad_norm
    bad = write_metrics(tmp_path / "bad.jsonl", _broken("prefix_rft/demo_missing", 2.0))
    assert smoke.main(["evaluate", "--metrics", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  demo tokens present" in out and "gpu_smoke: FAIL (6/7 checks)" in out


def test_weight_check_compares_the_saved_actor_with_the_initial_model(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    model = tiny_model_dir
    init = load_file(str(Path(model) / "model.safetensors"))
    step = tmp_path / "ckpt" / "global_step_3"
    (step / "actor").mkdir(parents=True)
    shard = step / "actor" / "model_world_size_1_rank_0.pt"
    torch.save({k: v.float().clone() for k, v in init.items()}, shard)
    assert smoke.max_weight_change(model, step) == 0.0
    name = next(iter(init))
    changed = {k: v.float().clone() for k, v in init.items()}
    changed[name].view(-1)[0] += 0.25
    torch.save(changed, shard)
    assert smoke.max_weight_change(model, step) == pytest.approx(0.25, rel=1e-3)
    with pytest.raises(FileNotFoundError, match=r"global_step_9/actor: no model_world_size_\*_rank_0.pt"):
        smoke.max_weight_change(model, tmp_path / "ckpt" / "global_step_9")
    torch.save({"other.weight": torch.zeros(2)}, shard)
    with pytest.raises(ValueError, match="share no parameter"):
        smoke.max_weight_change(model, step)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "/no/such/model"], "is not a directory"),
        (["run", "{tmp}"], "has no config.json"),
        (["run", "{model}", "--steps", "0"], "--steps must be >= 1"),
        (["run", "{model}", "--n", "1"], "--n must be >= 2"),
        (["run", "{model}", "--batch", "6", "--mini-batch", "4"], "must be a multiple of --mini-batch"),
        (["run", "{model}", "--gpu-mem", "1.5"], "--gpu-mem must be in (0, 1)"),
        (["run", "{model}", "--out", "{model}"], "is not empty"),
        (["evaluate", "--metrics", "/no/such.jsonl"], "--metrics /no/such.jsonl: no such file"),
        (["evaluate", "--metrics", "{metrics}", "--model", "{model}"], "--model and --step-dir go together"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(tmp_path, capsys, argv, message, tiny_model_dir):
    model = tiny_model_dir if any("{model}" in a for a in argv) else ""
    metrics = write_metrics(tmp_path / "m.jsonl", good_run())
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path / "empty", model=model, metrics=metrics) for a in argv]
    with pytest.raises(SystemExit) as err:
        smoke.main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_shell_entry_prints_usage_without_a_model():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_smoke.sh")], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: bash scripts/gpu_smoke.sh MODEL_DIR" in out.stderr


def test_smoke_config_composes_and_passes_verl_and_prefix_rft_validation(tmp_path, tiny_model_dir):
    """``--cfg-job``: the exact overrides of the GPU run, composed on CPU by the recipe entry point."""
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    model = tiny_model_dir
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), model, "--out", str(tmp_path / "out"), "--cfg-job"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = OmegaConf.create(yaml.safe_load(out.stdout))
    r, a, t = cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.actor, cfg.trainer
    assert (r.name, r.n, r.tensor_model_parallel_size) == ("vllm", N, 1)
    assert cfg.model_engine == "dp" and a.strategy.startswith("fsdp")
    assert (t.nnodes, t.n_gpus_per_node, t.total_training_steps, t.save_freq) == (1, 1, STEPS, STEPS)
    assert list(t.logger) == ["console", "file"] and t.default_local_dir == str(tmp_path / "out" / "ckpt")
    assert (cfg.data.train_batch_size, a.ppo_mini_batch_size) == (BATCH, MINI)
    assert cfg.prefix_rft.num_prefixed == 1 and cfg.prefix_rft.entropy_clip.top_ratio == TOP
    assert cfg.actor_rollout_ref.model.path == model
    assert Path(cfg.data.train_files).is_file()  # synthetic data with demos written before composing
    import pandas as pd

    demos = pd.read_parquet(cfg.data.train_files)["demonstrations"]
    assert len(demos) == BATCH * (STEPS + 1) and all(len(d[0]) > 0 for d in demos)
    validate_verl_config(cfg)
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    assert type(omega_conf_to_dataclass(a)).__name__ == "FSDPActorConfig"
    assert math.isclose(r.gpu_memory_utilization, 0.4)
