"""Named presets (recipe/prefix_rft/config/preset/*.yaml): composition, launcher, and token-level effect.

Token-level tests run the real objective (prefix_rft.core.loss with the prefix_rft block each preset
composes to) on one hand-built group: a hybrid rollout (3 demo tokens, then 2 generated) and an on-policy
rollout (3 generated tokens). Ratios are 1 (log_prob == old_log_prob), so every trained token's gradient
is -A_t * d(ratio) = -A_t per unit log-prob, and unkept / frozen tokens have gradient exactly 0.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from config_defaults import token_loss
from conftest import compose_recipe, run_launcher
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import agg_loss

from benchmarks.launch import recipe_presets
from prefix_rft.config import PrefixRFTConfigError
from prefix_rft.core.advantage import on_policy_baseline_advantage
from prefix_rft.core.loss import aggregation_mask, prefix_rft_token_loss
from prefix_rft.core.schedule import keeps_demo, ratio_bounds
from prefix_rft.trainer import build_keep_mask, selection_seed
from prefix_rft.verl_config import validate_verl_config

_PRESETS = recipe_presets()
describe, list_presets, main = _PRESETS.describe, _PRESETS.list_presets, _PRESETS.main
preset_override, preset_path = _PRESETS.preset_override, _PRESETS.preset_path

ROOT = Path(__file__).resolve().parents[1]

# preset -> dotted keys it must set (compared after composition on top of the recipe)
EXPECTED = {
    "prefix_rft": {"prefix_rft.num_prefixed": 1, "prefix_rft.entropy_clip.enable": True},
    "rft": {"prefix_rft.num_prefixed": 0},
    "all_demo_tokens": {"prefix_rft.entropy_clip.enable": False, "prefix_rft.num_prefixed": 1},
    "exclude_prefix": {
        "prefix_rft.loss.prefix_tokens": "exclude",
        "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-sum-norm",
    },
    "luffy": {
        "prefix_rft.ratio.schedule": "const",
        "prefix_rft.ratio.low_start": 1.0,
        "prefix_rft.ratio.high": 1.0,
        "prefix_rft.loss.is_mode": "luffy",
        "prefix_rft.loss.prefix_clip": False,
        "prefix_rft.entropy_clip.enable": False,
        "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-sum-norm",
        "actor_rollout_ref.actor.loss_scale_factor": 8192,
    },
    "luffy_token_mean": {
        "prefix_rft.loss.is_mode": "luffy",
        "prefix_rft.ratio.low_end": 1.0,
        "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
    },
    "rl_sft_loss": {
        "actor_rollout_ref.rollout.n": 9,
        "actor_rollout_ref.actor.rollout_n": 9,
        "prefix_rft.num_prefixed": 1,
        "prefix_rft.ratio.low_start": 1.0,
        "prefix_rft.loss.prefix_tokens": "freeze",
        "prefix_rft.loss.sft_coef": 1.0,
        "prefix_rft.advantage.mode": "on_policy_baseline",
        "prefix_rft.entropy_clip.enable": False,
    },
    "freeze_prefix": {"prefix_rft.loss.prefix_tokens": "freeze", "prefix_rft.entropy_clip.enable": True},
    "static_sft": {
        "prefix_rft.loss.prefix_tokens": "freeze",
        "prefix_rft.loss.sft_coef": 0.001,
        "prefix_rft.entropy_clip.enable": False,
    },
    "top50": {"prefix_rft.entropy_clip.top_ratio": 0.5, "prefix_rft.entropy_clip.selection": "top"},
    "top80": {"prefix_rft.entropy_clip.top_ratio": 0.8, "prefix_rft.entropy_clip.selection": "top"},
    "random20": {"prefix_rft.entropy_clip.top_ratio": 0.2, "prefix_rft.entropy_clip.selection": "random"},
    "bottom20": {"prefix_rft.entropy_clip.top_ratio": 0.2, "prefix_rft.entropy_clip.selection": "bottom"},
    "uniform_ratio": {
        "prefix_rft.ratio.schedule": "const",
        "prefix_rft.ratio.low_start": 0.05,
        "prefix_rft.ratio.high": 0.95,
    },
    "demos10": {"prefix_rft.demo_fraction": 0.1, "prefix_rft.num_prefixed": 1},
    "weak_demos": {"prefix_rft.demo_key": "weak_demonstrations", "prefix_rft.num_prefixed": 1},
    "on_failure": {"prefix_rft.guidance.mode": "on_failure", "prefix_rft.guidance.threshold": 0.0},
    "adaptive": {"prefix_rft.guidance.mode": "adaptive", "prefix_rft.guidance.target": 0.5},
}


def composed(name: str, *overrides: str):
    return compose_recipe(preset_override(name), *overrides)


def test_every_preset_file_has_an_expectation_and_the_helper_lists_them():
    assert list_presets() == sorted(EXPECTED)
    assert preset_path("rft").read_text().startswith("# @package _global_")
    with pytest.raises(ValueError, match="unknown preset 'nope'; known presets: adaptive, all_demo_tokens"):
        preset_path("nope")
    assert "no entropy-based clipping" in describe("all_demo_tokens")
    assert main(["nope"]) == 2 and main(["rft"]) == 0


@functools.cache
def _verl_accepts_actor(actor_yaml: str) -> None:
    """verl's actor dataclass built from one actor config (each distinct one once: ~0.4 s each)."""
    from verl.utils.config import omega_conf_to_dataclass

    omega_conf_to_dataclass(OmegaConf.create(actor_yaml))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_composes_and_validates(name):
    cfg = composed(name)
    for key, value in EXPECTED[name].items():
        assert OmegaConf.select(cfg, key) == value, (name, key)
    validate_verl_config(cfg)
    _verl_accepts_actor(OmegaConf.to_yaml(cfg.actor_rollout_ref.actor, resolve=True))
    # the command line wins over the preset
    assert composed(name, "prefix_rft.loss.luffy_gamma=0.3").prefix_rft.loss.luffy_gamma == 0.3


