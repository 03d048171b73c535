"""Prefix-ratio schedule, sampler and the token-level splice (paper sec. 3, A.2)."""

import math
import subprocess
import sys

import pytest
from config_defaults import DEFAULTS, schedule_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

from prefix_rft.config import RatioScheduleConfig
from prefix_rft.core.schedule import (
    choose_demo,
    ratio_bounds,
    ratio_lower_bound,
    sample_prefix_ratio,
    stable_seed,
)
from prefix_rft.core.splice import prefix_length, splice_prefix

MIN_TOKENS = DEFAULTS.ratio.min_prefix_tokens


@pytest.mark.parametrize("step,expected", [(0, 0.95), (250, 0.50), (500, 0.05), (1000, 0.05)])
def test_paper_cosine_values(step, expected):
    assert ratio_lower_bound(step, **schedule_kwargs()) == pytest.approx(expected, abs=1e-12)


def test_cosine_formula_at_quarter():
    # 0.05 + 0.45 * (1 + cos(pi/4))
    assert ratio_lower_bound(125, **schedule_kwargs()) == pytest.approx(0.05 + 0.45 * (1 + math.sqrt(0.5)))


def test_linear_and_const_and_delay():
    assert ratio_lower_bound(250, **schedule_kwargs(schedule="linear")) == pytest.approx(0.5)
    lin = schedule_kwargs(schedule="linear", low_start=0.9, low_end=0.1, decay_steps=200)
    assert ratio_lower_bound(100, **lin) == pytest.approx(0.5)
    assert ratio_lower_bound(10_000, **schedule_kwargs(schedule="const", low_start=0.7)) == 0.7
    # delay: flat at low_start, then the same curve shifted
    assert ratio_lower_bound(99, **schedule_kwargs(delay_steps=100)) == pytest.approx(0.95)
    assert ratio_lower_bound(350, **schedule_kwargs(delay_steps=100)) == pytest.approx(0.5)
    assert ratio_lower_bound(600, **schedule_kwargs(delay_steps=100)) == pytest.approx(0.05)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="schedule"):
        ratio_lower_bound(0, **schedule_kwargs(schedule="exp"))


def test_bounds_clamp_low_to_high():
    cfg = RatioScheduleConfig(low_start=0.95, high=0.6)
    assert ratio_bounds(0, cfg) == (0.6, 0.6)


@settings(max_examples=200, deadline=None)
@given(
    step=st.integers(0, 2000),
    uid=st.one_of(st.integers(), st.text(max_size=8)),
    idx=st.integers(0, 15),
    sampler=st.sampled_from(["uniform", "beta"]),
)
def test_sample_in_bounds_and_deterministic(step, uid, idx, sampler):
    cfg = RatioScheduleConfig(sampler=sampler, alpha=2.0, beta=0.5)
    low, high = ratio_bounds(step, cfg)
    r = sample_prefix_ratio(step, cfg, seed=1, uid=uid, sample_index=idx)
    assert low - 1e-12 <= r <= high + 1e-12
    assert r == sample_prefix_ratio(step, cfg, seed=1, uid=uid, sample_index=idx)


def test_sample_depends_on_every_seed_part():
    cfg = RatioScheduleConfig()
    base = sample_prefix_ratio(600, cfg, seed=0, uid="a", sample_index=0)
    others = [
        sample_prefix_ratio(601, cfg, seed=0, uid="a", sample_index=0),
        sample_prefix_ratio(600, cfg, seed=1, uid="a", sample_index=0),
        sample_prefix_ratio(600, cfg, seed=0, uid="b", sample_index=0),
        sample_prefix_ratio(600, cfg, seed=0, uid="a", sample_index=1),
    ]
    assert all(o != base for o in others)


def test_uniform_draws_cover_the_interval_and_beta_skews():
    cfg = RatioScheduleConfig()
    draws = [sample_prefix_ratio(1000, cfg, seed=0, uid=i, sample_index=0) for i in range(2000)]
    assert min(draws) < 0.1 and max(draws) > 0.9
    assert sum(draws) / len(draws) == pytest.approx(0.5, abs=0.03)
    skew = RatioScheduleConfig(sampler="beta", alpha=5.0, beta=1.0)
    beta_draws = [sample_prefix_ratio(1000, skew, seed=0, uid=i, sample_index=0) for i in range(2000)]
    # mean of Beta(5, 1) = 5/6, stretched to [0.05, 0.95]
    assert sum(beta_draws) / len(beta_draws) == pytest.approx(0.05 + 0.9 * 5 / 6, abs=0.02)


def test_stable_seed_is_process_independent():
    code = "from prefix_rft.core.schedule import stable_seed; print(stable_seed('ratio', 1, 2, 'u', 3))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": s},
            check=True,
        ).stdout.strip()
        for s in ("1", "2")
    }
    assert outs == {str(stable_seed("ratio", 1, 2, "u", 3))}


