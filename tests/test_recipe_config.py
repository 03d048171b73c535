"""The recipe config: composition on top of the installed verl, overrides, validation, run scripts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import compose_recipe as recipe_config
from conftest import compose_recipe_with_hydra, run_launcher
from omegaconf import OmegaConf

from prefix_rft.config import PrefixRFTConfig, PrefixRFTConfigError
from prefix_rft.verl_config import validate_verl_config

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "recipe" / "prefix_rft" / "main_prefix_rft.py"


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("+preset=luffy", "prefix_rft.loss.luffy_gamma=0.3"),
        ("prefix_rft.ratio.high=0.9", "data.val_files=null", "actor_rollout_ref.actor.optim.lr=1e-5"),
        (
            "trainer.logger=[console,file]",
            "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        ),
        (
            "++trainer.total_training_steps=7",
            "~actor_rollout_ref.actor.optim.weight_decay",
            "+preset=adaptive",
        ),
        ("prefix_rft.guidance.mode=adaptive", "+ray_kwargs.ray_init.num_gpus=1", "data.train_files=[a,b]"),
        # undotted values: their order against the dotted ones matters (all go to hydra's compose at once)
        ("trainer.total_epochs=3", "trainer={total_epochs:5}"),
        ("~trainer.total_epochs", "++trainer={total_epochs:9}"),
        ("+newtop.x=1", "+newtop={y:2}", "model_engine=megatron"),
        (
            "data.max_prompt_length=${data.max_response_length}",
            "actor_rollout_ref.rollout.n=${oc.decode:'4'}",
        ),
    ],
)
def test_cached_composition_equals_hydras(overrides):
    """The tests' ``compose_recipe`` (each defaults list composed once, value overrides applied by hydra's own
    step) gives exactly what hydra's compose gives, flags included; and refuses what hydra refuses."""
    fast, full = recipe_config(*overrides), compose_recipe_with_hydra(*overrides)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(full)  # keys in the same order too
    assert OmegaConf.to_yaml(fast, resolve=True) == OmegaConf.to_yaml(full, resolve=True)
    for node in ("", "trainer", "actor_rollout_ref.actor", "prefix_rft.ratio"):
        a, b = OmegaConf.select(fast, node) if node else fast, OmegaConf.select(full, node) if node else full
        assert (OmegaConf.is_struct(a), OmegaConf.is_readonly(a)) == (
            OmegaConf.is_struct(b),
            OmegaConf.is_readonly(b),
        )
    from hydra.errors import ConfigCompositionException

    for bad in ("prefix_rft.no_such_key=1", "+prefix_rft.ratio.high=0.5"):
        with pytest.raises(ConfigCompositionException) as fast_err:
            recipe_config(*overrides, bad)
        with pytest.raises(ConfigCompositionException) as full_err:
            compose_recipe_with_hydra(*overrides, bad)
        assert str(fast_err.value) == str(full_err.value)


def test_recipe_composes_with_paper_settings():
    cfg = recipe_config()
    a, r = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "prefix_rft" and cfg.algorithm.use_kl_in_reward is False
    assert (a.optim.lr, a.optim.clip_grad, a.ppo_epochs, a.ppo_mini_batch_size) == (1e-6, 1.0, 1, 64)
    assert (a.entropy_coeff, a.use_kl_loss, a.clip_ratio_low, a.clip_ratio_high, a.clip_ratio_c) == (
        0.001,
        False,
        0.2,
        0.2,
        3.0,
    )
    assert a.calculate_entropy is True
    assert (r.n, r.temperature, r.val_kwargs.temperature) == (8, 1.0, 0.6)
    assert r.agent.default_agent_loop == "prefix_rft_agent"
    assert cfg.actor_rollout_ref.model.external_lib == "prefix_rft.plugin"
    assert (cfg.data.train_batch_size, cfg.data.max_prompt_length, cfg.data.max_response_length) == (
        128,
        1024,
        8192,
    )
    assert dict(cfg.reward.custom_reward_function) == {
        "path": "pkg://prefix_rft.reward",
        "name": "compute_score",
    }
    assert cfg.trainer.use_v1 is True and cfg.trainer.v1.trainer_mode == "sync"
    # the rollout sees prompt + response within the data budgets
    assert (r.prompt_length, r.response_length) == (1024, 8192)
    # Dr.GRPO's objective: token sums divided by the constant response budget
    assert (a.loss_agg_mode, a.loss_scale_factor) == ("seq-mean-token-sum-norm", 8192)