def _written_keys(node, prefix=""):
    """Dotted keys a preset file writes (its ``defaults:`` list aside)."""
    for key, value in node.items():
        if key == "defaults" and not prefix:
            continue
        if isinstance(value, dict):
            yield from _written_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_writes_only_what_differs_from_the_recipe_default(name):
    """The dataclasses (mirrored by the recipe yaml) are the one source of every default: a preset that
    restated one would silently keep the old value if the default moved."""
    base = compose_recipe()
    cfg = composed(name)
    written = list(_written_keys(yaml.safe_load(preset_path(name).read_text()) or {}))
    same = [key for key in written if OmegaConf.select(cfg, key) == OmegaConf.select(base, key)]
    assert not same, f"preset {name} restates the recipe default of {same}"


def test_exclude_prefix_refuses_token_mean():
    with pytest.raises(PrefixRFTConfigError, match="loss_agg_mode='token-mean'"):
        validate_verl_config(composed("exclude_prefix", "actor_rollout_ref.actor.loss_agg_mode=token-mean"))


def _launch(name: str, cwd) -> subprocess.CompletedProcess:
    return run_launcher("run_ablation_qwen7b.sh", name, "trainer.nnodes=2", cwd=cwd)


def test_launcher_composes_every_preset_with_cfg_job(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(EXPECTED, pool.map(lambda n: _launch(n, tmp_path), EXPECTED), strict=True))
    for name, out in results.items():
        assert out.returncode == 0, f"{name}: {out.stderr[-3000:]}"
        cfg = OmegaConf.create(yaml.safe_load(out.stdout))
        for key, value in EXPECTED[name].items():
            assert OmegaConf.select(cfg, key) == value, (name, key)
        assert cfg.trainer.nnodes == 2 and cfg.trainer.experiment_name == f"{name}_qwen2.5_math_7b"
        validate_verl_config(cfg)


