"""The SFT / SFT->RL / RL+SFT-loss launchers compose with ``--cfg job`` (no GPU, nothing launched).

``--cfg job`` is hydra's: it works on verl's SFT trainer (``verl.trainer.sft_trainer``) as on the recipe.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from conftest import run_launcher
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: Path, **env_extra: str) -> subprocess.CompletedProcess:
    return run_launcher(script, *args, cwd=cwd, **{"DATA_DIR": "/data/p", **env_extra})


def _docs(out: subprocess.CompletedProcess) -> list:
    assert out.returncode == 0, out.stderr[-3000:]
    return [OmegaConf.create(d) for d in yaml.safe_load_all(out.stdout)]


def test_sft_launcher_composes_verls_sft_trainer_with_the_7b_settings(tmp_path):
    (cfg,) = _docs(_run("run_sft_qwen7b.sh", "optim.lr=1e-5", cwd=tmp_path))
    assert cfg.model.path == "Elliott/Qwen2.5-Math-7B-16k-think"
    assert cfg.data.train_files == "/data/p/sft_train.parquet" and cfg.data.messages_key == "messages"
    assert (cfg.data.train_batch_size, cfg.data.max_length, cfg.data.use_dynamic_bsz) == (64, 16384, True)
    assert cfg.optim.lr == 1e-5  # the command line wins over the launcher's 5e-5
    assert (cfg.optim.lr_scheduler_type, cfg.optim.lr_warmup_steps_ratio) == ("cosine", 0.1)
    assert (cfg.engine.strategy, cfg.trainer.total_epochs, cfg.trainer.n_gpus_per_node) == ("fsdp2", 3, 8)
    assert cfg.trainer.default_local_dir == "checkpoints/prefix_rft/sft_qwen2.5_math_7b"


def test_sft_then_rl_composes_both_halves_rl_from_the_merged_dir(tmp_path):
    def launch(rl: str) -> subprocess.CompletedProcess:
        return _run(
            "run_sft_then_rl_qwen7b.sh",
            "data.train_batch_size=32",
            cwd=tmp_path,
            RL=rl,
            SFT_OVERRIDES="trainer.total_epochs=1 optim.lr=2e-5",
        )

    variants = (("rft", 0), ("prefix_rft", 1))
    with ThreadPoolExecutor(max_workers=2) as pool:  # each imports verl for its SFT half (~5 s)
        outs = list(pool.map(launch, [rl for rl, _ in variants]))
    for (rl, num_prefixed), out in zip(variants, outs, strict=True):
        sft, rl_cfg = _docs(out)
        assert (sft.trainer.total_epochs, sft.optim.lr) == (1, 2e-5)
        assert sft.model.path == "Elliott/Qwen2.5-Math-7B-16k-think"
        hf = "checkpoints/prefix_rft/sft_qwen2.5_math_7b/hf"
        assert rl_cfg.actor_rollout_ref.model.path == hf
        assert rl_cfg.prefix_rft.num_prefixed == num_prefixed
        assert rl_cfg.data.train_batch_size == 32
        assert rl_cfg.trainer.experiment_name == f"sft_then_{rl}_qwen2.5_math_7b"


def test_sft_then_rl_rejects_an_unknown_rl(tmp_path):
    out = _run("run_sft_then_rl_qwen7b.sh", cwd=tmp_path, RL="ppo")
    assert out.returncode == 2 and "RL=ppo: choose RL=rft or RL=prefix_rft" in out.stderr


def test_rl_sft_loss_launcher_asks_for_the_rl_sft_loss_preset(tmp_path):
    out = _run("run_rl_sft_loss_qwen7b.sh", cwd=tmp_path)
    (cfg,) = _docs(out)
    assert cfg.trainer.experiment_name == "rl_sft_loss_qwen2.5_math_7b"
    # the preset's keys (recipe/prefix_rft/config/preset/rl_sft_loss.yaml): 8 on-policy rollouts + the demo
    assert cfg.actor_rollout_ref.rollout.n == 9 and cfg.prefix_rft.num_prefixed == 1
    assert cfg.prefix_rft.loss.sft_coef == 1.0 and cfg.prefix_rft.loss.prefix_tokens == "freeze"