def test_dr_grpo_normaliser_follows_the_response_budget_and_token_mean_is_an_override():
    from verl.utils.config import omega_conf_to_dataclass

    actor = omega_conf_to_dataclass(recipe_config("data.max_response_length=4096").actor_rollout_ref.actor)
    assert (actor.loss_agg_mode, actor.loss_scale_factor) == ("seq-mean-token-sum-norm", 4096)
    cfg = recipe_config("actor_rollout_ref.actor.loss_agg_mode=token-mean")
    validate_verl_config(cfg)
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).loss_agg_mode == "token-mean"


def test_a_config_without_loss_agg_mode_is_checked_as_verl_will_run_it():
    """The recipe yaml writes Dr.GRPO's aggregation (one constant names it in fixes); a config without the key
    is checked with what verl then runs, its ``ActorConfig`` default, not with the recipe's value."""
    from verl.workers.config import ActorConfig

    from prefix_rft.verl_config import RECIPE_LOSS_AGG_MODE, VERL_LOSS_AGG_MODE

    assert recipe_config().actor_rollout_ref.actor.loss_agg_mode == RECIPE_LOSS_AGG_MODE
    assert ActorConfig.__dataclass_fields__["loss_agg_mode"].default == VERL_LOSS_AGG_MODE
    cfg = OmegaConf.to_container(recipe_config("prefix_rft.loss.prefix_tokens=exclude"), resolve=True)
    del cfg["actor_rollout_ref"]["actor"]["loss_agg_mode"]
    # verl would run token-mean, which does not honour exclude: refused, naming the recipe's aggregation
    with pytest.raises(
        PrefixRFTConfigError, match=rf"loss_agg_mode={RECIPE_LOSS_AGG_MODE} \(the recipe default\)"
    ):
        validate_verl_config(cfg)
    cfg["prefix_rft"]["loss"]["prefix_tokens"] = "train"
    cfg["actor_rollout_ref"]["actor"]["loss_scale_factor"] = None  # token-mean needs no constant
    validate_verl_config(cfg)


def test_prefix_rft_block_mirrors_the_dataclass_exactly():
    block = OmegaConf.to_container(recipe_config().prefix_rft, resolve=True)
    assert block == dataclasses.asdict(PrefixRFTConfig())
    assert validate_verl_config(recipe_config()) == PrefixRFTConfig()


def test_readme_key_table_lists_every_key_with_the_dataclass_default():
    """recipe/prefix_rft/README.md's "Every prefix_rft key" table: one row per dataclass field, its default as
    the dataclass writes it (the dataclasses are the one source; the yaml is checked just above)."""
    import re
    from pathlib import Path

    def flat(obj, prefix="prefix_rft"):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            out.update(
                flat(value, f"{prefix}.{f.name}")
                if dataclasses.is_dataclass(value)
                else {f"{prefix}.{f.name}": value}
            )
        return out

    def written(value):
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    readme = (Path(__file__).resolve().parents[1] / "recipe" / "prefix_rft" / "README.md").read_text()
    table = dict(re.findall(r"^\| `(prefix_rft\.[a-z_.]+)` \| `([^`]*)` \|", readme, re.M))
    assert table == {key: written(v) for key, v in flat(PrefixRFTConfig()).items()}