def test_launcher_list_and_unknown_name(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    script = str(ROOT / "scripts" / "run_ablation_qwen7b.sh")
    out = subprocess.run(["bash", script, "--list"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and [ln.split()[0] for ln in out.stdout.splitlines()] == sorted(EXPECTED)
    out = subprocess.run(["bash", script, "nope"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2 and "unknown preset 'nope'" in out.stderr


# ---------------------------------------------------------------- token level


PREFIX = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float64)
# old-policy entropy: demo tokens 0.5, 2.0, 1.0; the continuation's 9.0s must never be selected
ENTROPY = torch.tensor([[0.5, 2.0, 1.0, 9.0, 9.0], [9.0, 9.0, 9.0, 0.0, 0.0]], dtype=torch.float64)


@functools.cache
def preset_config(name: str):
    """The validated ``prefix_rft`` block of preset ``name`` (composed once per preset; read, never changed)."""
    return validate_verl_config(composed(name))


def preset_keep(name: str, step: int = 0):
    """The keep-mask the trainer writes for preset ``name`` (its build_keep_mask, its seed), or None."""
    pcfg = preset_config(name)
    if not pcfg.entropy_clip.enable:
        return None
    seed = selection_seed(pcfg.seed, step)
    return build_keep_mask(ENTROPY, PREFIX, pcfg.entropy_clip, None, seed=seed).to(torch.float64)


def run_preset_loss(name: str, adv_rows=(1.0, -2.0), loss_scale_factor=10, prefix=None):
    """(loss, grad of log_prob, aggregation mask) of the objective preset ``name`` composes to."""
    cfg = composed(name)
    pcfg = validate_verl_config(cfg)
    lp = torch.full((2, 5), -1.0, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor(adv_rows, dtype=torch.float64)[:, None].expand(2, 5)
    keep = preset_keep(name)
    prefix = PREFIX if prefix is None else prefix
    actor = cfg.actor_rollout_ref.actor
    loss_mat, _ = prefix_rft_token_loss(
        lp,
        lp.detach(),
        adv,
        MASK,
        prefix,
        keep,
        clip_ratio_low=actor.clip_ratio_low,
        clip_ratio_high=actor.clip_ratio_high,
        clip_ratio_c=actor.clip_ratio_c,
        is_mode=pcfg.loss.is_mode,
        luffy_gamma=pcfg.loss.luffy_gamma,
        sft_coef=pcfg.loss.sft_coef,
        prefix_clip=pcfg.loss.resolved_prefix_clip(),
        prefix_tokens=pcfg.loss.prefix_tokens,
    )
    agg = aggregation_mask(MASK, prefix, pcfg.loss.prefix_tokens)
    loss = agg_loss(loss_mat, agg, actor.loss_agg_mode, loss_scale_factor=loss_scale_factor)
    loss.backward()
    return loss, lp.grad, agg


def test_prefix_rft_preset_tokens():
    # Dr.GRPO: d/dlp of sum_i sum_t -A_i r_it / (2 sequences * 10): only the kept demo token of row 0 and
    # every generated token have a gradient; all 8 tokens stay in the (constant) denominator
    _, grad, agg = run_preset_loss("prefix_rft")
    g = -1.0 / 20
    assert grad[0].tolist() == pytest.approx([0.0, g, 0.0, g, g])
    assert grad[1].tolist() == pytest.approx([2 / 20, 2 / 20, 2 / 20, 0.0, 0.0])
    assert agg.tolist() == MASK.tolist()


def test_all_demo_tokens_preset_tokens():
    _, grad, _ = run_preset_loss("all_demo_tokens")
    assert grad[0].tolist() == pytest.approx([-1 / 20] * 5)  # every demo token keeps its advantage


def test_exclude_prefix_preset_tokens():
    _, grad, agg = run_preset_loss("exclude_prefix")
    assert grad[0].tolist() == pytest.approx([0.0, 0.0, 0.0, -1 / 20, -1 / 20])
    assert agg[0].tolist() == [0, 0, 0, 1, 1]  # demo tokens are in no aggregation mask


def test_rft_preset_is_plain_dr_grpo():
    # no demo tokens ever exist with num_prefixed=0; on a group without them every token is trained
    cfg = validate_verl_config(composed("rft"))
    assert cfg.num_prefixed == 0


def test_luffy_preset_tokens_are_shaped_and_unclipped():
    # pi = e^-1 on demo tokens: d/dlp of -A * pi/(pi+g) = -A * g*pi/(pi+g)^2, for A = -2 as well as +1
    _, grad, _ = run_preset_loss("luffy", adv_rows=(-2.0, -2.0))
    pi, gamma = torch.exp(torch.tensor(-1.0, dtype=torch.float64)).item(), 0.1
    shaped = 2.0 * gamma * pi / (pi + gamma) ** 2 / 20
    assert grad[0, :3].tolist() == pytest.approx([shaped] * 3)
    # with PPO clipping on (the authors' enable_clip), pi = 0.37 < 1 - 0.2 and A < 0: the lower clip bites
    cfg = composed("luffy", "prefix_rft.loss.prefix_clip=true")
    assert validate_verl_config(cfg).loss.resolved_prefix_clip() is True


def test_behavior_one_lower_clip_bites_only_with_prefix_clip():
    lp = torch.full((1, 2), -1.0, dtype=torch.float64, requires_grad=True)  # pi = 0.37
    adv = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    ones, prefix = torch.ones(1, 2), torch.tensor([[1.0, 0.0]])
    for clip, expected in ((False, 0.3679), (True, 0.0)):
        lp.grad = None
        mat, _ = token_loss(lp, lp.detach(), adv, ones, prefix, is_mode="behavior_one", prefix_clip=clip)
        mat[0, 0].backward()
        assert lp.grad[0, 0].item() == pytest.approx(expected, abs=1e-4)


def test_rl_sft_loss_preset_tokens():
    """The demo row (row 0, all 5 tokens demo here) gets only the SFT term; row 1 is RL with the
    on-policy baseline; the demo's reward does not enter that baseline."""
    scores = torch.tensor([1.0, 0.0, 1.0])  # rows: demo (reward 1), two on-policy rollouts
    cfg = validate_verl_config(composed("rl_sft_loss"))
    adv = on_policy_baseline_advantage(
        scores, ["u", "u", "u"], torch.tensor([True, False, False]), norm_by_std=cfg.advantage.norm_by_std
    )
    assert adv[1:].tolist() == pytest.approx([-0.5, 0.5])  # baseline 0.5 = mean of on-policy only
    lp = torch.full((2, 5), -1.0, dtype=torch.float64, requires_grad=True)
    prefix = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float64)
    a = torch.tensor([adv[0].item(), adv[1].item()], dtype=torch.float64)[:, None].expand(2, 5)
    mat, _ = token_loss(
        lp,
        lp.detach(),
        a,
        MASK,
        prefix,
        None,
        sft_coef=cfg.loss.sft_coef,
        prefix_tokens=cfg.loss.prefix_tokens,
        prefix_clip=cfg.loss.resolved_prefix_clip(),
    )
    loss = agg_loss(
        mat,
        aggregation_mask(MASK, prefix, cfg.loss.prefix_tokens),
        "seq-mean-token-sum-norm",
        loss_scale_factor=10,
    )
    loss.backward()
    # demo tokens: d/dlp of -1.0 * lp / 20 (SFT only, whatever the demo's own advantage)
    assert lp.grad[0].tolist() == pytest.approx([-1 / 20] * 5)
    assert lp.grad[1].tolist() == pytest.approx([0.5 / 20] * 3 + [0.0, 0.0])  # -A = +0.5


# ---------------------------------------------------------------- the remaining ablations, token level
# Row 0: demo tokens t0..t2 (old entropy 0.5, 2.0, 1.0), generated t3, t4; row 1: on-policy, 3 tokens.
# Advantages A = +1 (row 0) and -2 (row 1); Dr.GRPO denominator = 2 rows x loss_scale_factor 10 = 20.
G_CONT0 = [-1 / 20, -1 / 20]  # generated tokens of row 0: -A / 20
G_ROW1 = [2 / 20, 2 / 20, 2 / 20, 0.0, 0.0]


def test_freeze_prefix_preset_tokens():
    # demo tokens: gradient exactly 0 (even the one top-20% keeps), yet all 5 stay in the denominator
    _, grad, agg = run_preset_loss("freeze_prefix")
    assert grad[0, :3].tolist() == [0.0, 0.0, 0.0] and grad[0, 3:].tolist() == pytest.approx(G_CONT0)
    assert grad[1].tolist() == pytest.approx(G_ROW1)
    assert agg.tolist() == MASK.tolist()


def test_static_sft_preset_replaces_the_demo_policy_gradient_by_0001_nll():
    # every demo token (no entropy selection): d/dlp of 0.001 * (-lp) / 20, whatever the advantage sign
    for adv_rows in ((1.0, -2.0), (-3.0, -2.0)):
        _, grad, agg = run_preset_loss("static_sft", adv_rows=adv_rows)
        assert grad[0, :3].tolist() == pytest.approx([-0.001 / 20] * 3)
        assert grad[0, 3:].tolist() == pytest.approx([-adv_rows[0] / 20] * 2)
        assert agg.tolist() == MASK.tolist()
    assert preset_keep("static_sft") is None


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("prefix_rft", [0, 1, 0]),  # ceil(0.2 * 3) = 1: the highest, 2.0
        ("top50", [0, 1, 1]),  # ceil(1.5) = 2: 2.0 and 1.0
        ("top80", [1, 1, 1]),  # ceil(2.4) = 3
        ("bottom20", [1, 0, 0]),  # ceil(0.6) = 1: the lowest, 0.5
    ],
)
def test_entropy_selection_presets_tokens(name, kept):
    keep = preset_keep(name)
    assert keep[0].tolist() == [*kept, 0, 0] and keep[1].tolist() == [0.0] * 5  # continuation never
    _, grad, agg = run_preset_loss(name)
    assert grad[0, :3].tolist() == pytest.approx([-k / 20 for k in kept])  # kept: -A/20, unkept: 0
    assert grad[0, 3:].tolist() == pytest.approx(G_CONT0) and grad[1].tolist() == pytest.approx(G_ROW1)
    assert agg.tolist() == MASK.tolist()  # unkept demo tokens stay in the denominator


def test_random20_preset_keeps_as_many_as_top20_seeded_per_step():
    chosen = set()
    for step in range(12):
        keep = preset_keep("random20", step)
        assert int(keep.sum()) == int(preset_keep("prefix_rft").sum()) == 1
        assert torch.equal(keep, preset_keep("random20", step))  # same step, same choice
        assert keep[0, 3:].sum() == 0 and keep[1].sum() == 0
        chosen.add(int(keep[0].argmax()))
    assert len(chosen) > 1  # not a fixed token: a fresh draw each step
    _, grad, _ = run_preset_loss("random20")
    g = grad[0, :3]
    assert sorted(g.tolist()) == pytest.approx([-1 / 20, 0.0, 0.0]) and grad[0, 3:].tolist() == pytest.approx(
        G_CONT0
    )


def test_uniform_ratio_preset_has_no_decay_and_the_same_loss():
    pcfg = validate_verl_config(composed("uniform_ratio"))
    assert [ratio_bounds(s, pcfg.ratio) for s in (0, 250, 500, 900)] == [(0.05, 0.95)] * 4
    paper = validate_verl_config(composed("prefix_rft"))
    assert ratio_bounds(0, paper.ratio) == (0.95, 0.95) and ratio_bounds(500, paper.ratio) == (0.05, 0.95)
    assert torch.equal(run_preset_loss("uniform_ratio")[1], run_preset_loss("prefix_rft")[1])


def test_demos10_preset_keeps_a_seeded_tenth_of_the_rows_and_trains_the_rest_as_rl():
    pcfg = validate_verl_config(composed("demos10"))
    uids = [f"{i}:row" for i in range(20000)]
    kept = [keeps_demo(u, seed=pcfg.seed, fraction=pcfg.demo_fraction) for u in uids]
    assert 0.09 < sum(kept) / len(uids) < 0.11
    assert kept == [keeps_demo(u, seed=pcfg.seed, fraction=0.1) for u in uids]  # the same rows every time
    assert kept != [keeps_demo(u, seed=pcfg.seed + 1, fraction=0.1) for u in uids]
    # a row without its demo is a plain RL group: no prefix token, every token -A/20, all in the denominator
    _, grad, agg = run_preset_loss("demos10", prefix=torch.zeros(2, 5, dtype=torch.float64))
    assert grad[0].tolist() == pytest.approx([-1 / 20] * 5) and grad[1].tolist() == pytest.approx(G_ROW1)
    assert agg.tolist() == MASK.tolist()
    # a row that keeps it is trained exactly as under the paper's preset
    assert torch.equal(run_preset_loss("demos10")[1], run_preset_loss("prefix_rft")[1])


def test_weak_demos_preset_reads_another_column_with_the_papers_loss():
    assert validate_verl_config(composed("weak_demos", "prefix_rft.demo_key=small_model")).demo_key == (
        "small_model"
    )
    assert torch.equal(run_preset_loss("weak_demos")[1], run_preset_loss("prefix_rft")[1])
