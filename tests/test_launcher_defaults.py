"""The 7B launchers' memory / disk defaults and the multi-node launcher, composed with ``--cfg job`` (no GPU,
nothing launched) and checked against verl's own actor config dataclasses."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import run_launcher
from omegaconf import OmegaConf

from prefix_rft.verl_config import validate_verl_config

ROOT = Path(__file__).resolve().parents[1]
FSDP_LAUNCHERS = (
    "run_prefix_rft_qwen7b.sh",
    "run_rft_qwen7b.sh",
    "run_luffy_qwen7b.sh",
    "run_prefix_rft_qwen7b_2nodes.sh",
)
MEGATRON = "run_prefix_rft_qwen7b_megatron.sh"


def launch(
    script: str, *args: str, cfg_job: bool = True, **env_overrides: str
) -> subprocess.CompletedProcess:
    return run_launcher(script, *args, cfg_job=cfg_job, **env_overrides)


def composed(out: subprocess.CompletedProcess):
    assert out.returncode == 0, out.stderr[-3000:]
    return OmegaConf.create(yaml.safe_load(out.stdout))


@pytest.fixture(scope="module")
def configs():
    with ThreadPoolExecutor(max_workers=2) as pool:
        outs = dict(
            zip((*FSDP_LAUNCHERS, MEGATRON), pool.map(launch, (*FSDP_LAUNCHERS, MEGATRON)), strict=True)
        )
    return {name: composed(out) for name, out in outs.items()}


@pytest.mark.parametrize("script", FSDP_LAUNCHERS)
def test_fsdp_launchers_chunk_and_checkpoint_the_entropy_and_keep_two_checkpoints(configs, script):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = configs[script]
    actor = cfg.actor_rollout_ref.actor
    assert actor.entropy_checkpointing is True and actor.entropy_from_logits_with_chunking is True
    # what verl's FSDP engine reads (engine config interpolated from the actor keys)
    assert actor.fsdp_config.entropy_checkpointing is True
    assert actor.fsdp_config.entropy_from_logits_with_chunking is True
    assert cfg.trainer.max_actor_ckpt_to_keep == 2
    actor_dc = omega_conf_to_dataclass(actor)
    assert type(actor_dc).__name__ == "FSDPActorConfig" and actor_dc.entropy_checkpointing is True
    validate_verl_config(cfg)


def test_megatron_launcher_uses_megatron_recompute_and_chunked_entropy(configs):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = configs[MEGATRON]
    actor = cfg.actor_rollout_ref.actor
    assert cfg.model_engine == "megatron"
    otc = actor.megatron.override_transformer_config
    assert (otc.recompute_granularity, otc.recompute_method, otc.recompute_num_layers) == (
        "full",
        "uniform",
        1,
    )
    assert actor.entropy_from_logits_with_chunking is True
    assert actor.megatron.entropy_from_logits_with_chunking is True  # what verl's Megatron engine reads
    assert "entropy_checkpointing" not in actor  # an FSDP-only key: the Megatron actor has none
    assert cfg.trainer.max_actor_ckpt_to_keep == 2
    assert type(omega_conf_to_dataclass(actor)).__name__ == "McoreActorConfig"
    validate_verl_config(cfg)


def test_two_node_launcher_joins_a_running_cluster_with_a_shared_checkpoint_dir(configs):
    cfg = configs["run_prefix_rft_qwen7b_2nodes.sh"]
    assert cfg.trainer.nnodes == 2 and cfg.trainer.n_gpus_per_node == 8
    assert cfg.ray_kwargs.ray_init.address == "auto"
    single = configs["run_prefix_rft_qwen7b.sh"]
    assert (
        cfg.prefix_rft == single.prefix_rft and cfg.trainer.experiment_name == single.trainer.experiment_name
    )
    assert single.trainer.nnodes == 1 and "address" not in single.ray_kwargs.ray_init


def test_cluster_size_checkpoint_dir_and_retention_follow_the_environment(tmp_path):
    # an absolute folder this user can write: `--cfg job` checks the checkpoint folder as a run does
    shared = str(tmp_path / "shared" / "ck")
    env = dict(CKPT_DIR=shared, NNODES="3", MAX_CKPT_TO_KEEP="5")
    cfg = composed(launch("run_prefix_rft_qwen7b_2nodes.sh", **env))
    assert (cfg.trainer.nnodes, cfg.trainer.default_local_dir, cfg.trainer.max_actor_ckpt_to_keep) == (
        3,
        shared,
        5,
    )


@pytest.mark.parametrize("ckpt_dir", [None, "checkpoints/relative"])
def test_two_node_launcher_refuses_to_train_without_a_shared_absolute_checkpoint_dir(ckpt_dir):
    env = {} if ckpt_dir is None else {"CKPT_DIR": ckpt_dir}
    out = launch("run_prefix_rft_qwen7b_2nodes.sh", "trainer.total_training_steps=1", cfg_job=False, **env)
    assert out.returncode == 2
    assert "set CKPT_DIR to an absolute directory on storage every node shares" in out.stderr
    assert "main_prefix_rft.py" not in out.stderr  # nothing was launched
