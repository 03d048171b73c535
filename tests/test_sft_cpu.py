"""SFT -> RL on CPU through verl's own trainers: verl's SFT trainer, verl's model merger, the recipe.

1. ``benchmarks.sft.run_sft``: a few steps of ``verl.trainer.sft_trainer`` (torchrun, the CPU platform)
   on the tiny task's demonstrations, then ``python -m verl.model_merger merge --backend fsdp``.
2. ``benchmarks.launch.run_recipe``: one RL step of ``recipe/prefix_rft/main_prefix_rft.py`` (plain RFT,
   ``num_prefixed=0``) with ``actor_rollout_ref.model.path`` = the merged model, a checkpoint at step 1 and
   ``lr=0``, so the RL actor's checkpointed weights must be the SFT weights exactly.

About 2 minutes on 2 cores (the RL run's Ray start-up is most of it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.launch import build_demo_assets, demo_overrides, run_recipe
from benchmarks.sft import SftError, run_sft
from prefix_rft.data.sft import sft_from_rl_parquet

SFT_STEPS = 4


@pytest.fixture(scope="module")
def sft_then_rl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft_cpu")
    assets = build_demo_assets(tmp / "assets", n_train=32, n_val=8)
    sft_parquet = str(tmp / "assets" / "data" / "sft_train.parquet")
    assert sft_from_rl_parquet(assets.train, sft_parquet) == 32
    sft = run_sft(
        sft_parquet, assets.model, tmp / "sft", steps=SFT_STEPS, batch_size=8, lr=1e-3, max_length=128
    )
    rl_ckpt = tmp / "rl_ckpt"
    rl_assets = type(assets)(model=sft.hf_model_dir, train=assets.train, val=assets.val)
    overrides = demo_overrides(rl_assets, steps=1, ckpt_dir=rl_ckpt, save_freq=1, test_freq=-1, lr=0.0) + [
        "prefix_rft.num_prefixed=0",
        "actor_rollout_ref.actor.optim.weight_decay=0.0",
    ]
    rl = run_recipe(overrides, workdir=tmp / "rl", tag="rl", timeout_s=480)
    assert rl.returncode == 0, f"RL from the SFT model failed:\n{rl.log_tail()}"
    return dict(tmp=tmp, assets=assets, sft=sft, rl=rl, rl_ckpt=rl_ckpt)


def test_sft_trains_through_verls_trainer_and_merges_to_hf(sft_then_rl):
    sft = sft_then_rl["sft"]
    assert sft.returncode == 0 and sft.steps == SFT_STEPS
    assert sorted(sft.metrics) == list(range(1, SFT_STEPS + 1))
    losses = [sft.metrics[s]["train/loss"] for s in range(1, SFT_STEPS + 1)]
    assert losses[-1] < losses[0], losses  # the demonstrations' NLL goes down
    hf = Path(sft.hf_model_dir)
    assert (hf / "model.safetensors").exists() and (hf / "tokenizer.json").exists()
    merged = load_file(str(hf / "model.safetensors"))
    base = load_file(str(Path(sft_then_rl["assets"].model) / "model.safetensors"))
    assert set(merged) == set(base)
    assert any(not torch.equal(merged[k].float(), base[k].float().to(merged[k].dtype).float()) for k in base)


def test_rl_starts_from_the_sft_weights(sft_then_rl):
    rl_weights = torch.load(
        sft_then_rl["rl_ckpt"] / "global_step_1" / "actor" / "model_world_size_1_rank_0.pt",
        map_location="cpu",
        weights_only=False,
    )
    merged = load_file(str(Path(sft_then_rl["sft"].hf_model_dir) / "model.safetensors"))
    base = load_file(str(Path(sft_then_rl["assets"].model) / "model.safetensors"))
    checked = 0
    for name, value in rl_weights.items():
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        key = name.replace("_fsdp_wrapped_module.", "")
        if key not in merged:
            continue
        # lr = 0: the RL actor still holds exactly the (bfloat16) SFT weights it loaded
        assert torch.equal(value.float(), merged[key].float()), key
        checked += 1
    assert checked == len(merged)
    emb = "model.embed_tokens.weight"
    assert not torch.equal(merged[emb].float(), base[emb].to(merged[emb].dtype).float())
    assert sft_then_rl["rl"].metrics[1]["timing_s/step"] > 0


def test_run_sft_reports_a_failing_trainer_with_its_log_tail(tmp_path, sft_then_rl, monkeypatch):
    import benchmarks.sft as sft_mod

    assets = sft_then_rl["assets"]
    sft_parquet = str(sft_then_rl["tmp"] / "assets" / "data" / "sft_train.parquet")
    monkeypatch.setattr(sft_mod, "SFT_MODULE", "prefix_rft.no_such_trainer")  # fails at once, no verl import
    with pytest.raises(SftError, match=r"(?s)verl's SFT trainer failed \(exit \d+\).*no_such_trainer"):
        run_sft(sft_parquet, assets.model, tmp_path / "bad", steps=1, batch_size=4)
    with pytest.raises(ValueError, match=r"batch_size=64 must be in \[1, 32\]"):
        run_sft(sft_parquet, assets.model, tmp_path / "bad2", steps=1, batch_size=64)