def test_verl_validates_the_recipe():
    """verl's own start-up checks (batch sizes, dynamic bsz, actor dataclass) accept the recipe."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    cfg = recipe_config()
    assert not need_critic(cfg) and not need_reference_policy(cfg)
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    assert type(omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)).__name__ == "FSDPActorConfig"


def test_cli_overrides_apply():
    cfg = recipe_config(
        "prefix_rft.entropy_clip.top_ratio=0.5",
        "prefix_rft.ratio.schedule=linear",
        "prefix_rft.advantage.mode=on_policy_baseline",
        "actor_rollout_ref.actor.optim.lr=2e-6",
        "actor_rollout_ref.rollout.n=4",
        "prefix_rft.num_prefixed=2",
    )
    pcfg = validate_verl_config(cfg)
    assert (pcfg.entropy_clip.top_ratio, pcfg.ratio.schedule, pcfg.advantage.mode, pcfg.num_prefixed) == (
        0.5,
        "linear",
        "on_policy_baseline",
        2,
    )
    assert cfg.actor_rollout_ref.actor.optim.lr == 2e-6 and cfg.actor_rollout_ref.actor.rollout_n == 4


def test_megatron_and_sglang_compose():
    from verl.utils.config import omega_conf_to_dataclass

    cfg = recipe_config("model_engine=megatron", "actor_rollout_ref.rollout.name=sglang")
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    assert cfg.actor_rollout_ref.rollout.name == "sglang"
    assert (
        cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 64
        and cfg.actor_rollout_ref.actor.entropy_coeff == 0.001
    )
    assert type(omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)).__name__ == "McoreActorConfig"
    assert validate_verl_config(cfg) == PrefixRFTConfig()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["prefix_rft.num_prefixed=9"], "prefix_rft.num_prefixed"),
        (["prefix_rft.ratio.schedule=exp"], "prefix_rft.ratio.schedule"),
        (["prefix_rft.entropy_clip.top_ratio=0"], "prefix_rft.entropy_clip.top_ratio"),
        (["prefix_rft.loss.is_mode=sft"], "prefix_rft.loss.is_mode"),
        (["+prefix_rft.ratio.typo=1"], "prefix_rft.ratio.typo"),
        (["algorithm.adv_estimator=grpo"], "algorithm.adv_estimator"),
        (
            ["actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent"],
            "actor_rollout_ref.rollout.agent.default_agent_loop",
        ),
        (["algorithm.rollout_correction.bypass_mode=true"], "algorithm.rollout_correction.bypass_mode"),
        (
            ["actor_rollout_ref.actor.shuffle=true", "actor_rollout_ref.actor.ppo_epochs=2"],
            "actor_rollout_ref.actor.shuffle",
        ),
        (
            [
                "prefix_rft.entropy_clip.scope=micro_batch",
                "prefix_rft.entropy_clip.source=current",
                "actor_rollout_ref.actor.calculate_entropy=false",
                "actor_rollout_ref.actor.entropy_coeff=0",
            ],
            "actor_rollout_ref.actor.calculate_entropy",
        ),
        (["trainer.v1.trainer_mode=colocate_async"], "trainer.v1.trainer_mode"),
        (["actor_rollout_ref.actor.loss_scale_factor=null"], "actor_rollout_ref.actor.loss_scale_factor"),
        (["actor_rollout_ref.actor.loss_scale_factor=0"], "actor_rollout_ref.actor.loss_scale_factor"),
        (["actor_rollout_ref.actor.clip_ratio_c=1.0"], "actor_rollout_ref.actor.clip_ratio_c"),
    ],
)
def test_invalid_values_fail_naming_the_key(overrides, key):
    with pytest.raises(PrefixRFTConfigError) as err:
        validate_verl_config(recipe_config(*overrides))
    assert key in str(err.value) and (
        "Fix" in str(err.value) or "fix" in str(err.value) or "known keys" in str(err.value)
    )


def test_rft_baseline_accepts_plain_verl_choices():
    """With no prefixes the Prefix-RFT-only requirements are lifted (e.g. verl's grpo estimator)."""
    cfg = recipe_config("prefix_rft.num_prefixed=0", "algorithm.adv_estimator=grpo")
    assert validate_verl_config(cfg).num_prefixed == 0


def _env():
    env = dict(os.environ, PYTHON=sys.executable, HOME=os.environ.get("HOME", "/tmp"))
    return env


def test_hydra_flags_anywhere_on_the_line(tmp_path):
    """The entry point adds its own overrides (verl's config folder by path, ``--cfg job``'s quiet output) after the
    line's overrides and its flags first: hydra's parser takes overrides as one run (before: a trailing flag such
    as ``--info`` failed with 'unrecognized arguments')."""

    def run(*args):
        return subprocess.run(
            [sys.executable, str(MAIN), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    info = run("trainer.total_epochs=1", "--info", "searchpath")
    assert info.returncode == 0, info.stderr[-2000:]
    assert "file://" in info.stdout and "verl/trainer/config" in info.stdout
    job = run("--cfg", "job", "-cn", "prefix_rft_trainer", "+preset=luffy")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "is_mode: luffy" in job.stdout and not (tmp_path / "outputs").exists()


def test_main_rejects_a_bad_value_before_starting_ray(tmp_path):
    out = subprocess.run(
        [sys.executable, str(MAIN), "prefix_rft.ratio.high=1.5"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=_env(),
    )
    assert out.returncode != 0
    assert "prefix_rft.ratio.high=1.5 is invalid" in out.stderr + out.stdout
    assert "Started a local Ray instance" not in out.stderr + out.stdout


SCRIPTS = {
    # script: (extra command-line overrides, expected values in the printed config)
    "run_prefix_rft_qwen7b.sh": (
        ["trainer.nnodes=2"],
        {
            "prefix_rft.num_prefixed": 1,
            "prefix_rft.ratio.schedule": "cosine",
            "trainer.nnodes": 2,
            "model_engine": "dp",
            "trainer.experiment_name": "prefix_rft_qwen2.5_math_7b",
            "actor_rollout_ref.model.path": "Elliott/Qwen2.5-Math-7B-16k-think",
            "actor_rollout_ref.rollout.n": 8,
            "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-sum-norm",
            "actor_rollout_ref.actor.loss_scale_factor": 8192,
        },
    ),
    "run_prefix_rft_qwen7b_megatron.sh": (
        [],
        {
            "model_engine": "megatron",
            "actor_rollout_ref.actor.megatron.tensor_model_parallel_size": 4,
            "prefix_rft.entropy_clip.top_ratio": 0.2,
        },
    ),
    "run_rft_qwen7b.sh": (
        ["actor_rollout_ref.rollout.name=sglang"],
        {
            "prefix_rft.num_prefixed": 0,
            "actor_rollout_ref.rollout.name": "sglang",
            "trainer.experiment_name": "rft_qwen2.5_math_7b",
        },
    ),
    "run_luffy_qwen7b.sh": (
        ["prefix_rft.loss.luffy_gamma=0.2"],
        {
            "prefix_rft.ratio.schedule": "const",
            "prefix_rft.ratio.low_start": 1.0,
            "prefix_rft.ratio.low_end": 1.0,
            "prefix_rft.ratio.high": 1.0,
            "prefix_rft.loss.is_mode": "luffy",
            "prefix_rft.loss.luffy_gamma": 0.2,
            "prefix_rft.entropy_clip.enable": False,
        },
    ),
}


def _run_script(name, extra, cwd):
    return run_launcher(name, *extra, cwd=cwd, MODEL_PATH="Elliott/Qwen2.5-Math-7B-16k-think")


def test_run_scripts_print_the_composed_config(tmp_path):
    """Each launcher with `--cfg job` prints its config (no GPU, nothing launched); the command line wins."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(
            zip(SCRIPTS, pool.map(lambda n: _run_script(n, SCRIPTS[n][0], tmp_path), SCRIPTS), strict=True)
        )
    for name, out in results.items():
        assert out.returncode == 0, f"{name}: {out.stderr[-3000:]}"
        cfg = OmegaConf.create(yaml.safe_load(out.stdout))
        for key, value in SCRIPTS[name][1].items():
            assert OmegaConf.select(cfg, key) == value, (
                f"{name}: {key}={OmegaConf.select(cfg, key)!r} != {value!r}"
            )
        pcfg = validate_verl_config(cfg)
        assert pcfg.ratio.schedule == cfg.prefix_rft.ratio.schedule
        assert "Started a local Ray instance" not in out.stderr


def test_non_vanilla_policy_loss_is_refused_at_start_up():
    with pytest.raises(PrefixRFTConfigError, match=r"policy_loss\.loss_mode='gspo'.*loss_mode=vanilla"):
        validate_verl_config(recipe_config("actor_rollout_ref.actor.policy_loss.loss_mode=gspo"))


def test_what_the_actor_loss_no_longer_rechecks_is_refused_at_start_up():
    """The actor loss relies on these (they were its per-micro-batch errors): refused by validate_verl_config,
    also with num_prefixed=0, whose prefix_rft_agent batches still take the loss's Prefix-RFT path."""
    with pytest.raises(PrefixRFTConfigError, match=r"loss_scale_factor=\$\{data.max_response_length\}"):
        validate_verl_config(recipe_config("actor_rollout_ref.actor.loss_scale_factor=null"))
    rft = "prefix_rft.num_prefixed=0"
    with pytest.raises(PrefixRFTConfigError, match="loss_mode='gspo'"):
        validate_verl_config(recipe_config(rft, "actor_rollout_ref.actor.policy_loss.loss_mode=gspo"))
    current = (
        "prefix_rft.entropy_clip.scope=micro_batch",
        "prefix_rft.entropy_clip.source=current",
        "actor_rollout_ref.actor.entropy_coeff=0",
    )
    with pytest.raises(PrefixRFTConfigError, match="calculate_entropy"):
        validate_verl_config(recipe_config(rft, *current, "actor_rollout_ref.actor.calculate_entropy=false"))
    validate_verl_config(recipe_config(rft, *current, "actor_rollout_ref.actor.calculate_entropy=true"))
    with pytest.raises(PrefixRFTConfigError, match=r"clip_ratio_c=0\.5.*must be > 1"):
        validate_verl_config(recipe_config(rft, "actor_rollout_ref.actor.clip_ratio_c=0.5"))
    with pytest.raises(
        PrefixRFTConfigError, match=r"clip_ratio_c='three'.*must be > 1"
    ):  # named, not a traceback
        validate_verl_config(recipe_config(rft, "actor_rollout_ref.actor.clip_ratio_c=three"))
    # another agent loop gives plain batches, which the loss hands to verl's ppo_loss (any loss_mode)
    plain = "actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent"
    validate_verl_config(recipe_config(rft, plain, "actor_rollout_ref.actor.policy_loss.loss_mode=gspo"))


def test_validation_rows_that_would_be_prefixed_are_refused(tmp_path):
    from benchmarks.fixtures.tiny import synthetic_math_rows, write_parquet

    rows = synthetic_math_rows(3, split="train")  # train rows: demos and split "train"
    reused = write_parquet(rows, str(tmp_path / "train_as_val.parquet"))
    for row in rows:
        row["extra_info"]["split"] = "test"
    marked = write_parquet(rows, str(tmp_path / "val_marked.parquet"))
    clean = write_parquet(synthetic_math_rows(3, split="test"), str(tmp_path / "val.parquet"))
    validate_verl_config(recipe_config(f"data.val_files=[{marked},{clean}]"))  # both fine
    with pytest.raises(
        PrefixRFTConfigError, match=r"train_as_val\.parquet row 0 .*extra_info\.split='train'"
    ):
        validate_verl_config(recipe_config(f"data.val_files=[{clean},{reused}]"))
    # plain RFT never prefixes, so the same file is fine there
    validate_verl_config(recipe_config(f"data.val_files={reused}", "prefix_rft.num_prefixed=0"))


def _model_dir(tmp_path, max_position_embeddings):
    model = tmp_path / f"model_{max_position_embeddings}"
    model.mkdir()
    (model / "config.json").write_text(f'{{"max_position_embeddings": {max_position_embeddings}}}')
    return str(model)


def test_context_window_too_small_fails_at_start_up_naming_keys_and_numbers(tmp_path):
    model = _model_dir(tmp_path, 4096)  # the stock Qwen2.5-Math-7B window; the recipe wants 1024 + 8192
    with pytest.raises(
        PrefixRFTConfigError,
        match=r"data\.max_prompt_length \+ data\.max_response_length = 1024 \+ 8192 = 9216 exceeds the rollout "
        r"context window of 4096 tokens \(the model's max_position_embeddings=4096\)",
    ):
        validate_verl_config(recipe_config(f"actor_rollout_ref.model.path={model}"))
    with pytest.raises(PrefixRFTConfigError, match=r"rollout\.max_model_len=8192 exceeds the model's max_po"):
        validate_verl_config(
            recipe_config(
                f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.rollout.max_model_len=8192"
            )
        )
    big = _model_dir(tmp_path, 9216)
    validate_verl_config(recipe_config(f"actor_rollout_ref.model.path={big}"))  # exactly fits on vLLM
    with pytest.raises(
        PrefixRFTConfigError, match=r"window of 9215 tokens .*minus SGLang's 1-token headroom"
    ):
        validate_verl_config(
            recipe_config(f"actor_rollout_ref.model.path={big}", "actor_rollout_ref.rollout.name=sglang")
        )
    with pytest.raises(PrefixRFTConfigError, match=r"actor_rollout_ref\.rollout\.max_model_len=9000\)"):
        validate_verl_config(recipe_config("actor_rollout_ref.rollout.max_model_len=9000"))


def test_rollout_n_zero_blames_rollout_n():
    with pytest.raises(
        PrefixRFTConfigError, match=r"actor_rollout_ref\.rollout\.n=0 is invalid: expected an integer >= 1"
    ):
        validate_verl_config(recipe_config("actor_rollout_ref.rollout.n=0"))


def test_launcher_defaults_python_to_the_repo_venv_and_takes_cfg_job_anywhere(tmp_path):
    assert (ROOT / ".venv" / "bin" / "python").exists()  # as `make` builds it
    env = _env()
    env.pop("PYTHON")
    env["PATH"] = "/usr/bin:/bin"  # a python3 without hydra first on PATH must not matter
    run = lambda *args: subprocess.run(  # noqa: E731
        ["bash", str(ROOT / "scripts" / "run_rft_qwen7b.sh"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    out = run("trainer.nnodes=2", "--cfg", "job", "trainer.n_gpus_per_node=4")
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = OmegaConf.create(yaml.safe_load(out.stdout))
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node, cfg.prefix_rft.num_prefixed) == (2, 4, 0)
    assert str(ROOT / ".venv" / "bin" / "python") in out.stderr  # the traced command line
    assert not (tmp_path / "outputs").exists()  # print-only: no hydra output folder
    bad = run("--cfg", "job", "prefix_rft.ratio.high=1.5")
    assert bad.returncode != 0
    assert "invalid config: prefix_rft.ratio.high=1.5 is invalid" in bad.stderr


def test_training_files_are_checked_at_start_up(tmp_path):
    from benchmarks.fixtures.tiny import synthetic_math_rows, write_parquet

    rows = synthetic_math_rows(4, split="train")
    good = write_parquet(rows, str(tmp_path / "train.parquet"))
    validate_verl_config(recipe_config(f"data.train_files={good}", "data.val_files=null"))
    with pytest.raises(
        PrefixRFTConfigError,
        match=r"train\.parquet has no column prefix_rft\.demo_key='solutions' \(its columns: .*demonstrations",
    ):
        validate_verl_config(
            recipe_config(f"data.train_files={good}", "data.val_files=null", "prefix_rft.demo_key=solutions")
        )
    for i, row in enumerate(rows):
        row["demonstrations"] = [i, i + 1]  # a demo column of ints
    ints = write_parquet(rows, str(tmp_path / "ints.parquet"))
    with pytest.raises(
        PrefixRFTConfigError,
        match=r"ints\.parquet row 0 breaks the data contract: demonstrations: must be a string, a list of "
        r"strings or a list of \{'content': str\} messages\. Fix the file .*validate_parquet",
    ):
        validate_verl_config(recipe_config(f"data.train_files=[{ints}]", "data.val_files=null"))
    validate_verl_config(  # plain RFT ignores the demo column
        recipe_config(f"data.train_files={ints}", "data.val_files=null", "prefix_rft.num_prefixed=0")
    )


def test_rollout_n_one_with_prefixes_is_refused_naming_rollout_n():
    """A group of one rollout has advantage 0: no policy gradient at all (before: rc 0, nothing learnt)."""
    with pytest.raises(
        PrefixRFTConfigError,
        match=r"actor_rollout_ref\.rollout\.n=1 is incompatible .*no policy gradient.*Fix: actor_rollout_ref\."
        r"rollout\.n=8",
    ):
        validate_verl_config(recipe_config("actor_rollout_ref.rollout.n=1"))
    validate_verl_config(recipe_config("actor_rollout_ref.rollout.n=2"))


@pytest.mark.parametrize("empty", [None, "", "  ", [], [""], [{"content": ""}]])
def test_demo_column_without_any_demonstration_is_refused(tmp_path, empty):
    """An all-null / all-empty demo column would train as plain RFT without a word (before: rc 0)."""
    from benchmarks.fixtures.tiny import synthetic_math_rows, write_parquet

    rows = synthetic_math_rows(300, split="train")  # more than the 256 sampled rows: the whole column is read
    for row in rows:
        row["demonstrations"] = empty
    path = write_parquet(rows, str(tmp_path / "nulls.parquet"))
    with pytest.raises(
        PrefixRFTConfigError,
        match=r"nulls\.parquet has no usable demonstration in column prefix_rft\.demo_key='demonstrations' "
        r"\(all 300 rows are null or empty\).*plain RFT.*prefix_rft\.num_prefixed=0",
    ):
        validate_verl_config(recipe_config(f"data.train_files={path}", "data.val_files=null"))
    # one usable demo past the sampled rows is enough (the rest count in prefix_rft/demo_missing)
    demo = "2 + 2 = 4. The answer is \\boxed{4}."
    if isinstance(empty, list) and empty and isinstance(empty[0], dict):
        demo = {"content": demo}
    rows[280]["demonstrations"] = demo if isinstance(empty, str) else [demo]
    late = write_parquet(rows, str(tmp_path / "late.parquet"))
    validate_verl_config(recipe_config(f"data.train_files={late}", "data.val_files=null"))
    validate_verl_config(
        recipe_config(f"data.train_files={path}", "data.val_files=null", "prefix_rft.num_prefixed=0")
    )


def test_demos_as_content_messages_are_accepted_at_start_up(tmp_path):
    """``[{"content": ...}]`` demos are documented and read by the agent loop (before: refused as ill-typed)."""
    from benchmarks.fixtures.tiny import synthetic_math_rows, write_parquet
    from prefix_rft.agent_loop import extract_demos

    rows = synthetic_math_rows(4, split="train")
    for row in rows:
        row["demonstrations"] = [{"role": "assistant", "content": text} for text in row["demonstrations"]]
    path = write_parquet(rows, str(tmp_path / "messages.parquet"))
    validate_verl_config(recipe_config(f"data.train_files={path}", "data.val_files=null"))
    assert extract_demos(rows[0]["demonstrations"])  # the agent loop reads the same rows
    for row in rows:
        row["demonstrations"] = [{"role": "assistant", "content": 7}]
    bad = write_parquet(rows, str(tmp_path / "bad_messages.parquet"))
    with pytest.raises(
        PrefixRFTConfigError, match=r"bad_messages\.parquet row 0 .*list of \{'content': str\}"
    ):
        validate_verl_config(recipe_config(f"data.train_files={bad}", "data.val_files=null"))


def _unwritable_dir(tmp_path) -> str:
    """A checkpoint folder this process cannot create: /sys refuses root too; else a read-only folder."""
    if os.geteuid() == 0:
        return "/sys/prefix_rft_checkpoints/run"
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    return str(ro / "run")


def test_unwritable_checkpoint_dir_is_refused_at_start_up(tmp_path):
    """Before: trained, then `OSError: Read-only file system` at the first save. `--cfg job` checks as a run."""
    ckpt = _unwritable_dir(tmp_path)
    out = subprocess.run(
        [sys.executable, str(MAIN), "--cfg", "job", f"trainer.default_local_dir={ckpt}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=_env(),
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"invalid config: trainer.default_local_dir='{ckpt}' is not writable" in out.stderr
    assert "Fix: trainer.default_local_dir=" in out.stderr
    # a run that saves nothing does not need the folder
    validate_verl_config(recipe_config(f"trainer.default_local_dir={ckpt}", "trainer.save_freq=-1"))


def test_checkpoint_disk_without_room_is_refused_at_start_up(tmp_path, monkeypatch):
    """Before: a full disk failed the first save with an iostream error and no path."""
    import shutil
    from collections import namedtuple

    import prefix_rft.checkpoint as ckpt_mod

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"torch_dtype": "bfloat16", "max_position_embeddings": 32768}')
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(2 * 10**9)  # a sparse 2 GB weight file: 1e9 bf16 parameters
    assert (
        ckpt_mod.estimate_checkpoint_bytes(recipe_config(f"actor_rollout_ref.model.path={model}"))
        == 12 * 10**9
    )  # fp32 model + AdamW's two fp32 moments
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 5 * 10**9, 5 * 10**9))
    with pytest.raises(
        PrefixRFTConfigError,
        match=r"trainer\.default_local_dir='.*' has 5\.00 GB free .* one checkpoint of this model takes about "
        r"12\.00 GB",
    ):
        validate_verl_config(
            recipe_config(f"actor_rollout_ref.model.path={model}", f"trainer.default_local_dir={tmp_path}/ck")
        )
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda p: usage(10**12, 0, 20 * 10**9))
    validate_verl_config(
        recipe_config(f"actor_rollout_ref.model.path={model}", f"trainer.default_local_dir={tmp_path}/ck")
    )
    assert shutil.disk_usage is not None


def test_cfg_job_reads_verls_config_from_its_folder_without_importing_verl():
    """``--cfg job`` finds verl's config folder without importing verl (hydra's ``pkg://`` source would: ~3 s of
    torch, Ray and transformers) and composes exactly what the yaml's own ``pkg://verl.trainer.config`` gives.
    Its validation loads no torch either (``prefix_rft.core.modes``): ~1 s of every launcher's dry run."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = [sys.argv[1], '--cfg', 'job', *sys.argv[2:]]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('verl imported:', 'verl' in sys.modules, file=sys.stderr)\n"
        "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", probe, str(MAIN), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    fast, via_pkg = run(), run("hydra.searchpath=[pkg://verl.trainer.config]")
    assert fast.returncode == 0 and via_pkg.returncode == 0, fast.stderr[-2000:] + via_pkg.stderr[-2000:]
    assert "verl imported: False" in fast.stderr and "torch imported: False" in fast.stderr
    assert "verl imported: True" in via_pkg.stderr  # the command line's own searchpath is kept as given
    assert fast.stdout == via_pkg.stdout and "adv_estimator: prefix_rft" in fast.stdout