def test_choose_demo_uniform_and_deterministic():
    picks = [choose_demo(3, seed=0, uid=i, step=5, sample_index=0) for i in range(3000)]
    assert set(picks) == {0, 1, 2}
    for k in range(3):
        assert picks.count(k) == pytest.approx(1000, abs=120)
    assert picks[:50] == [choose_demo(3, seed=0, uid=i, step=5, sample_index=0) for i in range(50)]
    assert choose_demo(1, seed=0, uid="x", step=0, sample_index=0) == 0
    with pytest.raises(ValueError):
        choose_demo(0, seed=0, uid="x", step=0, sample_index=0)


# ----------------------------------------------------------------------------------------- splice


def test_splice_hand_cases():
    demo = list(range(100, 110))  # 10 tokens
    s = splice_prefix(demo, 0.55, response_budget=20, min_prefix_tokens=MIN_TOKENS)
    assert s.prefix_ids == [100, 101, 102, 103, 104] and s.continuation_budget == 15 and not s.truncated
    # floor(0.99 * 10) = 9 = |demo| - 1: the clamp keeps one token for the model
    assert len(splice_prefix(demo, 0.999, 20, min_prefix_tokens=MIN_TOKENS).prefix_ids) == 9
    # min_prefix_tokens lifts tiny ratios
    assert splice_prefix(demo, 0.0, 20, min_prefix_tokens=3).prefix_ids == [100, 101, 102]
    # ... but never past |demo| - 1
    assert len(splice_prefix(demo, 0.1, 20, min_prefix_tokens=50).prefix_ids) == 9


def test_splice_whole_demo_and_budget():
    demo = [5, 6, 7, 2]  # 2 = end token
    s = splice_prefix(demo, 1.0, response_budget=10, min_prefix_tokens=MIN_TOKENS)
    assert s.prefix_ids == demo and s.continuation_budget == 0 and not s.truncated
    cut = splice_prefix(list(range(100)), 0.5, response_budget=20, min_prefix_tokens=MIN_TOKENS)
    assert cut.prefix_ids == list(range(20)) and cut.continuation_budget == 0 and cut.truncated
    whole_cut = splice_prefix(list(range(100)), 1.0, response_budget=20, min_prefix_tokens=MIN_TOKENS)
    assert len(whole_cut.prefix_ids) == 20 and whole_cut.truncated


@pytest.mark.parametrize("demo", [None, [], [7]])
def test_splice_empty_or_single_token_demo_yields_no_prefix(demo):
    s = splice_prefix(demo, 0.5, response_budget=16, min_prefix_tokens=MIN_TOKENS)
    assert s.prefix_ids == [] and s.continuation_budget == 16 and not s.truncated


@settings(max_examples=300, deadline=None)
@given(
    demo=st.lists(st.integers(0, 50_000), max_size=200),
    ratio=st.floats(0.0, 1.0),
    budget=st.integers(0, 300),
    min_tokens=st.integers(0, 10),
)
def test_splice_properties(demo, ratio, budget, min_tokens):
    s = splice_prefix(demo, ratio, budget, min_prefix_tokens=min_tokens)
    L = len(s.prefix_ids)
    assert s.prefix_ids == demo[:L]
    assert L <= budget and L <= len(demo)
    assert L == prefix_length(len(demo), ratio, budget, min_prefix_tokens=min_tokens)[0]
    if ratio < 1.0:
        assert L + s.continuation_budget == budget
        if demo and not s.truncated:
            assert L <= len(demo) - 1
            assert L >= min(math.floor(ratio * len(demo)), len(demo) - 1)
    elif L > 0:
        assert s.continuation_budget == 0
    unbudgeted = prefix_length(len(demo), ratio, 10**9, min_prefix_tokens=min_tokens)[0]
    assert s.truncated == (unbudgeted > budget)


def test_splice_context_room_cut_leaves_one_token_to_generate():
    demo = list(range(100, 200))  # 100 tokens
    s = splice_prefix(demo, 0.5, response_budget=80, min_prefix_tokens=MIN_TOKENS, context_room=21)
    assert s.prefix_ids == demo[:20] and s.continuation_budget == 1 and s.truncated
    whole = splice_prefix([5, 6, 7, 2], 1.0, response_budget=10, min_prefix_tokens=MIN_TOKENS, context_room=3)
    assert whole.prefix_ids == [5, 6] and whole.continuation_budget == 1 and whole.truncated
    roomy = splice_prefix(demo, 0.5, response_budget=80, min_prefix_tokens=MIN_TOKENS, context_room=1000)
    assert len(roomy.prefix_ids) == 50 and roomy.continuation_budget == 30 and not roomy.truncated


@settings(max_examples=300, deadline=None)
@given(
    demo=st.lists(st.integers(0, 50_000), max_size=200),
    ratio=st.floats(0.0, 1.0),
    budget=st.integers(0, 300),
    room=st.integers(1, 300),
)
def test_splice_never_overflows_the_context_room(demo, ratio, budget, room):
    s = splice_prefix(demo, ratio, budget, min_prefix_tokens=1, context_room=room)
    L = len(s.prefix_ids)
    assert L <= room - 1 and L + s.continuation_budget <= room
    free = splice_prefix(demo, ratio, budget, min_prefix_tokens=1)
    assert s.truncated == (free.truncated or len(free.prefix_ids) > room - 1)
